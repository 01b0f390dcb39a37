"""FastConv: a Convolution and the in-place ReLU after it as one step, on the path chosen at optimize()."""
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from . import gemm, onednn, winograd
from .precision import cast_inputs
from ..errors import NetError
from ..torch_private import version_counter

IMPLS = ("mkldnn", "gemm", "torch")


def auto_impl(conv, winograd_ok=True):
    """GEMM for fc-like layers (kernel >= 5x5 over >= 4096 inputs), where oneDNN's direct kernel
    runs well below the GEMM rate (VGG's fc6: a 7x7x512 reduction); Winograd for wide 3x3 layers
    (winograd.worth_it) where `winograd_ok` (the float32 plan, channels_last); else oneDNN."""
    kh, kw = conv.kernel
    if conv.group == 1 and conv.dilation == (1, 1) and kh * kw >= 25 and conv.channels * kh * kw >= 4096:
        return "gemm"
    if winograd_ok and winograd.worth_it(conv):
        return "winograd"
    return "mkldnn"


class FastConv(nn.Module):
    """impl "mkldnn" (onednn.py, prepacked weight), "gemm" (gemm.py), "torch" (F.conv2d) or
    "winograd" (winograd.py, transformed weight; chosen by auto_impl only); the ReLU is oneDNN's
    post-op, the Winograd output transform's, or an in-place op on the output. While autograd
    records, every impl runs F.conv2d and the ReLU (path "autograd"), or raises with train="error".

    dtype None: the input and parameters as they are (the float32 plan). A dtype (the bfloat16
    plan, precision.py): the input converted to it, the weight and bias converted once (re-converted
    when they change), inference only."""

    def __init__(self, conv, slope, impl, memory_format, train, pool=None, dtype=None, workspace=None):
        super().__init__()
        self.conv = [conv]  # a list: the layer stays registered on the net only
        self.slope = slope  # None: no ReLU; 0.0: ReLU; else Caffe's negative_slope
        self.impl, self.memory_format, self.train_mode = impl, memory_format, train
        self.dtype = dtype
        self.pool = pool  # BufferPool shared by the plan's oneDNN steps, or None
        self.workspace = workspace  # winograd.Workspace shared by the plan's Winograd steps, or None
        self.calls = Counter()
        self.repacks = 0
        self._packed, self._key = None, None

    @property
    def layer(self):
        return self.conv[0]

    def extra_repr(self):
        relu = "" if self.slope is None else f", relu(slope={self.slope})"
        dtype = "" if self.dtype is None else f", {str(self.dtype).replace('torch.', '')}"
        return f"'{self.layer.layer_name}', {self.impl}{relu}{dtype}"

    def forward(self, x, pad=None):
        """The step on x, padded by the layer's pad or by `pad` (border.py's short maps)."""
        c = self.layer
        c._check_input(x)
        pad = c.pad if pad is None else tuple(pad)
        recording = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in c.blobs()))
        if self.dtype is not None:
            if recording:
                raise NetError(f"the {self.dtype} fast mode (optimize(dtype=...)) is inference-only and autograd "
                               f"is recording; run under torch.no_grad() or optimize() in float32",
                               layer=c.layer_name)
            (x,) = cast_inputs([x], self.dtype)
        if recording:
            if self.train_mode == "error":
                raise NetError("the fast mode is inference-only (optimize(train='error')) and autograd is "
                               "recording; run under torch.no_grad() or optimize(train='autograd')",
                               layer=c.layer_name)
            self.calls["autograd"] += 1  # the plain layers' arithmetic and layout
            return (self._relu(F.conv2d(x, c.weight, c.bias, c.stride, pad, c.dilation, c.group)),)
        self.calls[self.impl] += 1
        if self.impl == "mkldnn":
            onednn.check_input(c, x, self.dtype or torch.float32)
            w, b = self.params()
            return (onednn.conv2d(c, self._layout(x), w, b, self.slope, self.pool,
                                  self.memory_format == "channels_last", pad),)
        if self.impl == "winograd":
            winograd.check_input(c, x)
            u, b = self.params()
            y = winograd.conv2d(c, x, u, b, self.slope, pad, self.workspace)
            if y is None:  # an inf or NaN: computed directly, where Caffe's sums place them
                bias = None if c.bias is None else c.bias.detach()
                y = self._direct(x, c.weight.detach(), bias, pad)
            return (y,)
        w, b = self.params()
        if self.impl == "gemm" and pad == c.pad:
            return (self._relu(gemm.conv2d(c, x, w, b)),)
        return (self._direct(x, w, b, pad),)

    def _direct(self, x, w, b, pad):
        """F.conv2d in the step's layout, then its activation."""
        c = self.layer
        return self._relu(F.conv2d(self._layout(x), w, b, c.stride, pad, c.dilation, c.group))

    def _layout(self, x):
        fmt = torch.channels_last if self.memory_format == "channels_last" else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def _relu(self, y):
        if self.slope is None:
            return y
        return torch.relu_(y) if self.slope == 0 else F.leaky_relu_(y, self.slope)

    # --- the weights the step computes with: prepacked (oneDNN) or converted (a dtype) -------------
    def _weight_key(self):
        key = ()
        for p in (self.layer.weight, self.layer.bias):
            key += (None,) if p is None else (p.data_ptr(), version_counter(p), p.dtype, p.device, tuple(p.shape))
        return key

    def has_copies(self):
        """Whether the step computes with copies of the parameters (packed or converted), not them."""
        converted = self.dtype is not None and self.dtype != self.layer.weight.dtype
        return self.impl in ("mkldnn", "winograd") or converted

    def params(self):
        """(weight, bias) in the step's form: oneDNN's blocked weight and the bias for "mkldnn", the
        Winograd-domain weight and the bias for "winograd", the parameters in the step's dtype
        otherwise; copies are re-made whenever a parameter changed."""
        if not self.has_copies():
            b = self.layer.bias
            return self.layer.weight.detach(), (None if b is None else b.detach())
        if self._key != self._weight_key():
            self.pack()
        return self._packed, self._bias

    def packed_weight(self):
        """The weight in the step's form (params()[0])."""
        return self.params()[0]

    def pack(self):
        """Make the copies now (oneDNN's blocked or the Winograd weight, the converted weight and bias)."""
        c = self.layer
        dtype = self.dtype or c.weight.dtype
        if self.impl == "mkldnn":
            self._packed = onednn.pack_weight(c, self.dtype or torch.float32)
        elif self.impl == "winograd":
            self._packed = winograd.transform_weight(c)
        else:
            self._packed = c.weight.detach().to(dtype)
        self._bias = None if c.bias is None else c.bias.detach().to(dtype)
        self._key = self._weight_key()
        self.repacks += 1
