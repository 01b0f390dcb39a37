"""data/folder.py: your own data (images, index PNG labels, a class list, split files) checked with
errors that name the file, and used by fcn train / eval / infer with its own class count."""
import json

import numpy as np
import pytest
from PIL import Image

from fcn_caffe_repro.cli import main as fcn
from fcn_caffe_repro.data import DatasetError, DatasetFileError, Folder
from fcn_caffe_repro.evaluate import make_dataset

SIZES = {"a": (40, 56), "b": (33, 47), "c": (64, 64)}
CLASSES = ["background", "road", "tree"]


def label_png(path, label, palette=True):
    im = Image.fromarray(label.astype(np.uint8), mode="L")
    if palette:
        im = im.convert("P")
        im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 - 3) * 3)
    im.save(path)


@pytest.fixture
def root(tmp_path):
    rng = np.random.default_rng(0)
    r = tmp_path / "my_data"
    (r / "images").mkdir(parents=True)
    (r / "labels").mkdir()
    (r / "splits").mkdir()
    (r / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for i, (k, (h, w)) in enumerate(SIZES.items()):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(r / "images" / f"{k}.{'png' if i else 'jpg'}")
        label = rng.integers(0, len(CLASSES), (h, w))
        label[:2] = 255
        label_png(r / "labels" / f"{k}.png", label, palette=i != 1)  # one grayscale label
    (r / "splits" / "train.txt").write_text("a\nb\n")
    (r / "splits" / "val.txt").write_text("c\n")
    return r


def test_folder_loads_and_validates(root):
    ds = Folder(root, "train")
    assert ds.classes == CLASSES and ds.num_classes == 3 and len(ds) == 2
    image, label = ds[1]
    assert tuple(image.shape) == (3, *SIZES["b"]) and tuple(label.shape) == SIZES["b"]
    assert set(np.unique(label.numpy())) <= {0, 1, 2, 255}
    assert ds.validate() == 2
    assert isinstance(make_dataset("folder", root, "val"), Folder)


@pytest.mark.parametrize("damage, error, where", [
    (lambda r: label_png(r / "labels" / "b.png", np.full((33, 47), 3)), "label value 3 outside \\[0, 3\\)", "b.png"),
    (lambda r: label_png(r / "labels" / "a.png", np.zeros((40, 55))), "differs from image size", "a.png"),
    (lambda r: Image.new("RGB", (56, 40)).save(r / "labels" / "a.png"), "palette-indexed", "a.png"),
])
def test_bad_items_name_the_file(root, damage, error, where):
    damage(root)
    ds = Folder(root, "train")
    with pytest.raises(DatasetError, match=error) as e:
        ds.validate()
    assert e.value.file.endswith(where)


@pytest.mark.parametrize("damage, error, where", [
    (lambda r: (r / "labels" / "b.png").unlink(), "missing file for id 'b'", "b.png"),
    (lambda r: (r / "images" / "b.png").unlink(), "missing file for id 'b'", "b.jpg"),
    (lambda r: (r / "classes.txt").write_text("\n\n"), "class list is empty", "classes.txt"),
    (lambda r: (r / "classes.txt").write_text("a\nb\na\n"), "listed twice", "classes.txt"),
    (lambda r: (r / "classes.txt").unlink(), "class list not found", "classes.txt"),
    (lambda r: (r / "splits" / "train.txt").unlink(), "split file not found", "train.txt"),
])
def test_bad_folders_fail_at_construction(root, damage, error, where):
    damage(root)
    with pytest.raises(DatasetError, match=error) as e:
        Folder(root, "train")
    assert e.value.file.endswith(where)
    assert isinstance(e.value, DatasetFileError) == ("not found" in error or "missing" in error)


def test_fcn_train_eval_infer_on_a_folder(root, tmp_path, capsys):
    tiny = ["--net", "voc-fcn32s", "--width-divisor", "16"]
    assert fcn.main(["train", *tiny, "--dataset", "folder", "--root", str(root), "--split", "train",
                     "--val", "folder:val", "--val-every", "2", "--max-iter", "2", "--snapshot-every", "2", "--out", str(tmp_path / "run"),
                     "--quiet", "--workers", "0"]) == 0
    snapshot = sorted((tmp_path / "run" / "snapshots").glob("train_iter_*/*.caffemodel"))[-1]  # snapshot units
    assert fcn.main(["eval", *tiny, "--weights", str(snapshot), "--dataset", "folder", "--root", str(root),
                     "--split", "val", "--out", str(tmp_path / "eval"), "--quiet", "--workers", "0"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert next(iter(results["tasks"].values()))["classes"] == CLASSES
    # training's validation and fcn eval: one scorer, one mode (fast), the same weights, the same scores
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    val = next(r for r in reversed(logged) if r.get("event") == "val" and r["iter"] == 2)["results"]
    assert val == {label: task["metrics"] for label, task in results["tasks"].items()}
    assert fcn.main(["infer", *tiny, "--weights", str(snapshot), "--classes", str(root / "classes.txt"),
                     str(root / "images"), "--out-dir", str(tmp_path / "seg")]) == 0
    assert len(list((tmp_path / "seg").glob("*_overlay.png"))) == 3
    label = np.array(Image.open(tmp_path / "seg" / "b.png"))
    assert label.shape == SIZES["b"] and label.max() < 3
