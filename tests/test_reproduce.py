"""The main job: its whole pipeline on tiny settings through the code the default run takes, and
the one scorer against the reference score.py's formulas."""
import json
import math
import os
import signal
import subprocess
import sys
import time
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
    for key in ("fcn32s", "fcn16s", "fcn8s", "atonce"):  # the control only continues FCN-32s
        assert res[key]["metrics"]["mean_iu"] > res[key]["initial"]["mean_iu"], key
    # From He init, 200 iterations leave the argmax at background; the training loss must fall well
    # below its start, every pixel at ln(classes) while the score layer is zero
    cfg = summary["config"]
    start = cfg["size"] ** 2 * math.log(cfg["num_classes"])
    log = (tiny_run[0] / "stages" / "scratch" / "log.jsonl").read_text().splitlines()
    losses = [r["smoothed_loss"] for r in map(json.loads, log) if "smoothed_loss" in r]
    assert losses and losses[-1] < 0.8 * start
    assert res["scratch"]["metrics"]["mean_iu"] >= res["scratch"]["initial"]["mean_iu"]


def test_every_run_ends_at_a_tenth_of_its_lr(tiny_run):
    """Caffe's step policy at cfg.lr_drop_at of each run's own iterations: the run's base_lr before
    (first_stage_lr for the runs that start from the classifier or He init: FCN-32s, its
    no-classifier twin and FCN-8s at once), a tenth after."""
    out, summary, _ = tiny_run
    cfg = summary["config"]
    assert 0 < cfg["lr_drop_at"] < 1
    for key in summary["results"]:
        records = [json.loads(l) for l in (out / "stages" / key / "log.jsonl").read_text().splitlines()]
        steps = [x for x in records if "lr" in x]
        assert len(steps) >= 2, key
        base_lr = cfg["first_stage_lr"] if key in ("fcn32s", "scratch", "atonce") else cfg["base_lr"]
        assert math.isclose(steps[0]["lr"], base_lr, rel_tol=1e-6), key
        assert math.isclose(steps[-1]["lr"], 0.1 * base_lr, rel_tol=1e-6), key
    assert cfg["first_stage_lr"] != cfg["base_lr"]


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
    assert "mean IU" in r.stdout and "skips refine" in r.stdout and "3 runs side by side on 1 core" in r.stdout


def test_the_runs_do_not_depend_on_how_many_run_side_by_side(tmp_path):
    """Each run trains on one thread in a process of its own, so the runs sharing one core or two
    give the same weights, bit for bit, and the same table."""
    tables, blobs = [], []
    for workers in (1, 2):
        cfg = reproduce.Config(size=64, iters=(8, 6, 6), val_images=3, val_every=0, threads=workers)
        out = tmp_path / str(workers)
        tables.append(reproduce.run(cfg, out=out, log=None, progress=False)[1])
        blobs.append({p.name: p.read_bytes() for p in sorted(out.glob("stages/*/*.caffemodel"))})
    assert len(blobs[0]) == 6 and blobs[0] == blobs[1] and tables[0] == tables[1]


def _simulated_lanes(plan, workers):
    """The runs each process takes when a run lasts as many time units as it has iterations, in
    run()'s rule (`_startable`): a free process takes the first pending run whose source is ready."""
    pending, running, lanes, clock, done = list(plan), {}, [[] for _ in range(workers)], 0, {"classifier"}
    while pending or running:
        free = [w for w in range(workers) if w not in running]
        for task in reproduce._startable(pending, done, len(free)):
            pending.remove(task)
            worker = free.pop(0)
            running[worker] = (task, clock + task[2])
            lanes[worker].append(task[0])
        worker, (task, clock) = min(running.items(), key=lambda item: item[1][1])
        del running[worker]
        done.add(task[0])
    return lanes


@pytest.mark.parametrize("iters", [reproduce.Config().iters, (1500, 500, 3300), (10, 90, 20)])
def test_the_plan_gives_each_process_the_same_iterations(iters):
    """Three lanes as long as the staged three together: a process left alone with a long run
    while the other cores idle makes the job slower (on two processes one ran alone for the last
    30 % of the job)."""
    plan, workers = reproduce._plan(reproduce.Config(iters=iters))
    lanes = _simulated_lanes(plan, workers)
    length = {key: n for key, _, n, _ in plan}
    assert sorted(map(sorted, lanes)) == sorted([["fcn16s", "fcn32s", "fcn8s"], ["atonce"], ["control", "scratch"]])
    assert {sum(length[k] for k in lane) for lane in lanes} == {sum(iters)}
    plan, workers = reproduce._plan(reproduce.Config(iters=iters, controls=()))
    assert workers == 2 and {k for k, *_ in plan} == {"fcn32s", "fcn16s", "fcn8s", "atonce"}


