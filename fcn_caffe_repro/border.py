"""The pass that leaves out the rows and columns of a padded net's constant border: on the training
plan (SGDSolver) and on the fast mode's (fast.optimize).

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
and column. A layer reads its bottom's short map as it is when that yields every signature of its
full output. Otherwise, or when a cut would leave out at least MIN_CUT of its input, the pass
gathers its input: each run shortened to the least length at each end that lets every layer up to
the next pooling run without another gather, leaving out a multiple of those layers' strides (so
their windows keep their alignment). A gather moves the whole map and its backward adds it back,
so fewer gathers cost less than the rows a gather before every layer would save. Rows and columns
are planned apart.
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import layers as L
from . import train_ops
from .plan import Step, readers_of, with_frees
from .relu_pool import InPlaceReLU, ReLUMaxPool

_PAD = -1  # the signature of a padding cell
MIN_CUT = 0.1  # a gather that a layer's short input does not need must leave out this much of it


class _Signatures:
    """Interned window tuples: equal structure, equal number."""

    def __init__(self):
        self._ids = {}

    def __call__(self, key):
        return self._ids.setdefault(key, len(self._ids))

    def of(self, kind, windows):
        """The signature of (kind, window) for each window (a tuple of row signatures), in order."""
        ids = self._ids
        return [ids.setdefault((kind, w), len(ids)) for w in windows]


def _conv_rows(rows, pad, kernel, stride, dilation, sig):
    padded = [_PAD] * pad + list(rows) + [_PAD] * pad
    extent = dilation * (kernel - 1) + 1
    count = (len(padded) - extent) // stride + 1
    if count <= 0:
        return []
    end = (count - 1) * stride + 1
    return sig.of("conv", zip(*(padded[k * dilation:k * dilation + end:stride] for k in range(kernel))))


def _pool_rows(rows, pad, kernel, stride, sig):
    """Caffe's pooling windows: the last may run past the padding and is clipped to it."""
    padded = [_PAD] * pad + list(rows) + [_PAD] * pad
    count = L.caffe_pool_size(len(rows), kernel, stride, pad)
    return sig.of("pool", (tuple(padded[i:i + kernel]) for i in range(0, count * stride, stride)))


def _apply(window, rows, pad, sig):
    """The top's row signatures of a convolution or pooling (`window`) over `rows` padded by `pad`."""
    kind, kernel, stride, _, dilation = window
    if kind == "conv":
        return _conv_rows(rows, pad, kernel, stride, dilation, sig)
    return _pool_rows(rows, pad, kernel, stride, sig)


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


def _short_input(window, full, keep, stride):
    """(rows, pad) of a layer's input on `full` rows with each run cut to `keep` at each end by a
    multiple of `stride`; a convolution's padding counts as a run, cut alike at both ends or not
    at all."""
    kind, _, _, pad, _ = window
    if kind == "conv" and pad > 0:
        padded = [_PAD] * pad + list(full) + [_PAD] * pad
        kept = _shortened(padded, keep, stride)
        lead = sum(1 for k in kept if k < pad)
        trail = sum(1 for k in kept if k >= pad + len(full))
        if lead == trail:
            return [padded[k] for k in kept[lead:len(kept) - trail]], lead
    return [full[k] for k in _shortened(full, keep, stride)], pad


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


def _plan_axis(windows, start, sig):
    """Per layer (`windows`, in order, each reading the previous one's top; the first `start`):
    (its _AxisOp, its top's short rows, its top's full rows) on one axis."""
    full_in, full_out, rows = [], [], start
    for w in windows:
        full_in.append(rows)
        rows = _apply(w, rows, w[3], sig)
        full_out.append(rows)
    complete = [set(f) for f in full_out]

    def block(i):
        """Layer i and those after it up to and including the next pooling."""
        for j in range(i + 1, len(windows)):
            if windows[j][0] != "conv":
                return range(i, j + 1)
        return range(i, len(windows))

    def block_runs(i, rows, pad):
        """Whether layers i.. of block(i), layer i on `rows` padded by `pad`, each yield every
        signature of their full output without a gather."""
        for j in block(i):
            rows = _apply(windows[j], rows, pad, sig)
            if not complete[j] <= set(rows):
                return False
            pad = windows[j + 1][3] if j + 1 < len(windows) else 0
        return True

    plan, layout = [], start
    for i, w in enumerate(windows):
        stride = math.prod(windows[j][2] for j in block(i))
        longest = max(len(full_in[i]), w[3]) + 1  # a keep that cuts nothing
        lo, hi = 1, longest
        while lo < hi:  # the least keep that lets the block run
            mid = (lo + hi) // 2
            if block_runs(i, *_short_input(w, full_in[i], mid, stride)):
                hi = mid
            else:
                lo = mid + 1
        rows, pad = _short_input(w, full_in[i], lo, stride) if lo < longest else (full_in[i], w[3])
        as_is = _apply(w, layout, w[3], sig)
        if complete[i] <= set(as_is) and len(rows) + 2 * pad > (1 - MIN_CUT) * (len(layout) + 2 * w[3]):
            op, top = _AxisOp(None, w[3]), as_is  # complete as it is, and a gather would cut little
        else:
            op, top = _AxisOp(_gather(layout, rows), pad), _apply(w, rows, pad, sig)
        plan.append((op, top, full_out[i]))
        layout = top
    return plan


def _windows(module, axis):
    """("conv"|"pool", kernel, stride, pad, dilation) of a layer on one axis."""
    if isinstance(module, L.Convolution):
        return ("conv", module.kernel[axis], module.stride[axis], module.pad[axis], module.dilation[axis])
    return ("pool", module.kernel[axis], module.stride[axis], module.pad[axis], 1)


