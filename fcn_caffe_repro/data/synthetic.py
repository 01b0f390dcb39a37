"""A segmentation task generated on the fly from a seed: the embedded default that needs no download.

Each foreground class is a shape family with its own hue (thin bars, thin rings, clusters of small
dots, crosses, spiky blobs, flags on thin poles); they lie on low-saturation textured backgrounds
(stripes, blotches, noise). Colour makes the task learnable in a few hundred steps; the thin parts
(1.5-4 px), small objects and sharp boundaries are what a stride-32 prediction cannot resolve, so
FCN-8s should beat 16s, and 16s should beat 32s. Image (seed, index) is the same on every call.
"""
import colorsys

import numpy as np

from .common import SegDataset, caffe_input, label_tensor
from .voc import VOC_MEAN

FAMILIES = ("bar", "ring", "dots", "cross", "blob", "flag")


def _segment(yy, xx, y0, x0, y1, x1, width):
    """Pixels within width/2 of the segment (y0, x0)-(y1, x1)."""
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0.0, 1.0)
    return (yy - y0 - t * dy) ** 2 + (xx - x0 - t * dx) ** 2 <= (width / 2) ** 2


def _shape(family, rng, yy, xx, s):
    """Boolean mask of one object of a family, s = the image's shorter side."""
    h, w = yy.shape
    cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    if family == "bar":
        mask = np.zeros(yy.shape, bool)
        for _ in range(rng.integers(1, 3)):
            a, half = rng.uniform(0, np.pi), rng.uniform(0.15, 0.45) * s
            mask |= _segment(yy, xx, cy - half * np.sin(a), cx - half * np.cos(a), cy + half * np.sin(a),
                             cx + half * np.cos(a), rng.uniform(2.5, 5.0))
            cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        return mask
    r2 = (yy - cy) ** 2 + (xx - cx) ** 2
    if family == "ring":
        radius, thick = max(rng.uniform(0.08, 0.2) * s, 5.0), rng.uniform(2.5, 4.5)
        return np.abs(np.sqrt(r2) - radius) <= thick / 2
    if family == "dots":
        mask = np.zeros(yy.shape, bool)
        for _ in range(rng.integers(3, 8)):
            dy, dx = rng.normal(0, 0.08 * s, 2)
            mask |= (yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 <= rng.uniform(2.5, 5.0) ** 2
        return mask
    if family == "cross":
        a, arm, width = rng.uniform(0, np.pi / 2), rng.uniform(0.08, 0.2) * s, rng.uniform(3.0, 5.0)
        mask = np.zeros(yy.shape, bool)
        for b in (a, a + np.pi / 2):
            mask |= _segment(yy, xx, cy - arm * np.sin(b), cx - arm * np.cos(b), cy + arm * np.sin(b),
                             cx + arm * np.cos(b), width)
        return mask
    if family == "blob":
        radius, k, phase = rng.uniform(0.08, 0.18) * s, rng.integers(3, 8), rng.uniform(0, 2 * np.pi)
        theta = np.arctan2(yy - cy, xx - cx)
        return np.sqrt(r2) <= radius * (1 + 0.35 * np.sin(k * theta + phase))
    if family == "flag":
        a, half = rng.uniform(0, np.pi), rng.uniform(0.05, 0.1) * s
        u = (yy - cy) * np.cos(a) - (xx - cx) * np.sin(a)
        v = (yy - cy) * np.sin(a) + (xx - cx) * np.cos(a)
        pole, b = rng.uniform(0.2, 0.35) * s, a + rng.uniform(-0.5, 0.5)
        y0, x0 = cy + half * (np.cos(a) + np.sin(a)), cx + half * (np.cos(a) - np.sin(a))
        return (np.abs(u) <= half) & (np.abs(v) <= half) | _segment(
            yy, xx, y0, x0, y0 + pole * np.cos(b), x0 - pole * np.sin(b), rng.uniform(2.5, 4.0))
    raise ValueError(f"unknown shape family '{family}'")


def _interp_matrix(n, k):
    """n×k matrix that linearly interpolates k control points across n pixels."""
    pos = np.linspace(0, k - 1, n)
    lo = np.minimum(pos.astype(int), k - 2)
    m = np.zeros((n, k), np.float32)
    m[np.arange(n), lo] = 1 - (pos - lo)
    m[np.arange(n), lo + 1] = pos - lo
    return m


class Synthetic(SegDataset):
    """``ds[i] -> (image, label)``: float32 3×H×W BGR minus ``mean``, uint8 H×W in [0, num_classes).

    ``seed`` and the index determine each image; ``size`` is an int or (height, width);
    ``num_classes`` counts the background (class 0), so at least 2.
    """

    def __init__(self, seed=0, n=1000, size=96, num_classes=6, mean=VOC_MEAN, max_objects=8):
        if num_classes < 2 or num_classes > 255:
            raise ValueError(f"num_classes must lie in [2, 255], got {num_classes}")
        self.seed, self.n, self.mean, self.max_objects = int(seed), int(n), tuple(mean), int(max_objects)
        self.size = (int(size), int(size)) if np.isscalar(size) else tuple(int(v) for v in size)
        if min(self.size) < 16:
            raise ValueError(f"size must be at least 16 pixels, got {self.size}")
        names = ["background"] + [FAMILIES[k % len(FAMILIES)] + (str(k // len(FAMILIES) + 1) if k >= len(FAMILIES)
                                                                  else "") for k in range(num_classes - 1)]
        super().__init__([f"synthetic-{self.seed}-{i:06d}" for i in range(self.n)], {"label": names})
        h, w = self.size
        self._yy, self._xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self._blot = (_interp_matrix(h, 5), _interp_matrix(w, 5))
        self._hues = [k / (num_classes - 1) for k in range(num_classes - 1)]

    def generate(self, i):
        """uint8 H×W×3 RGB image and uint8 H×W label of image i."""
        if not -self.n <= int(i) < self.n:
            raise IndexError(f"index {i} out of range for {self.n} images")
        i = int(i) % self.n
        rng = np.random.default_rng([self.seed, i])
        img = self._background(rng)
        label = np.zeros(self.size, np.uint8)
        s = min(self.size)
        for _ in range(rng.integers(min(3, self.max_objects), self.max_objects + 1)):
            k = int(rng.integers(1, self.num_classes))
            mask = _shape(FAMILIES[(k - 1) % len(FAMILIES)], rng, self._yy, self._xx, s)
            hue = (self._hues[k - 1] + rng.uniform(-0.02, 0.02)) % 1.0
            color = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.55, 1.0))) * 255
            img[mask] = color
            label[mask] = k
        img += rng.normal(0, 5.0, img.shape).astype(np.float32)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8), label

    def _background(self, rng):
        """Low-saturation texture: a tinted gray, two stripe gratings, smooth blotches."""
        gray = rng.uniform(70, 190)
        base = gray + rng.uniform(-15, 15, 3)
        lum = np.zeros(self.size, np.float32)
        for _ in range(2):
            a, period = rng.uniform(0, np.pi), rng.uniform(4, 20)
            lum += rng.uniform(5, 25) * np.sin(2 * np.pi * (self._yy * np.sin(a) + self._xx * np.cos(a)) / period
                                               + rng.uniform(0, 2 * np.pi))
        my, mx = self._blot
        lum += my @ rng.uniform(-30, 30, (5, 5)).astype(np.float32) @ mx.T
        return base.astype(np.float32)[None, None, :] + lum[:, :, None]

    def __getitem__(self, i):
        rgb, label = self.generate(i)
        return caffe_input(rgb, self.mean), label_tensor(label)

    def rgb(self, i):
        return self.generate(i)[0]
