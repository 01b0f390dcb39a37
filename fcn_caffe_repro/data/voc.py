"""PASCAL VOC segmentation, as the release's VOCSegDataLayer reads it.

Layout under ``root`` (a VOC year directory, e.g. VOC2011): ``JPEGImages/<id>.jpg``,
``SegmentationClass/<id>.png`` (palette-indexed, void = 255), ``ImageSets/Segmentation/<split>.txt``.
``seg11valid`` (the 736 images of VOC2011 val outside SBD train) ships with the package and is used
when the root has no such file.
"""
from pathlib import Path

from .common import (SegDataset, check_label, check_same_size, label_tensor, load_image, load_label_png,
                     read_class_block, read_ids, require_files, resolve_split, shipped)

VOC_MEAN = (104.00699, 116.66877, 122.67892)
VOC_CLASSES = read_class_block(shipped("pascal", "classes.txt"))


class VOC(SegDataset):
    """``ds[i] -> (image, label)``: float32 3×H×W BGR minus mean, uint8 H×W (void 255).

    ``labels=None`` loads labels unless the split is a test split (VOC test labels are private);
    without labels ``ds[i] -> (image, None)``.
    """

    def __init__(self, root, split="seg11valid", mean=VOC_MEAN, labels=None):
        self.root, self.split, self.mean = Path(root), split, tuple(mean)
        self.labels = ("test" not in split) if labels is None else bool(labels)
        self.split_file = resolve_split(self.root / "ImageSets" / "Segmentation" / f"{split}.txt",
                                        shipped("pascal", f"{split}.txt"))
        super().__init__(read_ids(self.split_file), {"label": VOC_CLASSES})
        require_files(self.split_file, self.files, self.ids)

    def files(self, id):
        """{top: path} of the files image ``id`` is read from (no label without labels)."""
        files = {"data": self.root / "JPEGImages" / f"{id}.jpg"}
        if self.labels:
            files["label"] = self.root / "SegmentationClass" / f"{id}.png"
        return files

    def __getitem__(self, i):
        files = self.files(self._index(i))
        image = load_image(files["data"], self.mean)
        if not self.labels:
            return image, None
        path = files["label"]
        label = check_label(load_label_png(path), len(self.classes), path)
        check_same_size(image, label, path)
        return image, label_tensor(label)
