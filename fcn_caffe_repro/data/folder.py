"""Your own data as a folder: images, index-PNG labels, a class list and split files; any class count.

Layout under ``root``::

    classes.txt             one class name per line; line k is label value k (at most 255 classes)
    images/<id>.jpg         the photos (.jpg, .jpeg, .png, .bmp, .ppm, .tif, .tiff or .webp)
    labels/<id>.png         palette-indexed (as VOC's) or grayscale PNG: class indices, 255 = void
    splits/<split>.txt      image ids, one per line (train.txt, val.txt, ...)

Everything that can be checked without decoding is checked at construction (the class list, the
split, every image and label file present); each item checks that its label has the image's size
and only values in [0, classes) or 255. `validate()` reads every item once. Every error names the
file. Inputs are prepared as the release's data layers do (RGB -> BGR, minus the mean; the default
mean is the VOC/ImageNet one the VGG16 and CaffeNet weights were trained with).
"""
from pathlib import Path

from .common import (VOID, DatasetError, DatasetFileError, SegDataset, check_label, check_same_size, label_tensor,
                     load_image, load_label_png, read_ids, require_files)
from .voc import VOC_MEAN

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def read_classes(path):
    """Class names, one per line (blank lines and surrounding spaces dropped), checked."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFileError("class list not found (one class name per line)", path)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError("the class list is empty", path)
    if len(names) > VOID:
        raise DatasetError(f"{len(names)} classes: at most {VOID} fit an 8-bit label with void {VOID}", path)
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise DatasetError(f"class '{twice}' is listed twice", path)
    return names


def parse_mean(mean):
    """A BGR mean as a tuple, from a tuple or a "B,G,R" string (--data-opt mean=104,117,123)."""
    values = [float(v) for v in mean.split(",")] if isinstance(mean, str) else [float(v) for v in mean]
    if len(values) != 3:
        raise DatasetError(f"the mean needs 3 values (B,G,R), got {mean!r}")
    return tuple(values)


class Folder(SegDataset):
    """``ds[i] -> (image, label)``: float32 3×H×W BGR minus mean, uint8 H×W (void 255)."""

    def __init__(self, root, split="train", mean=VOC_MEAN, images="images", labels="labels"):
        self.root, self.split, self.mean = Path(root), split, parse_mean(mean)
        if not self.root.is_dir():
            raise DatasetFileError("dataset folder not found", self.root)
        self.image_dir, self.label_dir = self.root / images, self.root / labels
        self.split_file = self.root / "splits" / f"{split}.txt"
        super().__init__(read_ids(self.split_file), {"label": read_classes(self.root / "classes.txt")})
        if not self.ids:
            raise DatasetError("the split names no image", self.split_file)
        self._images = {p.stem: p for p in sorted(self.image_dir.glob("*")) if p.suffix.lower() in IMAGE_EXTENSIONS}
        require_files(self.split_file, self.files, self.ids)

    def files(self, id):
        """{top: path} of image ``id`` (a missing image is named with .jpg)."""
        return {"data": self._images.get(id, self.image_dir / f"{id}.jpg"), "label": self.label_dir / f"{id}.png"}

    def __getitem__(self, i):
        files = self.files(self._index(i))
        image = load_image(files["data"], self.mean)
        label = check_label(load_label_png(files["label"]), len(self.classes), files["label"])
        check_same_size(image, label, files["label"])
        return image, label_tensor(label)

    def validate(self):
        """Read every item once (sizes, label values); returns the number of images."""
        for i in range(len(self)):
            self[i]
        return len(self)
