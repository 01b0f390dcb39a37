"""What every loader shares: split files, Caffe-ready image tensors, label checks, the Dataset base.

Images become what the release's Python data layers feed Caffe: float32, RGB -> BGR, minus the
dataset mean, C×H×W. Labels are uint8 H×W with void = 255.
"""
import os
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image

from ..atomic import open_regular
from ..errors import CaffeError

LISTS = Path(__file__).with_name("lists")
VOID = 255


class DatasetError(CaffeError, ValueError):
    """A dataset file that is missing or holds values the task does not allow: names the file."""

    def __init__(self, message, file=None):
        self.file, self.reason = (str(file) if file is not None else None), message
        super().__init__(f"{file}: {message}" if file is not None else message)


class DatasetFileError(DatasetError, FileNotFoundError):
    """A file the dataset needs does not exist."""


def shipped(dataset, name):
    """Path of a list file that ships with the package (copies of the release's data/<dataset>/)."""
    return LISTS / dataset / name


def read_ids(path):
    """Image ids of a split file, one per line; blank lines and trailing whitespace are dropped."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFileError("split file not found", path)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def resolve_split(path, fallback=None):
    """The split file under the dataset root, else the packaged copy of the same split, if any."""
    path = Path(path)
    if path.is_file() or fallback is None or not Path(fallback).is_file():
        return path
    return Path(fallback)


def require_files(split_file, files, ids):
    """Fail at construction, naming the first missing file, when the split names absent images.

    ``files``: the dataset's ``files(id) -> {top: path}``, the files image ``id`` is read from. The
    tops are checked in the order ``files`` gives them, each over all ids.
    """
    named = [files(i) for i in ids]
    for top in (named[0] if named else ()):
        missing = [(i, f[top]) for i, f in zip(ids, named) if not os.path.exists(f[top])]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DatasetFileError(f"missing file for id '{missing[0][0]}' named by split {split_file}{more}",
                                   missing[0][1])


def read_class_block(path):
    """Class names of a plain list file: the lines before the first blank line (notes follow it)."""
    names = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            break
        names.append(line.strip())
    return names


def open_image(path):
    """A PIL image, or an error naming the file."""
    if not os.path.exists(path):
        raise DatasetFileError("image file not found", path)
    try:
        with open_regular(path, OSError) as f:  # a FIFO or device would block the reader
            im = Image.open(f)
            im.load()
        return im
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # PIL's kinds of "corrupt"
        raise DatasetError(f"cannot read image: {e}", path) from None


def load_rgb(path):
    """uint8 H×W×3 RGB; grayscale or palette images are expanded to RGB."""
    im = open_image(path)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def caffe_input(rgb, mean, flip=True):
    """float32 C×H×W tensor of an H×W×C uint8 image: channels reversed (RGB -> BGR) when ``flip``, minus mean.

    The subtraction runs in the mean's dtype and casts back, as the reference's in-place ``in_ -= mean`` does.
    """
    x = np.asarray(rgb, dtype=np.float32)
    if flip:
        x = x[:, :, ::-1]
    x = x - np.asarray(mean)
    return torch.from_numpy(np.ascontiguousarray(x.astype(np.float32, copy=False).transpose(2, 0, 1)))


def load_image(path, mean):
    """A JPEG/PNG as the release's data layers load it: float32 BGR minus mean, C×H×W."""
    return caffe_input(load_rgb(path), mean)


def load_label_png(path):
    """uint8 H×W class indices of a palette (or grayscale) PNG; an RGB-coloured label is an error."""
    im = open_image(path)
    if im.mode not in ("P", "L"):
        raise DatasetError(f"label image must be palette-indexed (mode P) or grayscale, got mode {im.mode}", path)
    return np.array(im, dtype=np.uint8)


