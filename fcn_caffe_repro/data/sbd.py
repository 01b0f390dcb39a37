"""SBD (Hariharan et al.'s semantic boundaries dataset), as the release's SBDDSegDataLayer reads it.

Layout under ``root`` (SBD's ``dataset`` directory): ``img/<id>.jpg``, ``cls/<id>.mat`` with the
labels in ``GTcls.Segmentation``, and ``<split>.txt`` (train / val).
"""
from pathlib import Path

import numpy as np

from .common import (SegDataset, check_label, check_raw, check_same_size, label_tensor, load_image, load_mat,
                     read_ids, require_files)
from .voc import VOC_CLASSES, VOC_MEAN


class SBD(SegDataset):
    """``ds[i] -> (image, label)``: float32 3×H×W BGR minus mean, uint8 H×W (21 VOC classes, void 255)."""

    def __init__(self, root, split="train", mean=VOC_MEAN):
        self.root, self.split, self.mean = Path(root), split, tuple(mean)
        self.split_file = self.root / f"{split}.txt"
        super().__init__(read_ids(self.split_file), {"label": VOC_CLASSES})
        require_files(self.split_file, self.files, self.ids)

    def files(self, id):
        """{top: path} of the files image ``id`` is read from."""
        return {"data": self.root / "img" / f"{id}.jpg", "label": self.root / "cls" / f"{id}.mat"}

    def __getitem__(self, i):
        files = self.files(self._index(i))
        image = load_image(files["data"], self.mean)
        path = files["label"]
        raw = load_mat(path, "GTcls", "Segmentation")
        check_raw(raw, 0, 255, path)
        label = check_label(raw.astype(np.uint8), len(self.classes), path)
        check_same_size(image, label, path)
        return image, label_tensor(label)
