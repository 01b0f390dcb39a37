"""The paper's four metrics over a confusion histogram, as the reference release's score.py computes them.

``hist[i, j]`` counts pixels of ground-truth class i predicted as j. Pixels whose label lies outside
[0, n) (void = 255) are not counted. Classes absent from both label and prediction get NaN per-class
scores and are left out of the means, as the reference's ``np.nanmean`` leaves them out.
"""
import numpy as np
import torch

__all__ = ["fast_hist", "scores", "Accumulator", "METRICS"]

METRICS = ("pixel_acc", "mean_acc", "mean_iu", "fwavacc")


def fast_hist(label, pred, n):
    """n×n int64 confusion histogram, rows = ground truth; labels outside [0, n) are ignored.

    numpy arrays or torch tensors (a tensor is counted on its own device, with torch.bincount).
    """
    if tuple(label.shape) != tuple(pred.shape):
        raise ValueError(f"label shape {tuple(label.shape)} and prediction shape {tuple(pred.shape)} differ")
    if isinstance(label, torch.Tensor) or isinstance(pred, torch.Tensor):
        device = label.device if isinstance(label, torch.Tensor) else pred.device
        a = torch.as_tensor(label, device=device).reshape(-1).long()
        b = torch.as_tensor(pred, device=device).reshape(-1).long()
        k = (a >= 0) & (a < n)
        a, b = a[k], b[k]
        if b.numel() and (int(b.min()) < 0 or int(b.max()) >= n):
            raise ValueError(f"prediction values must lie in [0, {n}), got [{int(b.min())}, {int(b.max())}]")
        return torch.bincount(n * a + b, minlength=n * n).reshape(n, n).cpu().numpy().astype(np.int64)
    a = np.asarray(label).reshape(-1).astype(np.int64)
    b = np.asarray(pred).reshape(-1).astype(np.int64)
    k = (a >= 0) & (a < n)
    a, b = a[k], b[k]
    if b.size and (b.min() < 0 or b.max() >= n):
        raise ValueError(f"prediction values must lie in [0, {n}), got [{b.min()}, {b.max()}]")
    return np.bincount(n * a + b, minlength=n * n).reshape(n, n).astype(np.int64)


def scores(hist, exclude=()):
    """Pixel accuracy, mean accuracy, mean IU, frequency-weighted IU, and per-class accuracy and IU.

    ``exclude``: class indices left out of the means (the paper leaves SIFT Flow's three classes absent
    from its test set out); the default reproduces score.py exactly. Means over no class are NaN.
    """
    hist = np.asarray(hist, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1]:
        raise ValueError(f"hist must be square, got shape {hist.shape}")
    keep = np.ones(hist.shape[0], dtype=bool)
    keep[list(exclude)] = False
    diag, gt, pr, total = np.diag(hist), hist.sum(1), hist.sum(0), hist.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = diag / gt
        iu = diag / (gt + pr - diag)
        freq = gt / total
    sel = keep & (freq > 0)
    return {
        "pixel_acc": float(diag.sum() / total) if total else float("nan"),
        "mean_acc": _nanmean(acc[keep]),
        "mean_iu": _nanmean(iu[keep]),
        "fwavacc": float((freq[sel] * iu[sel]).sum()) if total else float("nan"),
        "acc": acc,
        "iu": iu,
    }


def _nanmean(x):
    """np.nanmean without its warning when every entry is NaN."""
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


class Accumulator:
    """Sums confusion histograms image by image, so a dataset is scored without keeping predictions."""

    def __init__(self, num_classes):
        self.n = int(num_classes)
        self.hist = np.zeros((self.n, self.n), dtype=np.int64)
        self.count = 0

    def update(self, label, pred):
        """Add one image (or any batch of matching shape); numpy arrays or torch tensors."""
        self.hist += fast_hist(label, pred, self.n)
        self.count += 1
        return self

    def scores(self, exclude=()):
        return scores(self.hist, exclude)

    def state_dict(self):
        """JSON-ready state, for resuming an interrupted evaluation."""
        return {"num_classes": self.n, "count": self.count, "hist": self.hist.tolist()}

    def load_state_dict(self, state):
        hist = np.asarray(state["hist"], dtype=np.int64)
        if hist.shape != (self.n, self.n):
            raise ValueError(f"saved histogram has shape {hist.shape}, expected {(self.n, self.n)}")
        self.hist, self.count = hist, int(state["count"])
        return self