def test_balance_skips_matches_the_pools_to_fc7():
    """FCN-8s at once's fixed skip scales follow the release's rule in this net: after balancing,
    scale_pool4's and scale_pool3's outputs have fc7's RMS on the images measured (the release's
    0.01 and 1e-4 leave them far smaller here)."""
    data = Synthetic(seed=3, n=4, size=64, num_classes=6)
    net = nets.build_net("voc-fcn8s-atonce", "train", num_classes=6, width_divisor=16)
    surgery.staged_init(net, reproduce.classifier_weights(), log=None)

    def rms(blobs_list, name):
        return (sum(float(b[name].double().pow(2).mean()) for b in blobs_list) / len(blobs_list)) ** 0.5

    def forward_all():
        net.eval()
        with torch.no_grad():
            return [net(return_blobs=True, data=data[i][0][None], label=data[i][1][None, None].float())
                    for i in range(len(data))]

    before = forward_all()
    assert rms(before, "scale_pool4") < 0.2 * rms(before, "fc7")
    net.train()
    scales = reproduce.balance_skips(net, data, images=len(data))
    assert set(scales) == {"scale_pool4", "scale_pool3"} and net.training
    after = forward_all()
    for layer in scales:
        assert rms(after, layer) == pytest.approx(rms(after, "fc7"), rel=1e-4)
        assert torch.all(getattr(net, layer).weight == getattr(net, layer).weight[0])


def test_every_curve_runs_from_the_initial_score_to_the_tables():
    """The training-curve figure's validation points start at the run's initial score and end at
    the table's, added only where the Trainer did not validate."""
    def scores(iu):
        return {"metrics": {"mean_iu": iu}}

    curve = [{"iter": 50, "smoothed_loss": 3.0}, {"event": "val", "iter": 100, "results": {"label": {"mean_iu": 0.5}}}]
    ends = reproduce._with_ends(curve, scores(0.1), scores(0.7), 300)
    vals = [(r["iter"], r["results"]["label"]["mean_iu"]) for r in ends if r.get("event") == "val"]
    assert vals == [(0, 0.1), (100, 0.5), (300, 0.7)] and ends[1:3] == curve
    # a run validated at its last iteration keeps that point, not a second one
    assert reproduce._with_ends(curve, scores(0.1), scores(0.5), 100)[1:] == curve


def _proc_stat(pid):
    """(state, parent pid) from /proc/<pid>/stat, or None once the process has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_job_leaves_no_run_training(tmp_path):
    """SIGTERM to the job's process ends its worker processes too (they would train on for the
    rest of their runs, writing into the output folder)."""
    script = ("from fcn_caffe_repro import reproduce\n"
              "if __name__ == '__main__':\n"
              "    cfg = reproduce.Config(size=64, iters=(10 ** 6, 1, 1), val_images=2, val_every=0)\n"
              f"    reproduce.run(cfg, out={str(tmp_path)!r}, log=None, progress=False)\n")
    (tmp_path / "job.py").write_text(script)
    job = subprocess.Popen([sys.executable, str(tmp_path / "job.py")], cwd=ROOT)
    children = []

    def alive(pid):
        stat = _proc_stat(pid)
        return stat is not None and stat[0] != "Z"

    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "stages" / "fcn32s" / "log.jsonl").exists():  # a run is training
            assert job.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        children = [stat.parent.name for stat in Path("/proc").glob("[0-9]*/stat")
                    if (_proc_stat(stat.parent.name) or (None, None))[1] == job.pid]
        assert len(children) >= 3  # the runs' processes (and multiprocessing's resource tracker)
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(map(alive, children)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in children if alive(pid)]
    finally:
        for pid in [job.pid] * (job.poll() is None) + [pid for pid in children if alive(pid)]:
            os.kill(int(pid), signal.SIGKILL)
