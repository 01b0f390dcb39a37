"""The training pass over a net's ReLUs (negative_slope 0), for the solver's CPU plan.

    y = ReLU(x); p = Pooling MAX(y)   ->   y, p = relu_max_pool(x)    (ops.relu_max_pool)

when the pooling is the ReLU top's only reader. The backward of the pair needs only the winners'
positions and the sign of each pooled value, so the ReLU's activation-sized top is not kept for
it: the last ReLU of each of VGG's conv blocks, 238 MB of tops in full-width FCN at 500x500 (125
MB after conv1_2), held from the forward into the backward, where an iteration's memory peaks.
The ReLU's top is still produced (in place when the prototxt has the ReLU in place) but carries
no gradient: the pooling is its only reader.

Every other in-place ReLU whose bottom a Convolution wrote (and nothing else read) runs in place,
as Caffe's does: no activation-sized allocation per iteration (the convolution keeps its input,
not its output, for the backward; the ReLU keeps its result, which the next layer keeps anyway).

Results and gradients are the layers' own (the same kernels; the mask multiplies by 0 or 1).
"""
from torch import nn

from . import layers as L
from . import ops, train_ops
from .plan import Step, readers_of


class ReLUMaxPool(nn.Module):
    """One fused step; `relu` and `pool` stay the net's registered layers. `in_place`: the ReLU
    overwrites its bottom (Caffe's in-place ReLU on a convolution's top that nothing else read)."""

    def __init__(self, relu, pool, in_place):
        super().__init__()
        self.layers = [relu, pool]  # a list, so the layers are not registered twice
        self.in_place = in_place

    def forward(self, x):
        relu, pool = self.layers
        kernel = pool.byte_path_kernel(x) if train_ops.wants_grad(x) else None
        if kernel is not None:
            # a leaf (a net input that wants a gradient) cannot be overwritten
            return ops.relu_max_pool(x, kernel, pool.stride, self.in_place and x.grad_fn is not None)
        (y,) = relu(x)
        return (y,) + tuple(pool(y))


class InPlaceReLU(nn.Module):
    """A ReLU (negative_slope 0) that overwrites its bottom while training, as Caffe's in-place
    ReLU does: no activation-sized allocation per iteration; its backward keeps the result, which
    the next layer keeps anyway."""

    def __init__(self, relu):
        super().__init__()
        self.layers = [relu]

    def forward(self, x):
        if train_ops.wants_grad(x) and x.grad_fn is not None:
            return (x.relu_(),)
        return self.layers[0](x)


def fused_plan(steps):
    """The steps with every ReLU (negative_slope 0) whose top only one MAX pooling reads joined to
    that pooling; other steps as given."""
    steps = list(steps)
    i = 0
    while i < len(steps):
        match = _match(steps, i)
        if match is None:
            if _in_place_relu(steps, i):
                steps[i] = Step(steps[i].name, steps[i].bottom, steps[i].top, InPlaceReLU(steps[i].module))
            i += 1
            continue
        j, in_place = match
        relu, pool = steps[i], steps[j]
        module = ReLUMaxPool(relu.module, pool.module, in_place)
        steps[j] = Step(f"{relu.name}+{pool.name}", list(relu.bottom), [relu.top[0], pool.top[0]], module)
        del steps[i]
    return steps


def _match(steps, i):
    """(index of the pooling, whether in place) when steps[i] is a ReLU that the pass fuses."""
    relu = steps[i]
    if not _plain_relu(relu):
        return None
    top = relu.top[0]
    readers = readers_of(steps, top, i + 1)
    if len(readers) != 1:
        return None
    pool = steps[readers[0]]
    if not (type(pool.module) is L.Pooling and pool.module.method == "MAX" and pool.bottom == [top]
            and len(pool.top) == 1 and pool.top[0] != top):
        return None
    in_place = relu.bottom[0] == top and _written_by_convolution(steps, top, i)
    return readers[0], in_place


def _plain_relu(step):
    """A ReLU layer of slope 0 with one bottom and one top."""
    return (type(step.module) is L.ReLU and step.module.negative_slope == 0
            and len(step.bottom) == 1 and len(step.top) == 1)


def _in_place_relu(steps, i):
    s = steps[i]
    return _plain_relu(s) and s.bottom == s.top and _written_by_convolution(steps, s.top[0], i)


def _written_by_convolution(steps, blob, i):
    """Whether the step that last wrote `blob` before step i is a Convolution layer (which keeps
    its input, not its output, for the backward) and no step since read it: then the ReLU may
    overwrite it."""
    for k in range(i - 1, -1, -1):
        if blob in steps[k].top:
            return type(steps[k].module) is L.Convolution and blob not in steps[k].bottom
        if blob in steps[k].bottom:
            return False
    return False
