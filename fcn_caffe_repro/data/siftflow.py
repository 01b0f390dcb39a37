"""SIFT Flow, semantic (33 classes) and geometric (3 classes) labels, as the release's SIFTFlowSegDataLayer.

Layout under ``root``: ``Images/spatial_envelope_256x256_static_8outdoorcategories/<id>.jpg``,
``SemanticLabels/<same>/<id>.mat`` and ``GeoLabels/<same>/<id>.mat`` (field ``S``), ``<split>.txt``
(trainval / test ship with the package). Semantic 0 and geometric -1 / 0 are void.
"""
import re
from pathlib import Path

import numpy as np

from .common import (SegDataset, check_label, check_raw, check_same_size, label_tensor, load_image, load_mat,
                     load_rgb, read_ids, require_files, resolve_split, shipped)

SIFTFLOW_MEAN = np.array((114.578, 115.294, 108.353), dtype=np.float32)
_SUB = "spatial_envelope_256x256_static_8outdoorcategories"
# Classes absent from the test set; the paper leaves them out of the means (Table 5).
ABSENT_FROM_TEST = ("cow", "desert", "moon")


def _read_classes(path):
    """The 'Semantic' and 'Geometric' numbered sections of the release's classes.txt."""
    sections, current = {}, None
    for line in Path(path).read_text().splitlines():
        if line.startswith(("Semantic", "Geometric")):
            current = sections.setdefault(line.split(":")[0], [])
        elif current is not None and re.match(r"^\d+ ", line):
            current.append(line.split(" ", 1)[1].strip())
        elif current is not None and current and not line.strip():
            current = None
    return sections["Semantic"], sections["Geometric"]


SEMANTIC_CLASSES, GEOMETRIC_CLASSES = _read_classes(shipped("sift-flow", "classes.txt"))


class SIFTFlow(SegDataset):
    """``ds[i] -> (image, sem, geo)``: float32 3×H×W BGR minus mean, uint8 H×W semantic (0..32, void
    255) and geometric (0..2, void 255) labels. ``tasks`` = {"sem": 33 names, "geo": 3 names}."""

    tops = ("data", "sem", "geo")

    def __init__(self, root, split="test"):
        self.root, self.split, self.mean = Path(root), split, SIFTFLOW_MEAN
        self.split_file = resolve_split(self.root / f"{split}.txt", shipped("sift-flow", f"{split}.txt"))
        super().__init__(read_ids(self.split_file), {"sem": SEMANTIC_CLASSES, "geo": GEOMETRIC_CLASSES})
        require_files(self.split_file, self.files, self.ids)

    @property
    def exclude(self):
        """Semantic class indices the paper leaves out of the test means."""
        return tuple(SEMANTIC_CLASSES.index(c) for c in ABSENT_FROM_TEST)

    def files(self, id):
        """{top: path} of the files image ``id`` is read from."""
        return {"data": self.root / "Images" / _SUB / f"{id}.jpg",
                "sem": self.root / "SemanticLabels" / _SUB / f"{id}.mat",
                "geo": self.root / "GeoLabels" / _SUB / f"{id}.mat"}

    def __getitem__(self, i):
        files = self.files(self._index(i))
        image = load_image(files["data"], self.mean)
        sem = self._label("sem", files["sem"], 0)
        geo = self._label("geo", files["geo"], -1)
        for kind, label in (("sem", sem), ("geo", geo)):
            check_same_size(image, label, files[kind])
        return image, sem, geo

    def _label(self, kind, path, lo):
        raw = load_mat(path, "S")
        n = len(self.tasks[kind])
        check_raw(raw, lo, n, path)
        raw = np.where(raw == -1, 0, raw)  # geometric void -1 joins void 0
        label = raw.astype(np.uint8) - np.uint8(1)  # classes start at 0, void wraps to 255
        return label_tensor(check_label(label, n, path))

    def rgb(self, i):
        return load_rgb(self.files(self._index(i))["data"])
