"""PASCAL-Context, the 59-class task (Mottaghi et al.), as the release's PASCALContextSegDataLayer reads it.

Images: ``root`` is the VOC2010 directory (or its parent): ``JPEGImages/<id>.jpg``,
``ImageSets/Main/<split>.txt``. Annotations: ``context_dir`` (default: ``root``) holds
``trainval/<id>.mat`` whose ``LabelMap`` indexes the full label list ``labels.txt`` (1-based, 459
entries), and ``59_labels.txt``, the task's classes; either list falls back to the packaged copy
(``classes-400.txt`` / ``classes-59.txt``). Pixels of the 59 task classes get 1..59 in that file's
order, every other pixel 0 (background): no void, 60 outputs.
"""
from pathlib import Path

import numpy as np

from .common import (DatasetError, SegDataset, check_raw, check_same_size, label_tensor, load_image, load_mat,
                     read_ids, require_files, shipped)

CONTEXT_MEAN = np.array((104.007, 116.669, 122.679), dtype=np.float32)
# The task list and the full list spell three classes differently; the release maps them like this.
RENAMES = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}


def read_numbered(path):
    """Names of an ``index: name`` list, spaces removed (as the release matches them)."""
    names = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            _, _, name = line.partition(":")
            names.append(name.replace(" ", "").strip())
    return names


def task_lut(labels_file, task_file):
    """uint8 table from full-list index (1-based) to task class (1..59), 0 for everything else."""
    full = read_numbered(labels_file)
    task = [n for n in read_numbered(task_file) if n != "background"]
    lut = np.zeros(len(full) + 1, dtype=np.uint8)
    for k, name in enumerate(task):
        name = RENAMES.get(name, name)
        if name not in full:
            raise DatasetError(f"task class '{name}' of {task_file} is not in the full label list", labels_file)
        lut[full.index(name) + 1] = k + 1
    return lut


CONTEXT_CLASSES = read_numbered(shipped("pascal-context", "classes-59.txt"))  # background + the 59


class PascalContext(SegDataset):
    """``ds[i] -> (image, label)``: float32 3×H×W BGR minus mean, uint8 H×W in [0, 60)."""

    def __init__(self, root, split="val", context_dir=None, mean=CONTEXT_MEAN):
        root = Path(root)
        self.root = root / "VOC2010" if (root / "VOC2010").is_dir() else root
        self.context_dir = Path(context_dir) if context_dir is not None else self.root
        self.split, self.mean = split, mean
        labels_file = self._list("labels.txt", "classes-400.txt")
        task_file = self._list("59_labels.txt", "classes-59.txt")
        self.lut = task_lut(labels_file, task_file)
        classes = CONTEXT_CLASSES
        self.split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        super().__init__(read_ids(self.split_file), {"label": classes})
        require_files(self.split_file, self.files, self.ids)

    def _list(self, name, packaged):
        path = self.context_dir / name
        return path if path.is_file() else shipped("pascal-context", packaged)

    def files(self, id):
        """{top: path} of the files image ``id`` is read from."""
        return {"data": self.root / "JPEGImages" / f"{id}.jpg",
                "label": self.context_dir / "trainval" / f"{id}.mat"}

    def __getitem__(self, i):
        files = self.files(self._index(i))
        image = load_image(files["data"], self.mean)
        path = files["label"]
        raw = load_mat(path, "LabelMap")
        check_raw(raw, 0, len(self.lut) - 1, path)
        label = self.lut[raw.astype(np.int64)]
        check_same_size(image, label, path)
        return image, label_tensor(label)
