"""evaluate.py, visualize.py and tools/eval.py, infer.py, plot.py end to end on fixture trees and weights."""
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import fcn_caffe_repro as fcr
from fcn_caffe_repro import evaluate, metrics, visualize

ROOT = Path(__file__).resolve().parent.parent
NETS = Path(__file__).parent / "fixtures" / "caffe-ref" / "nets"
VOC8 = ["--net", "voc-fcn8s", "--weights", str(NETS / "voc-fcn8s" / "weights.caffemodel"), "--num-classes", "5",
        "--width-divisor", "16"]


def tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def voc_palette(n):
    """The VOC devkit colour map, written out independently of visualize.palette."""
    out = []
    for k in range(n):
        c, lab = [0, 0, 0], k
        for i in range(8):
            for j in range(3):
                c[j] |= ((lab >> j) & 1) << (7 - i)
            lab >>= 3
        out.append(tuple(c))
    return out


def make_voc(root, n=3, size=(36, 44), split="mini"):
    rng = np.random.default_rng(7)
    ids = [f"img{i}" for i in range(n)]
    for i in ids:
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
        label = Image.fromarray(rng.choice([0, 1, 2, 3, 4, 255], size).astype(np.uint8), mode="P")
        label.putpalette([v for c in voc_palette(256) for v in c])  # without one, PNG keeps 1 bit per pixel
        label.save(root / "SegmentationClass" / f"{i}.png")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture(scope="module")
def voc8():
    return fcr.build_net("voc-fcn8s", phase="deploy", num_classes=5, width_divisor=16,
                         weights=NETS / "voc-fcn8s" / "weights.caffemodel")


def reference_preds(net, ds):
    """Each image through the net on its own, argmax over classes, as the release's score.py."""
    with torch.no_grad():
        return [net(data=ds[i][0][None])["score"][0].argmax(0) for i in range(len(ds))]


