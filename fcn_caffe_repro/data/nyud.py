"""NYUDv2, the 40-class task of Gupta et al., as the release's NYUDSegDataLayer reads it.

Layout under ``root``: ``data/images/img_<id>.png`` (colour), ``data/hha/img_<id>.png`` (HHA),
``data/depth/img_<id>.png`` (depth), ``segmentation/img_<id>.mat`` (field ``segmentation``: 0 void,
1..40 classes), ``<split>.txt`` (train / val / test ship with the package; trainval from the data).
"""
from pathlib import Path

import numpy as np
import torch

from .common import (SegDataset, caffe_input, check_label, check_raw, check_same_size, label_tensor, load_mat,
                     load_rgb, open_image, read_class_block, read_ids, require_files, resolve_split, shipped)

MEAN_BGR = np.array((116.190, 97.203, 92.318), dtype=np.float32)
MEAN_HHA = np.array((132.431, 94.076, 118.477), dtype=np.float32)
MEAN_LOGD = np.array((7.844,), dtype=np.float32)
NYUD_CLASSES = read_class_block(shipped("nyud", "classes.txt"))
_FILES = {"color": "data/images/img_{}.png", "hha": "data/hha/img_{}.png", "depth": "data/depth/img_{}.png",
          "label": "segmentation/img_{}.mat"}


class NYUD(SegDataset):
    """``ds[i]`` is a tuple with one item per entry of ``tops``, in that order, as the release's layer:

    - ``color``: float32 3×H×W, BGR minus (116.190, 97.203, 92.318)
    - ``hha``: float32 3×H×W, HHA channels as stored (no reversal) minus (132.431, 94.076, 118.477)
    - ``depth``: float32 1×H×W, log(depth) - 7.844
    - ``label``: uint8 H×W, classes 0..39, void 255 (the stored labels shifted by -1)
    """

    mean = tuple(MEAN_BGR)

    def __init__(self, root, split="test", tops=("color", "label")):
        self.root, self.split, self.tops = Path(root), split, tuple(tops)
        unknown = [t for t in self.tops if t not in _FILES]
        if unknown:
            raise ValueError(f"unknown NYUD top '{unknown[0]}', pick from {', '.join(_FILES)}")
        self.split_file = resolve_split(self.root / f"{split}.txt", shipped("nyud", f"{split}.txt"))
        super().__init__(read_ids(self.split_file), {"label": NYUD_CLASSES})
        require_files(self.split_file, self.files, self.ids)

    def files(self, id, tops=None):
        """{top: path} of the files image ``id`` is read from: one per entry of ``tops`` (default: the
        dataset's), in that order."""
        return {t: self.root / _FILES[t].format(id) for t in (self.tops if tops is None else tops)}

    def __getitem__(self, i):
        files = self.files(self._index(i))
        out = [getattr(self, f"_load_{t}")(path) for t, path in files.items()]
        for t, x in zip(self.tops[1:], out[1:]):
            check_same_size(out[0], x, files[t])
        return tuple(out)

    def _load_color(self, path):
        return caffe_input(load_rgb(path), MEAN_BGR)

    def _load_hha(self, path):
        return caffe_input(load_rgb(path), MEAN_HHA, flip=False)

    def _load_depth(self, path):
        d = np.array(open_image(path), dtype=np.float32)
        with np.errstate(divide="ignore"):  # the release takes log(0) = -inf as it comes
            d = np.log(d) - MEAN_LOGD
        return torch.from_numpy(np.ascontiguousarray(d[np.newaxis]))

    def _load_label(self, path):
        raw = load_mat(path, "segmentation")
        check_raw(raw, 0, len(self.classes), path)
        label = raw.astype(np.uint8) - np.uint8(1)  # 0 (void) wraps to 255
        return label_tensor(check_label(label, len(self.classes), path))

    def rgb(self, i):
        return load_rgb(self.files(self._index(i), ("color",))["color"])
