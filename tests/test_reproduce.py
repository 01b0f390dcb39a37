"""The main job: its whole pipeline on tiny settings through the code the default run takes, and
the one scorer against the reference score.py's formulas."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from fcn_caffe_repro import evaluate, nets, reproduce, surgery
from fcn_caffe_repro.data.synthetic import Synthetic
from test_metrics import assert_scores_equal, loop_hist, loop_scores

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Every stage from the shipped classifier, a few hundred iterations (a 64-pixel image is one
    stride-32 cell too small for FCN-32s to learn anything in so few), through the
    same reproduce.run the default command calls."""
    out = tmp_path_factory.mktemp("reproduce")
    cfg = reproduce.Config(iters=(200, 200, 200), val_images=20, val_every=200, threads=2)
    summary, table = reproduce.run(cfg, out=out, log=None, progress=False)
    return out, summary, table


def test_pretrain_writes_a_classifier_the_first_stage_takes(tmp_path):
    """The classifier stage on tiny settings: a caffemodel the FCN-32s transplant reads."""
    cfg = reproduce.Config(threads=1)
    cfg.pretrain.update(iters=3, batch=2, val_images=4)
    accuracy = reproduce.pretrain(cfg, out=tmp_path, path=tmp_path / "c.caffemodel", log=None, progress=False)
    assert 0.0 <= accuracy <= 1.0
    fcn = nets.build_net("voc-fcn32s", "train", num_classes=6, width_divisor=16)
    lines = surgery.staged_init(fcn, tmp_path / "c.caffemodel", log=None)
    assert "coercing fc6 0 from (256, 32, 7, 7) to (256, 32, 7, 7)" not in lines and "dropping fc8" in lines
    assert any(l.startswith("coercing fc6 0") for l in lines)


def test_every_stage_improves_on_its_initialisation(tiny_run):
    _, summary, _ = tiny_run
    res = summary["results"]
    assert list(res) == ["fcn32s", "fcn16s", "fcn8s", "atonce", "control", "scratch"]
    assert [res[k]["iterations"] for k in res] == [200, 400, 600, 600, 600, 200]
    for key in ("fcn32s", "fcn16s", "fcn8s", "atonce", "scratch"):  # the control only continues FCN-32s
        assert res[key]["metrics"]["mean_iu"] > res[key]["initial"]["mean_iu"], key


def test_the_run_writes_its_table_figures_and_json(tiny_run):
    out, summary, table = tiny_run
    for row in ("| FCN-32s |", "| FCN-16s |", "| FCN-8s |", "| FCN-8s at once |", "| FCN-32s, trained on |",
                "| FCN-32s, no classifier |", "| background | disc | box | blob | bar | ring |"):
        assert row in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["fcn8s"]["metrics"] == summary["results"]["fcn8s"]["metrics"]
    for name in ("results.png", "per_class_iu.png", "training_curves.png"):
        with Image.open(out / name) as im:
            assert im.width > 200 and im.height > 100
    for line in reproduce.findings(summary).splitlines()[1:3]:
        assert line.startswith("thin class ")


def test_the_scorer_equals_score_py(tmp_path):
    """Evaluator's histogram and metrics = score.py's compute_hist (argmax of the score blob, one
    image at a time, void left out) and its four formulas, re-derived with loops."""
    data = Synthetic(seed=5, n=6, size=48, num_classes=6)
    net = nets.build_net("voc-fcn8s", "deploy", num_classes=6, width_divisor=16).eval()
    with torch.no_grad():
        for p in net.parameters():  # random weights of one scale: every class gets predicted somewhere
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.3)
    got = evaluate.evaluate(net, data, net_name="voc-fcn8s", workers=0, progress=False)["tasks"]["label"]
    hist = sum(loop_hist(data[i][1].numpy(), net(data=data[i][0][None])["score"][0].argmax(0).numpy(), 6)
               for i in range(len(data)))
    assert got["confusion"] == hist.tolist()
    assert_scores_equal(got["metrics"], loop_scores(hist.tolist()))


def test_quick_command_runs_the_pipeline(tmp_path):
    r = subprocess.run([sys.executable, "tools/reproduce.py", "--quick", "--threads", "1", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mean IU" in r.stdout and "skips refine" in r.stdout and "on 1 threads" in r.stdout
