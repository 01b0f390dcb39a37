"""The bfloat16 fast plan: which dtype each step computes in, and the wrapper that converts a layer's inputs.

In optimize(dtype=torch.bfloat16) the parameters stay float32 (the masters; each fast step keeps
its own converted copy) and the activations are bfloat16:
- the convolution steps (FastConv: oneDNN accumulates bfloat16 products in float32 and rounds
  each output once) and the fused upsampling steps (the fused op widens to float32 inside) take
  their input in bfloat16, converting a float32 one (the net's input) on the way in;
- layers that only move or compare values (pooling, crop, dropout, ReLU, split, flatten, and the
  multi-input eltwise and concat with their inputs brought to one dtype) run on what they get;
- every other layer (scale, inner product, softmax, the losses, ...) runs in float32 on
  widened inputs: its arithmetic and parameters are the plain path's;
- a convolution or fused step whose tops are net outputs, or are read only by float32 layers,
  computes in float32 from its bfloat16 input: the scores come back float32, rounded only
  where the activations are.
"""
import torch
from torch import nn

from .. import layers as L
from .. import torch_private

DTYPES = (torch.float32, torch.bfloat16)
# Layers whose arithmetic is exact in any dtype (no sums of products): they run on bfloat16 as given.
PASS_THROUGH = (L.ReLU, L.Dropout, L.Split, L.Silence, L.Flatten, L.Pooling, L.Crop)
# The same, but several inputs that must share a dtype.
MULTI_INPUT = (L.Eltwise, L.Concat)


def native_bf16():
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU (AVX512-BF16, AMX, AVX-NE-CONVERT)."""
    return torch_private.onednn_bf16_supported()


def cast_inputs(xs, dtype):
    """xs with every floating tensor of another dtype converted to dtype (labels and the like untouched)."""
    return [x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() and x.dtype != dtype else x for x in xs]


class Cast(nn.Module):
    """Runs a layer's module with its floating inputs converted to `dtype`."""

    def __init__(self, module, dtype):
        super().__init__()
        self.inner = [module]  # a list: the layer stays registered on the net only
        self.dtype = dtype

    @property
    def layer(self):
        return self.inner[0]

    def extra_repr(self):
        return f"'{self.layer.layer_name}', {str(self.dtype).replace('torch.', '')}"

    def forward(self, *xs):
        return self.layer(*cast_inputs(xs, self.dtype))


def computes_float32(steps, outputs, is_compute):
    """{step index} of the compute steps (is_compute(step)) whose every top is a net output or is
    read only by steps that run in float32 (not compute, not pass-through)."""
    readers = {}
    for i, s in enumerate(steps):
        for b in s.bottom:
            readers.setdefault(b, []).append(i)

    def float32_layer(j):
        m = steps[j].module
        return not is_compute(steps[j]) and not isinstance(m, PASS_THROUGH + MULTI_INPUT)

    out = set()
    for i, s in enumerate(steps):
        if not is_compute(s):
            continue
        later = [[j for j in readers.get(t, []) if j > i] for t in s.top]
        if all(t in outputs or (r and all(float32_layer(j) for j in r)) for t, r in zip(s.top, later)):
            out.add(i)
    return out