def load_mat(path, *fields):
    """A field of a .mat file (``fields`` walks into MATLAB structs), or an error naming the file."""
    try:
        value = scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise DatasetFileError("annotation file not found", path) from None
    except Exception as e:  # scipy raises several kinds on a damaged file
        raise DatasetError(f"cannot read .mat file: {e}", path) from None
    where = []
    for f in fields:
        where.append(f)
        try:
            value = value[f] if isinstance(value, dict) else value[0][f][0]
        except (KeyError, ValueError, IndexError, TypeError):
            raise DatasetError(f"no field '{'.'.join(where)}'", path) from None
    return np.asarray(value)


def check_raw(raw, lo, hi, path):
    """Raw annotation values must be integers in [lo, hi] before the release's uint8 cast wraps them."""
    raw = np.asarray(raw)
    if raw.size == 0:
        return
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw) & (raw == np.round(raw))):
        raise DatasetError("label values must be integers", path)
    rmin, rmax = raw.min(), raw.max()
    if rmin < lo or rmax > hi:
        bad = raw[(raw < lo) | (raw > hi)].flat[0]
        raise DatasetError(f"label value {bad} outside [{lo}, {hi}]", path)


def check_label(label, num_classes, path):
    """Every label value must be a class index in [0, num_classes) or void (255)."""
    bad = (label >= num_classes) & (label != VOID)
    if bad.any():
        raise DatasetError(f"label value {int(label[bad].flat[0])} outside [0, {num_classes}) and not void (255)",
                           path)
    return label


def check_same_size(image, label, path):
    if tuple(image.shape[-2:]) != tuple(label.shape[-2:]):
        raise DatasetError(f"label size {tuple(label.shape[-2:])} differs from image size "
                           f"{tuple(image.shape[-2:])}", path)


def label_tensor(label):
    return torch.from_numpy(np.ascontiguousarray(label, dtype=np.uint8))


def to_rgb(image, mean, flip=True):
    """Inverse of caffe_input: uint8 H×W×3 RGB of a C×H×W float tensor (for pictures)."""
    x = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    x = x.transpose(1, 2, 0) + np.asarray(mean, dtype=np.float32)
    if flip:
        x = x[:, :, ::-1]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class SegDataset(torch.utils.data.Dataset):
    """Base of the loaders: ``ds[i]`` is a tuple ordered like the release's data layer tops.

    Attributes: ``ids`` (image ids), ``tops`` (names of the tuple's items), ``tasks`` (label top ->
    class names; one entry, or two for SIFT Flow), ``classes`` (the first task's names), ``mean``.
    """

    tops = ("data", "label")
    mean = ()

    def __init__(self, ids, tasks):
        # a list is copied; another sequence (a generated world's ids, made on demand) is kept as it is
        self.ids = list(ids) if isinstance(ids, (list, tuple)) or not hasattr(ids, "__getitem__") else ids
        self.tasks = dict(tasks)
        self.classes = list(next(iter(self.tasks.values())))

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def input_tops(self):
        """The tops a net consumes (everything that is not a label)."""
        return tuple(t for t in self.tops if t not in self.tasks)

    def __len__(self):
        return len(self.ids)

    def _index(self, i):
        if not -len(self.ids) <= i < len(self.ids):
            raise IndexError(f"index {i} out of range for {len(self.ids)} images")
        return self.ids[i]

    def rgb(self, i):
        """uint8 H×W×3 RGB of image i, for pictures."""
        return to_rgb(self[i][0], self.mean)

    def __repr__(self):
        return f"{type(self).__name__}({len(self)} images, {len(self.classes)} classes)"


def _identity(item):
    return item


def _one_thread(_):
    torch.set_num_threads(1)  # a loader process must not compete with the net's threads


def item_loader(dataset, workers=1, prefetch_factor=2):
    """The items of `dataset` in order, loaded ahead by `workers` processes (0: in this one)."""
    if workers <= 0:
        return (dataset[k] for k in range(len(dataset)))
    return torch.utils.data.DataLoader(dataset, batch_size=None, collate_fn=_identity, num_workers=workers,
                                       worker_init_fn=_one_thread, prefetch_factor=prefetch_factor)
