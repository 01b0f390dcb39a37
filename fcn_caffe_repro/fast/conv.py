"""FastConv: a Convolution and the in-place ReLU after it as one step, on the path chosen at optimize()."""
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from . import gemm, onednn
from ..errors import NetError
from ..torch_private import version_counter

IMPLS = ("mkldnn", "gemm", "torch")


def auto_impl(conv):
    """GEMM for fc-like layers (kernel >= 5x5 over >= 4096 inputs), where oneDNN's direct kernel
    runs well below the GEMM rate (VGG's fc6: a 7x7x512 reduction), else oneDNN."""
    kh, kw = conv.kernel
    if conv.group == 1 and conv.dilation == (1, 1) and kh * kw >= 25 and conv.channels * kh * kw >= 4096:
        return "gemm"
    return "mkldnn"


class FastConv(nn.Module):
    """impl "mkldnn" (onednn.py, prepacked weight), "gemm" (gemm.py) or "torch" (F.conv2d); the
    ReLU is oneDNN's post-op or an in-place op on the output. While autograd records, every impl
    runs F.conv2d and the ReLU (path "autograd"), or raises with train="error"."""

    def __init__(self, conv, slope, impl, memory_format, train, pool=None):
        super().__init__()
        self.conv = [conv]  # a list: the layer stays registered on the net only
        self.slope = slope  # None: no ReLU; 0.0: ReLU; else Caffe's negative_slope
        self.impl, self.memory_format, self.train_mode = impl, memory_format, train
        self.pool = pool  # BufferPool shared by the plan's oneDNN steps, or None
        self.calls = Counter()
        self.repacks = 0
        self._packed, self._key = None, None

    @property
    def layer(self):
        return self.conv[0]

    def extra_repr(self):
        relu = "" if self.slope is None else f", relu(slope={self.slope})"
        return f"'{self.layer.layer_name}', {self.impl}{relu}"

    def forward(self, x):
        c = self.layer
        c._check_input(x)
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in c.blobs())):
            if self.train_mode == "error":
                raise NetError("the fast mode is inference-only (optimize(train='error')) and autograd is "
                               "recording; run under torch.no_grad() or optimize(train='autograd')",
                               layer=c.layer_name)
            self.calls["autograd"] += 1  # the plain layers' arithmetic and layout
            return (self._relu(F.conv2d(x, c.weight, c.bias, c.stride, c.pad, c.dilation, c.group)),)
        self.calls[self.impl] += 1
        if self.impl == "mkldnn":
            onednn.check_input(c, x)
            return (onednn.conv2d(c, self._layout(x), self.packed_weight(), self.slope, self.pool,
                                  self.memory_format == "channels_last"),)
        if self.impl == "gemm":
            return (self._relu(gemm.conv2d(c, x)),)
        return (self._relu(F.conv2d(self._layout(x), c.weight, c.bias, c.stride, c.pad, c.dilation, c.group)),)

    def _layout(self, x):
        fmt = torch.channels_last if self.memory_format == "channels_last" else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def _relu(self, y):
        if self.slope is None:
            return y
        return torch.relu_(y) if self.slope == 0 else F.leaky_relu_(y, self.slope)

    # --- the prepacked weight of the oneDNN path ---------------------------------------------------
    def _weight_key(self):
        w = self.layer.weight
        return (w.data_ptr(), version_counter(w), w.dtype, w.device, tuple(w.shape))

    def packed_weight(self):
        """oneDNN's blocked copy of the weight, re-packed whenever the parameter has changed."""
        if self._key != self._weight_key():
            self.pack()
        return self._packed

    def pack(self):
        self._packed = onednn.pack_weight(self.layer)
        self._key = self._weight_key()
        self.repacks += 1
