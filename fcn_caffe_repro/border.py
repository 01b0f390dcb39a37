"""The training pass that leaves out the rows and columns of a padded net's constant border.

FCN pads conv1_1 by 100: on a 128-pixel image 196 of conv1_1's 326 output rows see only padding
and hold the bias; conv1_2 to conv4_3 carry that border on as runs of identical rows (and
columns), between a frame the convolutions' own zero padding makes at each map's edge and the
part that sees the image. A run of identical rows stays one after a convolution or a pooling as
long as its windows lie inside it, so most of each run can be left out: the layers compute on the
shortened maps, and a map that a layer outside the trunk reads is widened back by repeating the
run's rows. The result is the same function of the weights and the image as the full computation
(the same windows over the same values), so autograd through the gathers gives the same gradient;
only the order of sums changes (a repeated row's gradients are added in the gather's backward).

Which rows are identical is decided structurally, for any weights: every row gets a signature, the
input's rows each their own and the padding one of its own, and a layer's output row the signature
of the tuple of rows its window reads. Rows with one signature hold equal values in every channel
and column. For each layer the pass shortens the runs of its input, keeping a window's reach and a
stride at each end and leaving out a multiple of the stride (so the later windows keep their
alignment), and checks that the shortened input still yields every signature of the full output;
where it would not, that layer computes on its full input. Rows and columns are planned apart.
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import layers as L
from . import train_ops
from .plan import Step, readers_of, with_frees
from .relu_pool import InPlaceReLU, ReLUMaxPool

_PAD = -1  # the signature of a padding cell


class _Signatures:
    """Interned window tuples: equal structure, equal number."""

    def __init__(self):
        self._ids = {}

    def __call__(self, key):
        return self._ids.setdefault(key, len(self._ids))


def _conv_rows(rows, pad, kernel, stride, dilation, sig):
    padded = [_PAD] * pad + list(rows) + [_PAD] * pad
    extent = dilation * (kernel - 1) + 1
    count = (len(padded) - extent) // stride + 1
    return [sig(("conv", tuple(padded[i * stride + k * dilation] for k in range(kernel)))) for i in range(count)]


def _pool_rows(rows, pad, kernel, stride, sig):
    n = len(rows)
    out = []
    for o in range(L.caffe_pool_size(n, kernel, stride, pad)):
        start = o * stride - pad
        end = min(start + kernel, n + pad)
        out.append(sig(("pool", tuple(rows[j] if 0 <= j < n else _PAD for j in range(start, end)))))
    return out


def _shortened(rows, keep, stride):
    """Indices of `rows` with each run of equal signatures longer than 2 * keep cut in its middle
    by a multiple of `stride`."""
    kept, i, n = [], 0, len(rows)
    while i < n:
        j = i
        while j < n and rows[j] == rows[i]:
            j += 1
        cut = (j - i - 2 * keep) // stride * stride
        if cut > 0:
            kept += list(range(i, i + keep)) + list(range(i + keep + cut, j))
        else:
            kept += list(range(i, j))
        i = j
    return kept


class _AxisOp(NamedTuple):
    """One layer on one axis: which rows of its bottom's short map it reads (None: all, in order)
    and its padding on the short map."""
    gather: object
    pad: int


def _gather(layout, wanted):
    """Indices into `layout` giving the signatures `wanted`, or None when that is all of it."""
    if list(wanted) == list(layout):
        return None
    first = {}
    for i, s in enumerate(layout):
        first.setdefault(s, i)
    return [first[s] for s in wanted]


def _plan_window(layout, full, window, sig):
    """(_AxisOp, the top's short layout, its full layout) for a convolution (kind "conv") or
    pooling over an axis whose full rows are `full` and short rows `layout`."""
    kind, kernel, stride, pad, dilation = window
    if kind == "conv":
        padded = [_PAD] * pad + list(full) + [_PAD] * pad
        kept = _shortened(padded, dilation * (kernel - 1) + 1 + stride, stride)
        lead = next(i for i, k in enumerate(kept) if k >= pad) if pad else 0
        trail = sum(1 for k in kept if k >= pad + len(full))
        top_full = _conv_rows(full, pad, kernel, stride, dilation, sig)
        if lead == trail:
            rows = [padded[k] for k in kept[lead:len(kept) - trail]]
            top = _conv_rows(rows, lead, kernel, stride, dilation, sig)
            if set(top_full) <= set(top):
                return _AxisOp(_gather(layout, rows), lead), top, top_full
    else:
        kept = _shortened(full, kernel + stride, stride)
        top_full = _pool_rows(full, pad, kernel, stride, sig)
        rows = [full[k] for k in kept]
        top = _pool_rows(rows, pad, kernel, stride, sig)
        if set(top_full) <= set(top):
            return _AxisOp(_gather(layout, rows), pad), top, top_full
    # the full input: every signature of the full map is in its short one
    return _AxisOp(_gather(layout, full), pad), top_full, top_full


def _windows(module, axis):
    """("conv"|"pool", kernel, stride, pad, dilation) of a layer on one axis."""
    if isinstance(module, L.Convolution):
        return ("conv", module.kernel[axis], module.stride[axis], module.pad[axis], module.dilation[axis])
    return ("pool", module.kernel[axis], module.stride[axis], module.pad[axis], 1)


def _layer_of(step):
    """The layer that reads a step's bottom through a window (a Convolution or a pooling), "relu"
    for a pointwise ReLU step, or None when the step is not part of a trunk."""
    m = step.module
    if type(m) is L.Convolution:
        return m
    if type(m) is L.Pooling and not m.global_pooling and m.method in ("MAX", "AVE"):
        return m
    if isinstance(m, ReLUMaxPool):
        return m.layers[1]
    if isinstance(m, InPlaceReLU) or (type(m) is L.ReLU and len(step.bottom) == 1):
        return "relu"
    return None


class Trunk(nn.Module):
    """The net's first steps (convolutions, ReLUs, poolings) run on short maps; the tops read by
    later steps come out full. Planned once per input size."""

    def __init__(self, steps, outputs):
        super().__init__()
        self.steps = steps  # a list: the layers stay registered on the net only
        self.outputs = list(outputs)
        self._frees = [frees for _, frees in with_frees(steps, set(outputs))]
        self._plans = {}

    def plan(self, size):
        """For an input of `size` (rows, columns): per step, None or (the gather of its bottom's
        short map as (row, column) indices or None, its padding on the short map); per output,
        the gather that widens it back (or None)."""
        if size not in self._plans:
            ops = [[None, None] for _ in self.steps]
            ends = {b: [None, None] for b in self.outputs}
            for axis in (0, 1):
                sig = _Signatures()
                start = [sig(("in", i)) for i in range(size[axis])]
                short = {self.steps[0].bottom[0]: start}
                full = {self.steps[0].bottom[0]: start}
                for i, step in enumerate(self.steps):
                    layer = _layer_of(step)
                    b = step.bottom[0]
                    if layer == "relu":
                        short[step.top[0]], full[step.top[0]] = short[b], full[b]
                        continue
                    op, top_short, top_full = _plan_window(short[b], full[b], _windows(layer, axis), sig)
                    ops[i][axis] = (op, len(short[b]))
                    if isinstance(step.module, ReLUMaxPool):
                        # the ReLU's top in the pooling's input layout
                        relu_rows = [short[b][k] for k in op.gather] if op.gather is not None else short[b]
                        short[step.top[0]], full[step.top[0]] = relu_rows, full[b]
                    short[step.top[-1]], full[step.top[-1]] = top_short, top_full
                for blob in self.outputs:
                    ends[blob][axis] = (_AxisOp(_gather(short[blob], full[blob]), 0), len(short[blob]))
            steps = [None if rows is None else (_gathers(rows, cols), (rows[0].pad, cols[0].pad)) for rows, cols in ops]
            self._plans[size] = (steps, {b: _gathers(*ends[b]) for b in self.outputs})
        return self._plans[size]

    def forward(self, x):
        ops, ends = self.plan(tuple(x.shape[2:]))
        blobs = {self.steps[0].bottom[0]: x}
        for step, op, frees in zip(self.steps, ops, self._frees):
            x = blobs[step.bottom[0]]
            module = step.module
            if op is not None:
                x = _select(x, op[0])
            if op is not None and type(module) is L.Convolution and op[1] != tuple(module.pad):
                tops = (_conv(module, x, op[1]),)
            else:
                tops = module(x)
            for name, value in zip(step.top, tops):
                blobs[name] = value
            for name in frees:
                del blobs[name]
        return tuple(_select(blobs[b], ends[b]) for b in self.outputs)


def _gathers(rows, cols):
    """(row indices, column indices) of a gather (None: that axis whole), or None when it takes
    the whole map in order."""
    (row_op, _), (col_op, _) = rows, cols
    if row_op.gather is None and col_op.gather is None:
        return None
    return tuple(None if op.gather is None else torch.tensor(op.gather) for op in (row_op, col_op))


def _select(x, gather):
    """The gathered map (a _gathers result; None: x itself) in x's memory format, gathered on the
    (N, H, W, C) view: whole rows of pixels, then pixels, so that each index moves a block (the
    backward adds blocks back; per-element index adds run an order of magnitude slower)."""
    if gather is None:
        return x
    rows, cols = gather
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    y = x.permute(0, 2, 3, 1) if channels_last else x
    row_dim, col_dim = (1, 2) if channels_last else (2, 3)
    if rows is not None:
        y = y.index_select(row_dim, rows.to(x.device))
    if cols is not None:
        y = y.index_select(col_dim, cols.to(x.device))
    return y.permute(0, 3, 1, 2) if channels_last else y


def _conv(module, x, pad):
    """The Convolution layer on a short map, with its padding shortened too."""
    if train_ops.wants_grad(x, module.weight, module.bias):
        return train_ops.conv2d(x, module.weight, module.bias, module.stride, pad, module.dilation, module.group,
                                module.output_shape(x.shape, pad))
    return F.conv2d(x, module.weight, module.bias, module.stride, pad, module.dilation, module.group)


def trunk_plan(steps, keep=()):
    """The steps with the run of trunk steps after the inputs (one bottom each, the first reading
    an input) as one Trunk step, when its first layer pads past its window's reach (a border
    that the later layers carry on); other steps as given. The Trunk's tops are the blobs that
    later steps read and those in `keep` (the net's outputs)."""
    steps = list(steps)
    first = next((i for i, s in enumerate(steps) if type(s.module) is not L.Input), None)
    if first is None or type(steps[first].module) is not L.Convolution:
        return steps
    conv = steps[first].module
    if train_ops.border_reach(conv.kernel, conv.stride, conv.pad, conv.dilation) is None:
        return steps
    end = first
    while end < len(steps) and len(steps[end].bottom) == 1 and _layer_of(steps[end]) is not None:
        end += 1
    inside = steps[first:end]
    outputs = []
    for i, s in enumerate(inside):
        for t in s.top:
            rewritten = any(t in later.top for later in inside[i + 1:])
            if not rewritten and t not in outputs and (t in keep or readers_of(steps, t, end)):
                outputs.append(t)
    trunk = Trunk(inside, outputs)
    return steps[:first] + [Step("+".join(s.name for s in inside), list(inside[0].bottom), outputs, trunk)] + steps[end:]
