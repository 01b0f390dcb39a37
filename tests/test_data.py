"""The loaders on small trees written in the datasets' real on-disk formats, and on the release's demo image."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import fcn_caffe_repro as fcr
from fcn_caffe_repro.data import DatasetError, DatasetFileError

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
VOC_MEAN = (104.00699, 116.66877, 122.67892)
CONTEXT_MEAN = np.float32([104.007, 116.669, 122.679])
SIFTFLOW_MEAN = np.float32([114.578, 115.294, 108.353])


def voc_palette(n=256):
    """The PASCAL VOC colour map: the bits of the class index spread over R, G, B from the top bit down."""
    pal = []
    for k in range(n):
        r = g = b = 0
        for i in range(8):
            r |= ((k >> (3 * i)) & 1) << (7 - i)
            g |= ((k >> (3 * i + 1)) & 1) << (7 - i)
            b |= ((k >> (3 * i + 2)) & 1) << (7 - i)
        pal.append((r, g, b))
    return pal


def rand_rgb(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_jpeg(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=90)


def write_png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    if im.mode == "P":
        im.putpalette([c for rgb in voc_palette() for c in rgb])
    im.save(path)


def write_split(path, ids):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def expected_input(path, mean, flip=True):
    """What the release's layers compute, by hand from PIL: float32(pixels)[..., ::-1] - mean, C×H×W.

    VOC's layer takes its mean as float64 (from param_str), the others as float32: the subtraction
    runs in that precision.
    """
    x = np.array(Image.open(path), dtype=np.float32)
    x = x[:, :, ::-1] if flip else x
    return np.stack([(x[:, :, c].astype(type(mean[c])) - mean[c]).astype(np.float32) for c in range(3)])


# ---------------------------------------------------------------- PASCAL VOC

def make_voc(root, ids=("a", "b"), size=(20, 30), labels=None, split="val"):
    rng = np.random.default_rng(0)
    for k, i in enumerate(ids):
        write_jpeg(root / "JPEGImages" / f"{i}.jpg", rand_rgb(rng, *size))
        lab = labels[k] if labels is not None else rng.choice([0, 1, 15, 20, 255], size).astype(np.uint8)
        write_png(root / "SegmentationClass" / f"{i}.png", lab, "P")
    write_split(root / "ImageSets" / "Segmentation" / f"{split}.txt", ids)
    return root


def test_voc_on_the_release_demo(tmp_path):
    demo = FIXTURES / "demo"
    root = tmp_path / "VOC2011"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    shutil.copy(demo / "image.jpg", root / "JPEGImages" / "2007_000129.jpg")
    shutil.copy(demo / "label.png", root / "SegmentationClass" / "2007_000129.png")
    write_split(root / "ImageSets" / "Segmentation" / "demo.txt", ["2007_000129"])
    ds = fcr.data.VOC(root, split="demo")
    assert len(ds) == 1 and ds.ids == ["2007_000129"]
    image, label = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 500, 334)
    assert label.dtype == torch.uint8 and label.shape == (500, 334)
    assert sorted(np.unique(label.numpy()).tolist()) == [0, 2, 15, 255]  # background, bicycle, person, void
    rgb = np.array(Image.open(demo / "image.jpg"))
    r, g, b = (float(v) for v in rgb[0, 0])
    assert image[:, 0, 0].tolist() == pytest.approx([b - 104.00699, g - 116.66877, r - 122.67892], abs=1e-4)
    np.testing.assert_array_equal(image.numpy(), expected_input(demo / "image.jpg", VOC_MEAN))
    im = Image.open(demo / "label.png")
    assert im.mode == "P"
    np.testing.assert_array_equal(label.numpy(), np.array(im))
    palette = np.array(im.getpalette()[:63]).reshape(21, 3)
    np.testing.assert_array_equal(palette, voc_palette(21))
    assert tuple(palette[15]) == (192, 128, 128) and tuple(palette[2]) == (0, 128, 0)
    assert ds.classes[2] == "bicycle" and ds.classes[15] == "person"


def test_voc_fixture_tree_and_dataloader(tmp_path):
    lab = np.zeros((20, 30), np.uint8)
    lab[2:5, 3:9], lab[10, :] = 20, 255
    root = make_voc(tmp_path / "VOC", ids=("x1", "x2"), labels=[lab, lab])
    ds = fcr.data.VOC(root, split="val")
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == 2
    image, label = ds[1]
    np.testing.assert_array_equal(image.numpy(), expected_input(root / "JPEGImages" / "x2.jpg", VOC_MEAN))
    np.testing.assert_array_equal(label.numpy(), lab)
    assert ds.mean == VOC_MEAN and len(ds.classes) == 21 and ds.classes[0] == "background"
    assert ds.classes[-1] == "tvmonitor" and ds.tops == ("data", "label") and ds.input_tops == ("data",)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch[0].shape == (2, 3, 20, 30) and batch[1].shape == (2, 20, 30)
    rgb = ds.rgb(0)
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.array(Image.open(root / "JPEGImages" / "x1.jpg")))


def test_voc_test_split_has_no_labels(tmp_path):
    root = tmp_path / "VOC"
    write_jpeg(root / "JPEGImages" / "t.jpg", rand_rgb(np.random.default_rng(1), 8, 8))
    write_split(root / "ImageSets" / "Segmentation" / "test.txt", ["t"])
    image, label = fcr.data.VOC(root, split="test")[0]
    assert image.shape == (3, 8, 8) and label is None


def test_voc_seg11valid_ships_with_the_package(tmp_path):
    shipped = Path(fcr.data.voc.__file__).parent / "lists" / "pascal" / "seg11valid.txt"
    assert shipped.read_bytes() == (FIXTURES / "data" / "pascal" / "seg11valid.txt").read_bytes()
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(DatasetFileError) as e:
        fcr.data.VOC(tmp_path)  # default split seg11valid: the packaged list, whose images are absent here
    assert e.value.file == str(tmp_path / "JPEGImages" / "2007_000033.jpg")
    assert "seg11valid.txt" in str(e.value) and "735 more" in str(e.value)


def test_packaged_lists_are_byte_identical_to_the_release():
    lists = Path(fcr.data.voc.__file__).parent / "lists"
    ref = sorted(p.relative_to(FIXTURES / "data") for p in (FIXTURES / "data").rglob("*.txt"))
    assert ref == sorted(p.relative_to(lists) for p in lists.rglob("*.txt"))
    for rel in ref:
        assert (lists / rel).read_bytes() == (FIXTURES / "data" / rel).read_bytes(), rel


def test_voc_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetFileError, match="split file not found") as e:
        fcr.data.VOC(tmp_path, split="nosuch")
    assert e.value.file.endswith("nosuch.txt")
    root = make_voc(tmp_path / "A")
    (root / "SegmentationClass" / "b.png").unlink()
    with pytest.raises(DatasetFileError) as e:
        fcr.data.VOC(root, split="val")
    assert e.value.file == str(root / "SegmentationClass" / "b.png") and isinstance(e.value, FileNotFoundError)
    bad = np.zeros((20, 30), np.uint8)
    bad[3, 4] = 21
    root = make_voc(tmp_path / "B", labels=[np.zeros((20, 30), np.uint8), bad])
    ds = fcr.data.VOC(root, split="val")
    ds[0]
    with pytest.raises(DatasetError, match="label value 21") as e:
        ds[1]
    assert e.value.file == str(root / "SegmentationClass" / "b.png")
    write_png(root / "SegmentationClass" / "b.png", np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(DatasetError, match="palette"):
        ds[1]
    write_png(root / "SegmentationClass" / "b.png", np.zeros((21, 30), np.uint8), "P")
    with pytest.raises(DatasetError, match="differs from image size"):
        ds[1]
    (root / "JPEGImages" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="cannot read image") as e:
        ds[0]
    assert e.value.file == str(root / "JPEGImages" / "a.jpg")


# ---------------------------------------------------------------- SBD

def write_sbd_mat(path, seg):
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros((1, 1)),
                                      "CategoriesPresent": np.unique(seg)}})


def test_sbd(tmp_path):
    rng = np.random.default_rng(2)
    seg = rng.integers(0, 21, (12, 16)).astype(np.uint16)
    write_jpeg(tmp_path / "img" / "2008_1.jpg", rand_rgb(rng, 12, 16))
    write_sbd_mat(tmp_path / "cls" / "2008_1.mat", seg)
    write_split(tmp_path / "train.txt", ["2008_1"])
    ds = fcr.data.SBD(tmp_path)
    image, label = ds[0]
    np.testing.assert_array_equal(image.numpy(), expected_input(tmp_path / "img" / "2008_1.jpg", VOC_MEAN))
    assert label.dtype == torch.uint8
    np.testing.assert_array_equal(label.numpy(), seg)
    seg[0, 0] = 300  # would wrap to 44 in the release's uint8 cast
    write_sbd_mat(tmp_path / "cls" / "2008_1.mat", seg)
    with pytest.raises(DatasetError, match="300") as e:
        ds[0]
    assert e.value.file == str(tmp_path / "cls" / "2008_1.mat")
    scipy.io.savemat(tmp_path / "cls" / "2008_1.mat", {"other": seg})
    with pytest.raises(DatasetError, match="no field 'GTcls'"):
        ds[0]


# ---------------------------------------------------------------- PASCAL-Context

def test_pascal_context_maps_the_full_labels_to_the_59_class_task(tmp_path):
    voc = tmp_path / "pascal" / "VOC2010"
    ctx = tmp_path / "pascal-context"
    rng = np.random.default_rng(3)
    write_jpeg(voc / "JPEGImages" / "2008_000002.jpg", rand_rgb(rng, 6, 7))
    write_split(voc / "ImageSets" / "Main" / "val.txt", ["2008_000002"])
    # full-list indexes (1-based, classes-400.txt): 1 accordion, 2 aeroplane, 19 bedclothes, 80 cloth,
    # 397 table, 459 wool; the task calls table / bedclothes / cloth diningtable / bedcloth / clothes.
    raw = np.array([[0, 1, 2, 19, 80, 397, 459]] * 6, dtype=np.uint16)
    (ctx / "trainval").mkdir(parents=True)
    scipy.io.savemat(ctx / "trainval" / "2008_000002.mat", {"LabelMap": raw})
    ds = fcr.data.PascalContext(tmp_path / "pascal", split="val", context_dir=ctx)  # packaged label lists
    image, label = ds[0]
    assert len(ds.classes) == 60 and ds.classes[11] == "diningtable" and ds.classes[52] == "bedcloth"
    assert label[0].tolist() == [0, 0, 1, 52, 28, 11, 0]
    np.testing.assert_array_equal(image.numpy(), expected_input(voc / "JPEGImages" / "2008_000002.jpg",
                                                                CONTEXT_MEAN))
    # The annotation's own lists win over the packaged ones; spaces are ignored when matching names.
    (ctx / "labels.txt").write_text("1: aero plane\n2: dining table\n3: tree\n4: table\n")
    (ctx / "59_labels.txt").write_text("1: tree\n2: aeroplane\n3: diningtable\n")
    ds = fcr.data.PascalContext(tmp_path / "pascal" / "VOC2010", split="val", context_dir=ctx)
    scipy.io.savemat(ctx / "trainval" / "2008_000002.mat", {"LabelMap": np.array([[0, 1, 2, 3, 4]] * 6)})
    write_jpeg(voc / "JPEGImages" / "2008_000002.jpg", rand_rgb(rng, 6, 5))
    assert ds[0][1][0].tolist() == [0, 2, 0, 1, 3]  # the task's diningtable is the full list's table
    scipy.io.savemat(ctx / "trainval" / "2008_000002.mat", {"LabelMap": np.array([[0, 1, 2, 3, 5]] * 6)})
    with pytest.raises(DatasetError, match="label value 5") as e:
        ds[0]
    assert e.value.file == str(ctx / "trainval" / "2008_000002.mat")
    (ctx / "59_labels.txt").write_text("1: tree\n2: sky\n")
    with pytest.raises(DatasetError, match="'sky'"):
        fcr.data.PascalContext(voc, split="val", context_dir=ctx)


# ---------------------------------------------------------------- NYUDv2

def test_nyud_tops_means_depth_and_label_shift(tmp_path):
    rng = np.random.default_rng(4)
    color, hha = rand_rgb(rng, 9, 11), rand_rgb(rng, 9, 11)
    depth = rng.integers(500, 9000, (9, 11)).astype(np.uint16)
    seg = rng.integers(0, 41, (9, 11)).astype(np.uint8)
    seg[0, :3] = [0, 1, 40]
    write_png(tmp_path / "data" / "images" / "img_5001.png", color)
    write_png(tmp_path / "data" / "hha" / "img_5001.png", hha)
    write_png(tmp_path / "data" / "depth" / "img_5001.png", depth)
    (tmp_path / "segmentation").mkdir()
    scipy.io.savemat(tmp_path / "segmentation" / "img_5001.mat", {"segmentation": seg})
    write_split(tmp_path / "mini.txt", ["5001"])
    ds = fcr.data.NYUD(tmp_path, split="mini", tops=("color", "hha", "depth", "label"))
    assert ds.tops == ("color", "hha", "depth", "label") and ds.input_tops == ("color", "hha", "depth")
    c, h, d, label = ds[0]
    bgr = color[:, :, ::-1].astype(np.float32) - np.float32([116.190, 97.203, 92.318])
    np.testing.assert_array_equal(c.numpy(), bgr.transpose(2, 0, 1))
    np.testing.assert_array_equal(h.numpy(), (hha.astype(np.float32) - np.float32([132.431, 94.076, 118.477]))
                                  .transpose(2, 0, 1))  # HHA keeps its channel order
    assert d.shape == (1, 9, 11)
    np.testing.assert_allclose(d.numpy()[0], np.log(depth.astype(np.float32)) - np.float32(7.844), rtol=1e-6)
    assert label[0, :3].tolist() == [255, 0, 39]
    np.testing.assert_array_equal(label.numpy(), np.where(seg == 0, 255, seg - 1))
    assert len(ds.classes) == 40 and ds.classes[0] == "wall" and ds.classes[-1] == "otherprop"
    hha_only = fcr.data.NYUD(tmp_path, split="mini", tops=("hha", "label"))[0]
    assert len(hha_only) == 2 and torch.equal(hha_only[0], h)
    with pytest.raises(ValueError, match="unknown NYUD top 'rgb'"):
        fcr.data.NYUD(tmp_path, split="mini", tops=("rgb", "label"))
    seg[1, 1] = 41
    scipy.io.savemat(tmp_path / "segmentation" / "img_5001.mat", {"segmentation": seg})
    with pytest.raises(DatasetError, match="41") as e:
        ds[0]
    assert e.value.file == str(tmp_path / "segmentation" / "img_5001.mat")
    (tmp_path / "data" / "hha" / "img_5001.png").unlink()
    with pytest.raises(DatasetFileError) as e:
        fcr.data.NYUD(tmp_path, split="mini", tops=("color", "hha", "label"))
    assert e.value.file == str(tmp_path / "data" / "hha" / "img_5001.png")
    with pytest.raises(DatasetFileError) as e:
        fcr.data.NYUD(tmp_path)  # default split test: the packaged list of 654 images (5001 among them)
    assert e.value.file == str(tmp_path / "data" / "images" / "img_5133.png") and "652 more" in str(e.value)


# ---------------------------------------------------------------- SIFT Flow

def test_siftflow_semantic_and_geometric_labels(tmp_path):
    sub = "spatial_envelope_256x256_static_8outdoorcategories"
    rng = np.random.default_rng(5)
    write_jpeg(tmp_path / "Images" / sub / "coast_1.jpg", rand_rgb(rng, 8, 8))
    sem = rng.integers(0, 34, (8, 8)).astype(np.float64)
    sem[0, :3] = [0, 1, 33]
    geo = rng.integers(-1, 4, (8, 8)).astype(np.int16)
    geo[0, :4] = [-1, 0, 1, 3]
    for kind, s in (("SemanticLabels", sem), ("GeoLabels", geo)):
        (tmp_path / kind / sub).mkdir(parents=True)
        scipy.io.savemat(tmp_path / kind / sub / "coast_1.mat", {"S": s})
    write_split(tmp_path / "test.txt", ["coast_1"])
    ds = fcr.data.SIFTFlow(tmp_path)
    image, s, g = ds[0]
    np.testing.assert_array_equal(image.numpy(), expected_input(tmp_path / "Images" / sub / "coast_1.jpg",
                                                                SIFTFLOW_MEAN))
    assert s[0, :3].tolist() == [255, 0, 32] and g[0, :4].tolist() == [255, 255, 0, 2]
    np.testing.assert_array_equal(g.numpy(), np.where(geo <= 0, 255, geo - 1))
    assert ds.tops == ("data", "sem", "geo") and set(ds.tasks) == {"sem", "geo"}
    assert len(ds.tasks["sem"]) == 33 and ds.tasks["geo"] == ["sky", "horizontal", "vertical"]
    assert [ds.classes[k] for k in ds.exclude] == ["cow", "desert", "moon"]
    geo[2, 2] = 4
    scipy.io.savemat(tmp_path / "GeoLabels" / sub / "coast_1.mat", {"S": geo})
    with pytest.raises(DatasetError, match="label value 4") as e:
        ds[0]
    assert e.value.file == str(tmp_path / "GeoLabels" / sub / "coast_1.mat")
    with pytest.raises(DatasetFileError) as e:
        fcr.data.SIFTFlow(tmp_path, split="trainval")  # the packaged list names images this tree lacks
    assert e.value.file == str(tmp_path / "Images" / sub / "forest_for121.jpg")


# ---------------------------------------------------------------- files(id)

def opened_files(monkeypatch):
    """The paths every image / .mat read goes through, as the loaders open them."""
    opened, open_image, loadmat = [], Image.open, scipy.io.loadmat

    def recording(read):
        return lambda path, *a, **k: opened.append(str(getattr(path, "name", path))) or read(path, *a, **k)

    monkeypatch.setattr(Image, "open", recording(open_image))
    monkeypatch.setattr(scipy.io, "loadmat", recording(loadmat))
    return opened


def test_files_names_exactly_what_getitem_reads(tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    for top in ("images", "hha"):
        write_png(tmp_path / "data" / top / "img_7.png", rand_rgb(rng, 5, 6))
    write_png(tmp_path / "data" / "depth" / "img_7.png", rng.integers(1, 9000, (5, 6)).astype(np.uint16))
    (tmp_path / "segmentation").mkdir()
    scipy.io.savemat(tmp_path / "segmentation" / "img_7.mat", {"segmentation": np.ones((5, 6), np.uint8)})
    write_split(tmp_path / "mini.txt", ["7"])
    voc = make_voc(tmp_path / "VOC", ids=("v",))
    opened = opened_files(monkeypatch)
    for ds in (fcr.data.NYUD(tmp_path, split="mini", tops=("depth", "label", "hha", "color")),
               fcr.data.NYUD(tmp_path, split="mini", tops=("hha", "label")), fcr.data.VOC(voc, split="val")):
        files = ds.files(ds.ids[0])
        assert tuple(files) == ds.tops and all(Path(f).is_file() for f in files.values())
        opened.clear()
        assert len(ds[0]) == len(ds.tops)
        assert opened == [str(f) for f in files.values()]


# ---------------------------------------------------------------- Synthetic

def test_synthetic_is_deterministic_and_well_formed():
    ds = fcr.data.Synthetic(seed=3, n=12, size=(64, 80), num_classes=7)
    assert len(ds) == 12 and ds.classes[0] == "background" and len(ds.classes) == 7
    image, label = ds[5]
    assert image.shape == (3, 64, 80) and image.dtype == torch.float32
    assert label.shape == (64, 80) and label.dtype == torch.uint8
    again = fcr.data.Synthetic(seed=3, n=12, size=(64, 80), num_classes=7)[5]
    assert torch.equal(again[0], image) and torch.equal(again[1], label)
    other = fcr.data.Synthetic(seed=4, n=12, size=(64, 80), num_classes=7)[5]
    assert not torch.equal(other[1], label)
    assert not torch.equal(ds[4][1], label)
    np.testing.assert_array_equal(ds.rgb(5), fcr.data.to_rgb(image, ds.mean))
    labels = np.stack([ds[i][1].numpy() for i in range(12)])
    assert set(np.unique(labels)) == set(range(7))
    assert 0.5 < (labels == 0).mean() < 0.97


def test_synthetic_keep_returns_the_generated_items_unaliased():
    """A kept set gives what generating gives, for negative indices too, and a caller writing into
    an item does not change the next read."""
    made = fcr.data.Synthetic(seed=5, n=4, size=32, num_classes=3)
    kept = fcr.data.Synthetic(seed=5, n=4, size=32, num_classes=3, keep=True)
    for i in (1, -1, 1):
        image, label = kept[i]
        expected = made[i]
        assert torch.equal(image, expected[0]) and torch.equal(label, expected[1])
        image.fill_(0)
        label.fill_(0)
    with pytest.raises(IndexError):
        kept[4]


def test_synthetic_rejects_bad_arguments():
    with pytest.raises(ValueError):
        fcr.data.Synthetic(num_classes=1)
    with pytest.raises(IndexError):
        fcr.data.Synthetic(n=3)[3]


def test_synthetic_rewards_finer_strides():
    """The best a stride-s score map can do (ground truth averaged over s×s cells, upsampled
    bilinearly): every stride finds the large shapes, only stride 8 places the thin ones, and the
    mean IU gains clearly from 32 to 16 to 8 (what FCN-16s and FCN-8s add is needed here)."""
    import torch.nn.functional as F

    ds = fcr.data.Synthetic(seed=1, n=60, size=128, num_classes=6)
    accs = {s: fcr.metrics.Accumulator(6) for s in (32, 16, 8)}
    for i in range(len(ds)):
        y = ds[i][1].long()
        onehot = F.one_hot(y, 6).permute(2, 0, 1)[None].float()
        for s, acc in accs.items():
            up = F.interpolate(F.avg_pool2d(onehot, s, s), scale_factor=s, mode="bilinear", align_corners=False)
            acc.update(y, up[0].argmax(0))
    iu = {s: acc.scores()["iu"] for s, acc in accs.items()}
    miu = {s: acc.scores()["mean_iu"] for s, acc in accs.items()}
    thin = [ds.classes.index(c) for c in fcr.data.synthetic.THIN]
    large = [k for k in range(1, 6) if k not in thin]
    assert miu[32] > 0.4 and miu[16] > miu[32] + 0.1 and miu[8] > miu[16] + 0.1
    assert all(iu[32][k] > 0.5 for k in large) and all(iu[32][k] < 0.15 for k in thin)
    assert all(iu[8][k] > 0.7 for k in thin)


def test_synthetic_shapes_classes_are_the_segmentation_families():
    """The classifier stage's task: one family per image, its class index = segmentation class - 1."""
    seg = fcr.data.Synthetic(seed=0, n=1, num_classes=6)
    shapes = fcr.data.synthetic.SyntheticShapes(seed=0, n=40, num_classes=5)
    assert shapes.classes == seg.classes[1:]
    image, k = shapes[3]
    assert image.shape == (3, 224, 224) and k.dim() == 0
    assert sorted({int(shapes[i][1]) for i in range(40)}) == [0, 1, 2, 3, 4]
    assert torch.equal(shapes[3][0], image) and len(fcr.data.synthetic.SyntheticShapes(n=10 ** 12)) == 10 ** 12


