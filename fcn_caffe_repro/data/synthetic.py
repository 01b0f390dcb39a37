"""The embedded world of the main job: images generated on the fly from a seed, no download.

Five shape families on low-saturation textured backgrounds, each with a hue of its own: three
large (discs, boxes, spiky blobs: 35-90 px across at 128×128, found at every stride) and two thin
(bars and rings, 8-12 px wide: narrower than a stride-16 or stride-32 output cell, so only FCN-8s
can place them). The best a stride-s score map can do (the true labels averaged over each s×s
cell, upsampled bilinearly) is about 50 / 70 / 90 mean IU at strides 32 / 16 / 8: the paper's
point, in miniature. Sizes are in pixels at 128×128 and scale with the shorter side.

`Synthetic` gives segmentation pairs; `SyntheticShapes` gives classification pairs from the same
world (one object per image, centred, at the 224×224 of an ILSVRC classifier): the stand-in for
ImageNet.
Image (seed, index) is the same on every call.
"""
import colorsys

import numpy as np
import torch

from .common import SegDataset, caffe_input, label_tensor
from .voc import VOC_MEAN

FAMILIES = ("disc", "box", "blob", "bar", "ring")
THIN = ("bar", "ring")
REFERENCE_SIDE = 128.0  # the shorter side at which the sizes below are given
ANYWHERE = (0.1, 0.9)  # the range of an object's centre, as fractions of each side


def _segment(yy, xx, y0, x0, y1, x1, width):
    """Pixels within width/2 of the segment (y0, x0)-(y1, x1)."""
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0.0, 1.0)
    return (yy - y0 - t * dy) ** 2 + (xx - x0 - t * dx) ** 2 <= (width / 2) ** 2


def _rotated(yy, xx, cy, cx, angle):
    """Coordinates (u, v) of every pixel in a frame centred at (cy, cx) and turned by angle."""
    c, s = np.cos(angle), np.sin(angle)
    return (yy - cy) * c - (xx - cx) * s, (yy - cy) * s + (xx - cx) * c


def shape_mask(family, rng, yy, xx, scale=1.0, centre=ANYWHERE):
    """Boolean mask of one object of a family; `scale` multiplies the sizes given for 128 px, the
    centre lies in the `centre` range of each side (fractions)."""
    h, w = yy.shape
    cy, cx = rng.uniform(*centre) * h, rng.uniform(*centre) * w
    if family == "disc":
        u, v = _rotated(yy, xx, cy, cx, rng.uniform(0, np.pi))
        a, b = rng.uniform(22, 40, 2) * scale
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if family == "box":
        u, v = _rotated(yy, xx, cy, cx, rng.uniform(0, np.pi))
        a, b = rng.uniform(18, 32, 2) * scale
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    if family == "blob":
        radius, k, phase = rng.uniform(22, 36) * scale, rng.integers(3, 7), rng.uniform(0, 2 * np.pi)
        theta = np.arctan2(yy - cy, xx - cx)
        return np.hypot(yy - cy, xx - cx) <= radius * (1 + 0.3 * np.sin(k * theta + phase))
    if family == "bar":
        a, half, width = rng.uniform(0, np.pi), rng.uniform(30, 55) * scale, rng.uniform(8, 12) * scale
        dy, dx = half * np.sin(a), half * np.cos(a)
        return _segment(yy, xx, cy - dy, cx - dx, cy + dy, cx + dx, width)
    if family == "ring":
        radius, thick = rng.uniform(14, 26) * scale, rng.uniform(8, 11) * scale
        return np.abs(np.hypot(yy - cy, xx - cx) - radius) <= thick / 2
    raise ValueError(f"unknown shape family '{family}'")


def _interp_matrix(n, k):
    """n×k matrix that linearly interpolates k control points across n pixels."""
    pos = np.linspace(0, k - 1, n)
    lo = np.minimum(pos.astype(int), k - 2)
    m = np.zeros((n, k), np.float32)
    m[np.arange(n), lo] = 1 - (pos - lo)
    m[np.arange(n), lo + 1] = pos - lo
    return m


class _World:
    """Backgrounds and coloured objects of the world at one image size."""

    def __init__(self, size, num_families, scale=None):
        """`scale` multiplies the object sizes given for 128 px; None: the shorter side / 128."""
        self.size = (int(size), int(size)) if np.isscalar(size) else tuple(int(v) for v in size)
        if min(self.size) < 16:
            raise ValueError(f"size must be at least 16 pixels, got {self.size}")
        h, w = self.size
        self.scale = min(self.size) / REFERENCE_SIDE if scale is None else float(scale)
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.blot = (_interp_matrix(h, 5), _interp_matrix(w, 5))
        self.hues = [k / num_families for k in range(num_families)]

    def background(self, rng):
        """Low-saturation texture: a tinted gray, two stripe gratings, smooth blotches."""
        base = rng.uniform(70, 190) + rng.uniform(-15, 15, 3)
        lum = np.zeros(self.size, np.float32)
        for _ in range(2):
            a, period = rng.uniform(0, np.pi), rng.uniform(4, 20)
            lum += rng.uniform(5, 25) * np.sin(2 * np.pi * (self.yy * np.sin(a) + self.xx * np.cos(a)) / period
                                               + rng.uniform(0, 2 * np.pi))
        my, mx = self.blot
        lum += my @ rng.uniform(-30, 30, (5, 5)).astype(np.float32) @ mx.T
        return base.astype(np.float32)[None, None, :] + lum[:, :, None]

    def paint(self, img, rng, k, centre=ANYWHERE):
        """Draw one object of family index k (0-based) into img; returns its mask."""
        mask = shape_mask(FAMILIES[k % len(FAMILIES)], rng, self.yy, self.xx, self.scale, centre)
        hue = (self.hues[k] + rng.uniform(-0.02, 0.02)) % 1.0
        img[mask] = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.55, 1.0))) * 255
        return mask

    @staticmethod
    def finish(img, rng):
        img += rng.normal(0, 5.0, img.shape).astype(np.float32)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)