def _convolution(module):
    """The Convolution a step computes: the layer itself, or the `layer` of a step that wraps one
    (the fast mode's FastConv, its ReLU included) and takes a `pad` argument; else None."""
    if type(module) is L.Convolution:
        return module
    layer = getattr(module, "layer", None)
    return layer if type(layer) is L.Convolution else None


def _layer_of(step):
    """The layer that reads a step's bottom through a window (a Convolution or a pooling), "relu"
    for a pointwise ReLU step, or None when the step is not part of a trunk."""
    m = step.module
    conv = _convolution(m)
    if conv is not None:
        return conv
    if type(m) is L.Pooling and not m.global_pooling and m.method in ("MAX", "AVE"):
        return m
    if isinstance(m, ReLUMaxPool):
        return m.layers[1]
    if isinstance(m, InPlaceReLU) or (type(m) is L.ReLU and len(step.bottom) == 1):
        return "relu"
    return None


class Trunk(nn.Module):
    """The net's first steps (convolutions, ReLUs, poolings) run on short maps; the tops read by
    later steps come out full. Planned once per input size, from plans of each axis length (shared
    by rows and columns where the windows are square)."""

    def __init__(self, steps, outputs):
        super().__init__()
        self.steps = steps  # a list: the layers stay registered on the net only
        self.outputs = list(outputs)
        self._frees = [frees for _, frees in with_frees(steps, set(outputs))]
        self._convs = [_convolution(s.module) for s in steps]
        self._layers = [_layer_of(s) for s in steps]
        self.inner_tops = frozenset(t for s in steps for t in s.top) - set(self.outputs)  # written, not returned
        self._plans, self._axis_plans = {}, {}

    def plan(self, size):
        """For an input of `size` (rows, columns): per step, None or (the gather of its bottom's
        short map as (row, column) indices or None, its padding on the short map); per output,
        the gather that widens it back (or None)."""
        if size not in self._plans:
            (rows, row_ends), (cols, col_ends) = (self._axis_plan(axis, size[axis]) for axis in (0, 1))
            steps = [None if r is None else (_gathers(r, c), (r[0].pad, c[0].pad)) for r, c in zip(rows, cols)]
            self._plans[size] = (steps, {b: _gathers(row_ends[b], col_ends[b]) for b in self.outputs})
        return self._plans[size]

    def _axis_plan(self, axis, n):
        """One axis of plan() for `n` rows (or columns): per step, None (a ReLU) or (its _AxisOp,
        the length of its bottom's short map); per output, (the _AxisOp that widens it, its short
        length). Axes are planned apart, so a length met before on an axis with the same windows (both,
        for square kernels) is planned once."""
        windows = tuple(_windows(layer, axis) for layer in self._layers if layer != "relu")
        if (windows, n) not in self._axis_plans:
            sig = _Signatures()
            start = [sig(("in", i)) for i in range(n)]
            windowed = iter(_plan_axis(windows, start, sig))
            short = {self.steps[0].bottom[0]: start}
            full = {self.steps[0].bottom[0]: start}
            ops = []
            for step, layer in zip(self.steps, self._layers):
                b = step.bottom[0]
                if layer == "relu":
                    short[step.top[0]], full[step.top[0]] = short[b], full[b]
                    ops.append(None)
                    continue
                op, top_short, top_full = next(windowed)
                ops.append((op, len(short[b])))
                if isinstance(step.module, ReLUMaxPool):
                    # the ReLU's top in the pooling's input layout
                    relu_rows = [short[b][k] for k in op.gather] if op.gather is not None else short[b]
                    short[step.top[0]], full[step.top[0]] = relu_rows, full[b]
                short[step.top[-1]], full[step.top[-1]] = top_short, top_full
            ends = {blob: (_AxisOp(_gather(short[blob], full[blob]), 0), len(short[blob])) for blob in self.outputs}
            self._axis_plans[(windows, n)] = (ops, ends)
        return self._axis_plans[(windows, n)]

    def forward(self, x):
        ops, ends = self.plan(tuple(x.shape[2:]))
        blobs = {self.steps[0].bottom[0]: x}
        for step, op, frees, conv in zip(self.steps, ops, self._frees, self._convs):
            x = blobs[step.bottom[0]]
            module = step.module
            if op is not None:
                x = _select(x, op[0])
            if op is None or conv is None or op[1] == tuple(conv.pad):
                tops = module(x)
            elif module is conv:
                tops = (_conv(module, x, op[1]),)
            else:
                tops = module(x, pad=op[1])
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
    """The steps with the chain of trunk steps after the inputs (the first reading an input, each
    later one the last top of the one before it) as one Trunk step, when its first layer pads past
    its window's reach (a border that the later layers carry on); other steps as given. The
    Trunk's tops are the blobs that later steps read and those in `keep` (the net's outputs)."""
    steps = list(steps)
    first = next((i for i, s in enumerate(steps) if type(s.module) is not L.Input), None)
    conv = None if first is None else _convolution(steps[first].module)
    if conv is None:
        return steps
    if train_ops.border_reach(conv.kernel, conv.stride, conv.pad, conv.dilation) is None:
        return steps
    end = first + 1
    while (end < len(steps) and _layer_of(steps[end]) is not None
           and list(steps[end].bottom) == [steps[end - 1].top[-1]]):
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


def inner_steps(steps):
    """The steps with each Trunk's own steps in its place: every layer step a plan runs."""
    return [t for s in steps for t in (s.module.steps if isinstance(s.module, Trunk) else [s])]