def test_synthetic_shapes_are_object_centric_at_the_worlds_pixel_scale():
    """As ILSVRC's photos: one object near the centre (its pixels' centroid within the middle
    third), as large in pixels as the same family in the 128-pixel segmentation world."""
    from fcn_caffe_repro.data.synthetic import SyntheticShapes, _World

    shapes = SyntheticShapes(seed=5, n=30, num_classes=5)
    world = _World(128, 5)
    for i in range(len(shapes)):
        rng = np.random.default_rng([shapes.seed, i])
        shapes.world.background(rng)
        k = int(rng.integers(0, 5))
        mask = shapes.world.paint(np.zeros((224, 224, 3), np.float32), rng, k, shapes.centre)
        assert k == int(shapes[i][1])
        ys, xs = np.nonzero(mask)
        assert 224 / 3 < ys.mean() < 2 * 224 / 3 and 224 / 3 < xs.mean() < 2 * 224 / 3
        seg_rng = np.random.default_rng([shapes.seed, i])
        world.background(seg_rng)
        seg_rng.integers(0, 5)
        seg = world.paint(np.zeros((128, 128, 3), np.float32), seg_rng, k, shapes.centre)
        assert mask.sum() == pytest.approx(seg.sum(), rel=0.1)  # the same draw, the same pixel size