def test_eval_tool_end_to_end(tmp_path, voc8, capsys):
    root = make_voc(tmp_path / "VOC")
    out, preds_dir = tmp_path / "out", tmp_path / "preds"
    rc = tool("eval").main(VOC8 + ["--dataset", "voc", "--root", str(root), "--split", "mini", "--out", str(out),
                                   "--save-dir", str(preds_dir), "--quiet", "--mode", "plain"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    ds = fcr.data.VOC(root, split="mini")
    preds = reference_preds(voc8, ds)
    hist = sum(metrics.fast_hist(ds[i][1], preds[i], 5) for i in range(len(ds)))
    task = results["tasks"]["label"]
    assert task["confusion"] == hist.tolist() and hist.sum() > 0
    want = metrics.scores(hist)
    for k in metrics.METRICS:
        assert task["metrics"][k] == pytest.approx(want[k])
    assert task["classes"] == ["background", "aeroplane", "bicycle", "bird", "boat"]
    assert [task["per_class_iu"][c] for c in task["classes"]] == pytest.approx(want["iu"].tolist())
    assert hist.sum(1).min() > 0  # every class labelled: no NaN IU (JSON writes NaN as null)
    assert results["num_images"] == 3 and results["settings"]["split"] == "mini"
    assert results["time"]["per_image_s"] >= results["time"]["forward_per_image_s"] > 0
    assert len(results["time"]["images_s"]) == 3
    assert {r["table"] for r in results["paper"]} >= {"README", "Table 2"}
    printed = capsys.readouterr().out
    ours = next(line for line in printed.splitlines() if "(ours)" in line)
    assert f"{100 * want['mean_iu']:.2f}" in ours
    assert "| FCN-8s (published) | | seg11valid | 91.23 | 77.61 | 65.51 | 84.55 |" in printed
    assert (out / "results.md").read_text().strip() in printed
    for i, name in enumerate(ds.ids):
        im = Image.open(preds_dir / f"{name}.png")
        assert im.mode == "P" and im.size == (44, 36)
        np.testing.assert_array_equal(np.array(im), preds[i].numpy())
        assert [tuple(im.getpalette()[3 * k:3 * k + 3]) for k in range(5)] == voc_palette(5)


class Sign(torch.nn.Module):
    """A duck-typed net: class 1 where the blue channel is above the mean, else 0."""

    inputs = {"data": None}
    outputs = ["score"]

    def forward(self, data):
        up = (data[:, :1] > 0).float()
        return {"score": torch.cat([1 - up, up], 1)}


class Counting(torch.utils.data.Dataset):
    """Wraps a dataset, counting reads and stopping (as Ctrl-C would) at one index."""

    def __init__(self, ds, stop_at=None):
        self.ds, self.stop_at, self.reads = ds, stop_at, []
        self.tops, self.tasks, self.ids, self.input_tops = ds.tops, ds.tasks, ds.ids, ds.input_tops

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        if i == self.stop_at:
            raise KeyboardInterrupt
        self.reads.append(i)
        return self.ds[i]


def test_evaluate_a_duck_typed_net_and_resume(tmp_path):
    ds = fcr.data.Synthetic(seed=1, n=5, size=32, num_classes=2)
    want = sum(metrics.fast_hist(ds[i][1], (ds[i][0][0] > 0).long(), 2) for i in range(5))
    full = evaluate.evaluate(Sign(), ds, workers=0, progress=False)
    assert full["tasks"]["label"]["confusion"] == want.tolist()
    state = tmp_path / "state.json"
    first = Counting(ds, stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate(Sign(), first, workers=0, progress=False, state_file=state, settings={"a": 1})
    assert json.loads(state.read_text())["done"] == 3 and first.reads == [0, 1, 2]
    second = Counting(ds)
    resumed = evaluate.evaluate(Sign(), second, workers=0, progress=False, state_file=state, settings={"a": 1},
                                resume=True)
    assert second.reads == [3, 4]
    assert resumed["tasks"]["label"]["confusion"] == want.tolist() and resumed["num_images"] == 5
    with pytest.raises(ValueError, match=r"differs in \['a'\]"):
        evaluate.evaluate(Sign(), ds, workers=0, progress=False, state_file=state, settings={"a": 2}, resume=True)


def test_eval_with_a_loader_worker_matches_the_plain_loop():
    ds = fcr.data.Synthetic(seed=2, n=4, size=32, num_classes=2)
    a = evaluate.evaluate(Sign(), ds, workers=0, progress=False)
    b = evaluate.evaluate(Sign(), ds, workers=1, progress=False)
    assert a["tasks"] == b["tasks"]


def test_eval_siftflow_scores_both_tasks(tmp_path):
    sub = "spatial_envelope_256x256_static_8outdoorcategories"
    rng = np.random.default_rng(8)
    for kind in ("Images", "SemanticLabels", "GeoLabels"):
        (tmp_path / kind / sub).mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(tmp_path / "Images" / sub / "a.jpg")
    scipy.io.savemat(tmp_path / "SemanticLabels" / sub / "a.mat", {"S": rng.integers(0, 6, (32, 40))})
    scipy.io.savemat(tmp_path / "GeoLabels" / sub / "a.mat", {"S": rng.integers(-1, 4, (32, 40))})
    (tmp_path / "mini.txt").write_text("a\n")
    net = fcr.build_net("siftflow-fcn8s", phase="deploy", num_classes=5, width_divisor=16,
                        weights=NETS / "siftflow-fcn8s" / "weights.caffemodel")
    ds = fcr.data.SIFTFlow(tmp_path, split="mini")
    res = evaluate.evaluate(net, ds, net_name="siftflow-fcn8s", workers=0, progress=False)
    assert set(res["tasks"]) == {"sem", "geo"}
    assert res["tasks"]["sem"]["score_blob"] == "score_sem" and res["tasks"]["geo"]["score_blob"] == "score_geo"
    assert len(res["tasks"]["sem"]["confusion"]) == 5 and len(res["tasks"]["geo"]["confusion"]) == 3
    with torch.no_grad():
        out = net(data=ds[0][0][None])
    for task, label in (("sem", ds[0][1]), ("geo", ds[0][2])):
        want = metrics.fast_hist(label, out[f"score_{task}"][0].argmax(0), len(res["tasks"][task]["confusion"]))
        assert res["tasks"][task]["confusion"] == want.tolist()
    table = evaluate.markdown_table(res, "siftflow-fcn16s", "siftflow", "mini")
    assert "| sem |" in table and "| geo |" in table and "geometric acc. 94.3" in table


def test_infer_tool_writes_palette_pngs_and_overlays(tmp_path, voc8):
    rng = np.random.default_rng(9)
    folder = tmp_path / "photos"
    folder.mkdir()
    sizes = {"wide": (30, 57), "tall": (61, 23)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.jpg")
    out = tmp_path / "seg"
    assert tool("infer").main(VOC8 + [str(folder), "--out-dir", str(out), "--device", "cpu", "--mode", "plain"]) == 0
    for name, (h, w) in sizes.items():
        im = Image.open(out / f"{name}.png")
        assert im.mode == "P" and im.size == (w, h)
        assert [tuple(im.getpalette()[3 * k:3 * k + 3]) for k in range(5)] == voc_palette(5)
        x = fcr.data.caffe_input(np.array(Image.open(folder / f"{name}.jpg")), fcr.data.voc.VOC_MEAN)
        with torch.no_grad():
            want = voc8(data=x[None])["score"][0].argmax(0).numpy()
        got = np.array(im)
        np.testing.assert_array_equal(got, want)
        assert set(np.unique(got)) <= set(range(5)) and len(np.unique(got)) >= 2
        ov = Image.open(out / f"{name}_overlay.png")
        assert ov.mode == "RGB" and ov.width > w and ov.height >= h  # the legend sits to the right


def _spy_on_modes(monkeypatch, module):
    """The modes a command module prepares its net in, as it calls fast.for_inference."""
    seen = []

    def spy(net, mode):
        seen.append(mode)
        return fcr.fast.for_inference(net, mode)

    monkeypatch.setattr(module, "for_inference", spy)
    return seen


@pytest.mark.parametrize("mode", ["fast", "bf16"])
def test_eval_scores_in_the_mode_asked_for(mode, tmp_path, monkeypatch, capsys):
    from fcn_caffe_repro.cli import eval as eval_cli

    root = make_voc(tmp_path / "VOC")
    seen = _spy_on_modes(monkeypatch, eval_cli)
    out = tmp_path / "out"
    base = VOC8 + ["--dataset", "voc", "--root", str(root), "--split", "mini", "--out", str(out), "--quiet",
                   "--workers", "0"]
    assert eval_cli.main(base + ([] if mode == "fast" else ["--mode", mode])) == 0  # fast: the default
    assert seen == [mode]
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["mode"] == mode
    net = fcr.build_net("voc-fcn8s", phase="deploy", num_classes=5, width_divisor=16,
                        weights=NETS / "voc-fcn8s" / "weights.caffemodel")
    fcr.fast.for_inference(net, mode)
    ds = fcr.data.VOC(root, split="mini")
    hist = sum(metrics.fast_hist(ds[i][1], p, 5) for i, p in enumerate(reference_preds(net, ds)))
    assert results["tasks"]["label"]["confusion"] == hist.tolist()
    assert f"mode {mode}" in capsys.readouterr().out
    # resuming in another mode is refused: the saved images were scored by another plan
    assert eval_cli.main(base + ["--mode", "plain", "--resume"]) == 1
    assert "differs in ['mode']" in capsys.readouterr().err


def test_infer_segments_in_bfloat16(tmp_path, monkeypatch):
    from fcn_caffe_repro.cli import infer as infer_cli

    rng = np.random.default_rng(10)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(photo)
    seen = _spy_on_modes(monkeypatch, infer_cli)
    out = tmp_path / "seg"
    assert infer_cli.main(VOC8 + [str(photo), "--out-dir", str(out), "--device", "cpu", "--mode", "bf16"]) == 0
    assert seen == ["bf16"]
    net = fcr.build_net("voc-fcn8s", phase="deploy", num_classes=5, width_divisor=16,
                        weights=NETS / "voc-fcn8s" / "weights.caffemodel")
    fcr.fast.for_inference(net, "bf16")
    x = fcr.data.caffe_input(np.array(Image.open(photo)), fcr.data.voc.VOC_MEAN)
    with torch.no_grad():
        want = net(data=x[None])["score"][0].argmax(0).numpy()
    np.testing.assert_array_equal(np.array(Image.open(out / "photo.png")), want)


def test_infer_rejects_nets_without_a_colour_input():
    with pytest.raises(fcr.NetError, match="hha"):
        evaluate.input_defaults("nyud-fcn32s-hha")
    mean, classes, score = evaluate.input_defaults("siftflow-fcn8s")
    assert score == "score_sem" and len(classes) == 33


def test_visualize_palette_blend_and_figures(tmp_path):
    assert [tuple(c) for c in visualize.palette(21)] == voc_palette(21)
    assert tuple(visualize.palette()[255]) == (224, 224, 192)
    rgb = np.full((4, 5, 3), 100, np.uint8)
    label = np.zeros((4, 5), np.uint8)
    label[1, 1], label[2, 2] = 15, 255
    out = visualize.blend(rgb, label, alpha=0.5)
    assert tuple(out[1, 1]) == (146, 114, 114) and tuple(out[0, 0]) == (100, 100, 100)
    assert tuple(out[2, 2]) == (100, 100, 100)  # void is not coloured
    with pytest.raises(ValueError, match="differs"):
        visualize.blend(rgb, label[:3])
    plot = tool("plot")
    ds = fcr.data.Synthetic(seed=0, n=2, size=32, num_classes=3)
    for col in ("a", "b"):
        for i in range(2):
            visualize.save_label_png(tmp_path / col / f"{ds.ids[i]}.png", ds[i][1])
    fig = tmp_path / "fig.png"
    plot.main(["figure", "--dataset", "synthetic", "--data-opt", "n=2", "--data-opt", "size=32", "--data-opt",
               "num_classes=3", "--pred", f"A={tmp_path / 'a'}", "--pred", f"B={tmp_path / 'b'}", "--indices", "0",
               "1", "--out", str(fig)])
    assert Image.open(fig).width > 200
    res = {"tasks": {"label": {"classes": ["bg", "x"], "per_class_iu": {"bg": 0.9, "x": None}}}}
    (tmp_path / "r.json").write_text(json.dumps(res))
    plot.main(["iu", "--results", f"run={tmp_path / 'r.json'}", "--out", str(tmp_path / "iu.png")])
    assert Image.open(tmp_path / "iu.png").height > 100


def test_infer_reports_and_skips_a_corrupt_image(tmp_path, voc8, capsys):
    """A truncated JPEG and a non-image among photos: both named on stderr, the others segmented."""
    rng = np.random.default_rng(4)
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a", "c"):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{name}.jpg")
    (folder / "b.jpg").write_bytes((folder / "a.jpg").read_bytes()[:200])
    (folder / "d.png").write_bytes(b"not a png at all")
    out = tmp_path / "seg"
    assert tool("infer").main(VOC8 + [str(folder), "--out-dir", str(out), "--device", "cpu"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_overlay.png", "c.png", "c_overlay.png"]
    err = capsys.readouterr().err
    assert f"skipped {folder / 'b.jpg'}: " in err and f"skipped {folder / 'd.png'}: " in err
    assert "2 of 4 images skipped" in err


def test_infer_refuses_to_write_over_its_input_images(tmp_path, voc8, capsys):
    """One error line (the fcn command's), exit 1, the photo untouched; --verbose raises."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    before = (folder / "a.png").read_bytes()
    assert tool("infer").main(VOC8 + [str(folder), "--out-dir", str(folder), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "the output is the input" in err and "Traceback" not in err
    with pytest.raises(fcr.CaffeError, match="the output is the input"):
        tool("infer").main(VOC8 + [str(folder), "--out-dir", str(folder), "--device", "cpu", "--verbose"])
    assert (folder / "a.png").read_bytes() == before and sorted(os.listdir(folder)) == ["a.png"]


def test_training_curves_give_a_run_one_colour_in_both_panels():
    """A run without validations (a short stage) must not shift the colours of the runs after it."""
    logs = {"short": [{"iter": 20, "smoothed_loss": 3.0}, {"iter": 40, "smoothed_loss": 2.0}],
            "long": [{"iter": 20, "smoothed_loss": 5.0},
                     {"event": "val", "iter": 20, "results": {"label": {"mean_iu": 0.5}}}]}
    loss_ax, iu_ax = visualize.training_curves(logs).axes
    loss_colours = {line.get_label(): line.get_color() for line in loss_ax.get_lines()}
    iu_colours = {line.get_label(): line.get_color() for line in iu_ax.get_lines()}
    assert set(iu_colours) == {"long"} and iu_colours["long"] == loss_colours["long"] != loss_colours["short"]
    assert {t.get_text() for t in loss_ax.get_legend().get_texts()} == {"short", "long"}


@pytest.mark.parametrize("seed", range(4))
def test_class_map_is_numpys_argmax_with_ties_infinities_and_nan(seed):
    """score.py takes numpy's argmax over classes: the first of equal maxima, NaN above all."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (6, 17, 19), generator=g).float()  # many ties
    scores[torch.rand(scores.shape, generator=g) < 0.05] = float("inf")
    if seed % 2:
        scores[torch.rand(scores.shape, generator=g) < 0.05] = float("nan")
    want = np.argmax(scores.numpy(), 0)
    assert np.array_equal(evaluate.class_map(scores).numpy(), want)
    assert np.array_equal(evaluate.class_map(scores[None].contiguous(memory_format=torch.channels_last)[0]).numpy(), want)


def test_reproduce_scores_original_weights_in_the_mode_asked_for(tmp_path, monkeypatch, capsys):
    from fcn_caffe_repro.cli import reproduce as reproduce_cli

    root = make_voc(tmp_path / "VOC", split="seg11valid")
    seen = _spy_on_modes(monkeypatch, reproduce_cli)
    # the release's nets are full width; the fixture's weights are width/16 with 5 classes
    monkeypatch.setattr(reproduce_cli, "build_net", lambda name, **kw: fcr.build_net(
        name, num_classes=5, width_divisor=16, **kw))
    weights = NETS / "voc-fcn8s" / "weights.caffemodel"
    argv = ["--dataset", "voc", "--root", str(root), "--weights", f"voc-fcn8s={weights}", "--limit", "2"]
    assert reproduce_cli.main(argv) == 0 and reproduce_cli.main(argv + ["--mode", "bf16"]) == 0
    assert seen == ["fast", "bf16"]
    tables = [line for line in capsys.readouterr().out.splitlines() if "(ours)" in line]
    assert len(tables) == 2 and all("this run (2 images)" in line for line in tables)
