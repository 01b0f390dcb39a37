"""The fusion pass: FCN's upsampling paths through one call of ops.deconv_crop_sum.

Two patterns of a CaffeNet's steps are rewritten, parameters untouched:
  skip:   u = Deconvolution(x); s_c = Crop(s, u); y = Eltwise SUM(u, s_c)   ->  y = fused(x, s)
  final:  u = Deconvolution(x); y = Crop(u, ref)                          ->  y = fused(x, ref)
when the deconvolution has no bias, pad or dilation, the crop is spatial (axis 2), the sum has
unit coefficients, and the intermediate blobs have no other reader. Each deconvolution's weights
are checked for being channel-diagonal whenever they change (the bilinear kernels of
surgery.interp are); diagonal ones run depthwise (groups = C) unless a gradient of the full
C x C weight is wanted, any other as given. The pass is fuse(net); fused_plan rewrites a step list.
"""
import torch
from torch import nn

from . import layers as L
from . import ops
from .errors import NetError
from .plan import Step, layer_steps, readers_of
from .torch_private import version_counter


class FusedDeconvCropSum(nn.Module):
    """Runs one fused upsampling step; `deconv` stays the registered (parameter-owning) layer."""

    def __init__(self, deconv, crop_offsets, with_skip, impl, dtype=None):
        super().__init__()
        self.deconv = [deconv]  # a list, so the layer is not registered twice
        self.offsets = tuple(crop_offsets)
        self.with_skip, self.impl = with_skip, impl
        # None: run on the inputs and weight as they are; a dtype (the fast mode's bfloat16 plan):
        # inputs converted to it, the weight converted once (again when it changes), inference only
        self.dtype = dtype
        self.forget_weights()

    def forget_weights(self):
        """Drop the cached diagonality check and converted weight (rebuilt at the next forward)."""
        self._cache_key, self._cache, self._converted = None, None, {}

    def weight_and_groups(self):
        """The weight to run and its groups: the diagonal as C x 1 x k x k when exactly diagonal."""
        d = self.deconv[0]
        w = d.weight
        key = (version_counter(w), w.data_ptr(), w.dtype, w.device, w.requires_grad)
        if key != self._cache_key or key[0] is None:  # no version counter: no cache
            self._cache_key, self._cache, self._converted = key, d.is_diagonal(), {}
        # depthwise only when no gradient for the full C x C weight is wanted (lr_mult 0, or no_grad)
        depthwise = self._cache and not (w.requires_grad and torch.is_grad_enabled())
        if self.dtype is not None and self.dtype != w.dtype:
            if depthwise not in self._converted:
                run, groups = self._select(w, depthwise, d.group)
                self._converted[depthwise] = (run.detach().to(self.dtype), groups)
            return self._converted[depthwise]
        return self._select(w, depthwise, d.group)

    @staticmethod
    def _select(w, depthwise, group):
        if depthwise:
            idx = torch.arange(w.shape[0], device=w.device)
            return w[idx, idx].unsqueeze(1), w.shape[0]
        return w, group

    @property
    def is_depthwise(self):
        """Whether an inference forward runs this step depthwise (exactly diagonal weights)."""
        with torch.no_grad():
            return self.weight_and_groups()[1] != self.deconv[0].group

    def forward(self, x, other):
        d = self.deconv[0]
        d._check_input(x)
        if self.dtype is not None:
            if torch.is_grad_enabled() and (x.requires_grad or d.weight.requires_grad):
                raise NetError(f"the {self.dtype} fast mode (optimize(dtype=...)) is inference-only and autograd "
                               f"is recording; run under torch.no_grad() or optimize() in float32",
                               layer=d.layer_name)
            x = x.to(self.dtype)
            if self.with_skip:
                other = other.to(self.dtype)
        w, groups = self.weight_and_groups()
        if self.with_skip:
            out = ops.deconv_crop_sum(x, w, d.stride, (0, 0), None, other, self.offsets, groups, impl=self.impl)
        else:
            out = ops.deconv_crop_sum(x, w, d.stride, self.offsets, tuple(other.shape[2:]), None, (0, 0),
                                      groups, impl=self.impl)
        return (out,)


def _fusable_deconv(m):
    return (isinstance(m, L.Deconvolution) and m.bias is None and m.pad == (0, 0) and m.dilation == (1, 1))


def _spatial_crop(m):
    return isinstance(m, L.Crop) and m.axis == 2 and len(m.offsets) == 2


def fuse(net, enabled=True, impl="ext"):
    """Install the layer plan of `net` with its upsampling paths fused (enabled=False: unfused);
    returns the net. Parameters and results are unchanged; the fused-away blobs are not produced."""
    steps = layer_steps(net)
    net.set_plan(fused_plan(steps, impl) if enabled else steps)
    return net


def fused_plan(steps, impl="ext"):
    """The steps with every fusable upsampling path replaced by one fused step."""
    steps = list(steps)
    i = 0
    while i < len(steps):
        d = steps[i]
        if not (_fusable_deconv(d.module) and len(d.bottom) == 1 and len(d.top) == 1) or d.top[0] == d.bottom[0]:
            i += 1
            continue
        u = d.top[0]
        readers = readers_of(steps, u, i + 1)
        replacement = _match_skip(steps, readers, d, impl) or _match_final(steps, readers, d, impl)
        if replacement is None:
            i += 1
            continue
        where, remove, other, top, module = replacement
        steps[where] = Step(f"{d.name}+{steps[where].name}", [d.bottom[0], other], [top], module)
        for j in sorted(remove, reverse=True):
            del steps[j]
        steps.pop(i)
    return steps


def _match_skip(steps, readers, d, impl):
    u = d.top[0]
    if len(readers) != 2:
        return None
    c, e = (steps[j] for j in readers)
    if not (_spatial_crop(c.module) and c.bottom[1:] == [u] and len(c.top) == 1):
        return None
    em = e.module
    s_c = c.top[0]
    if not (isinstance(em, L.Eltwise) and em.op == "SUM" and all(k == 1 for k in em.coeffs)
            and sorted(e.bottom) == sorted([u, s_c]) and len(e.top) == 1):
        return None
    if readers_of(steps, s_c, readers[0] + 1) != [readers[1]]:
        return None
    module = FusedDeconvCropSum(d.module, c.module.offsets, True, impl)
    return readers[1], [readers[0]], c.bottom[0], e.top[0], module


def _match_final(steps, readers, d, impl):
    u = d.top[0]
    if len(readers) != 1:
        return None
    c = steps[readers[0]]
    if not (_spatial_crop(c.module) and c.bottom[0] == u and len(c.bottom) == 2 and len(c.top) == 1):
        return None
    module = FusedDeconvCropSum(d.module, c.module.offsets, False, impl)
    return readers[0], [], c.bottom[1], c.top[0], module