class _Ids:
    """The ids "<prefix>-<seed>-<index>" of n generated images, made on demand (n may be huge)."""

    def __init__(self, prefix, n):
        self.prefix, self.n = prefix, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self.n))]
        return f"{self.prefix}-{_check_index(i, self.n):06d}"


def _class_names(num_families):
    return [FAMILIES[k % len(FAMILIES)] + (str(k // len(FAMILIES) + 1) if k >= len(FAMILIES) else "")
            for k in range(num_families)]


def _check_index(i, n):
    if not -n <= int(i) < n:
        raise IndexError(f"index {i} out of range for {n} images")
    return int(i) % n


class Synthetic(SegDataset):
    """``ds[i] -> (image, label)``: float32 3×H×W BGR minus ``mean``, uint8 H×W in [0, num_classes).

    ``seed`` and the index determine each image; ``size`` is an int or (height, width);
    ``num_classes`` counts the background (class 0), so at least 2. ``keep``: hold each generated
    image in memory (a held-out set scored again and again: generating one takes about a quarter
    of FCN-8s's forward at width/16).
    """

    def __init__(self, seed=0, n=1000, size=128, num_classes=6, mean=VOC_MEAN, objects=(2, 5), keep=False):
        if num_classes < 2 or num_classes > 255:
            raise ValueError(f"num_classes must lie in [2, 255], got {num_classes}")
        self.seed, self.n, self.mean, self.objects = int(seed), int(n), tuple(mean), tuple(objects)
        self._kept = {} if keep else None
        self.world = _World(size, num_classes - 1)
        self.size = self.world.size
        super().__init__(_Ids(f"synthetic-{self.seed}", self.n),
                         {"label": ["background"] + _class_names(num_classes - 1)})

    def generate(self, i):
        """uint8 H×W×3 RGB image and uint8 H×W label of image i."""
        rng = np.random.default_rng([self.seed, _check_index(i, self.n)])
        img = self.world.background(rng)
        label = np.zeros(self.size, np.uint8)
        for _ in range(rng.integers(self.objects[0], self.objects[1] + 1)):
            k = int(rng.integers(0, self.num_classes - 1))
            label[self.world.paint(img, rng, k)] = k + 1
        return self.world.finish(img, rng), label

    def __getitem__(self, i):
        if self._kept is None:
            return self._item(i)
        i = _check_index(i, self.n)
        if i not in self._kept:
            self._kept[i] = self._item(i)
        return tuple(t.clone() for t in self._kept[i])

    def _item(self, i):
        rgb, label = self.generate(i)
        return caffe_input(rgb, self.mean), label_tensor(label)

    def rgb(self, i):
        return self.generate(i)[0]


class SyntheticShapes(SegDataset):
    """``ds[i] -> (image, class)``: one object near the centre of a textured background, the class
    being its family (0-based); the classification task a stand-in ILSVRC classifier learns.

    Object-centric, as ILSVRC's photos are: the object's centre lies in the `centre` range of each
    side (default the middle fifth), so that the classifier's fc6 learns what lies at the centre
    of its 224-pixel window, which is what lets its convolutionalised fc7 place objects in FCN-32s.
    Objects have the pixel sizes of the 128-pixel segmentation world (`scale` 1), whatever the
    image size."""

    def __init__(self, seed=0, n=1000, size=224, num_classes=5, mean=VOC_MEAN, centre=(0.4, 0.6), scale=1.0):
        if num_classes < 2 or num_classes > 255:
            raise ValueError(f"num_classes must lie in [2, 255], got {num_classes}")
        self.seed, self.n, self.mean, self.centre = int(seed), int(n), tuple(mean), tuple(centre)
        self.world = _World(size, num_classes, scale)
        self.size = self.world.size
        super().__init__(_Ids(f"shapes-{self.seed}", self.n), {"label": _class_names(num_classes)})

    def generate(self, i):
        """uint8 H×W×3 RGB image and the class index of image i."""
        rng = np.random.default_rng([self.seed, _check_index(i, self.n)])
        img = self.world.background(rng)
        k = int(rng.integers(0, self.num_classes))
        self.world.paint(img, rng, k, self.centre)
        return self.world.finish(img, rng), k

    def __getitem__(self, i):
        rgb, k = self.generate(i)
        return caffe_input(rgb, self.mean), torch.tensor(k, dtype=torch.uint8)

    def rgb(self, i):
        return self.generate(i)[0]
