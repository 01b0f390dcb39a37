"""Net surgery of the reference release: transplant, bilinear interp, and the paper's staged inits.

`transplant` copies parameters by layer name and coerces a shape by flat copy when the sizes
match (fc6/fc7 of VGG16 into their convolutional forms). Unlike the reference, which assigns
`.flat` and so silently repeats or truncates a blob of another size, a size mismatch is an
error here. Everything is checked before anything is written.
"""
from pathlib import Path

import numpy as np
import torch

from .errors import CaffemodelError, NetError
from .layers import bilinear_kernel


def _source_params(source):
    """{layer: [arrays]} from a CaffeNet, a dict, or a weights file (any format: weight_formats)."""
    from .weight_formats import read_layers

    if _is_net(source):
        return {n: [b.detach().cpu().numpy() for b in blobs] for n, blobs in source.params_by_layer().items()}
    if isinstance(source, (str, Path)):
        return read_layers(source)
    return {n: [np.asarray(a) for a in arrays] for n, arrays in source.items()}


def _is_net(source):
    from .net import CaffeNet
    return isinstance(source, CaffeNet)


def _caffe_shape(shape):
    """A blob's shape as a Caffe net holds it: legacy files pad shapes with leading 1s
    (bias 1x1x1xN, fc 1x1xMxN) that the net's blob does not have."""
    shape = tuple(shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


def transplant(new_net, source, suffix="", log=print):
    """Copy matching parameters, coerce same-size blobs of other shapes, drop the rest.

    Returns the reference's log lines ("copying conv1_1 0", "coercing fc6 0 from ... to ...",
    "dropping fc8"); each is also passed to `log` (None for silence).
    """
    old = _source_params(source)
    new = new_net.params_by_layer()
    shape_of = tuple if _is_net(source) else _caffe_shape
    plan, lines = [], []
    for name, arrays in old.items():
        target = name + suffix
        if target not in new:
            lines.append(f"dropping {name}")
            continue
        for i, a in enumerate(arrays):
            if i >= len(new[target]):
                lines.append(f"dropping {name} {i}")
                break
            p = new[target][i]
            if a.size != p.numel():
                raise CaffemodelError(f"blob {i} of {a.size} values cannot be coerced into {target}'s "
                                      f"{tuple(p.shape)} ({p.numel()} values)", layer=name)
            if shape_of(a.shape) != tuple(p.shape):
                lines.append(f"coercing {name} {i} from {shape_of(a.shape)} to {tuple(p.shape)}")
            else:
                lines.append(f"copying {name} {i}")
            plan.append((p, a))
    with torch.no_grad():
        for p, a in plan:
            p.copy_(torch.as_tensor(np.ascontiguousarray(a)).reshape(p.shape))
    for line in lines if log else ():
        log(line)
    return lines


def interp(net, layer_names):
    """Set each layer's weights to bilinear kernels on the channel diagonal (the rest untouched)."""
    checked = []
    for name in layer_names:
        w = net.layer(name).weight
        m, k, h, wd = w.shape
        if m != k and k != 1:
            raise NetError(f"interp needs equal input and output channels or 1 output, got {m} x {k}", layer=name)
        if h != wd:
            raise NetError(f"interp needs square kernels, got {h} x {wd}", layer=name)
        checked.append(w)
    with torch.no_grad():
        for w in checked:
            m, k, h, _ = w.shape
            idx = torch.arange(m)
            w[idx, idx if k == m else torch.zeros_like(idx)] = torch.from_numpy(bilinear_kernel(h)).to(w.dtype)


def upsampling_layers(net):
    """The reference solve.py's rule: interpolate every layer whose name contains 'up'."""
    return [name for name, module in net.layer_modules() if "up" in name and module.blobs()]


def staged_init(net, source=None, log=print):
    """The paper's initialisations as the reference solve.py scripts do them: FCN-32s from the
    classifier (transplant: fc6/fc7 coerced, fc8 dropped), FCN-16s from FCN-32s and FCN-8s from
    FCN-16s (same names copied); without a source, nothing is copied. Then every 'up' layer is
    set to bilinear interpolation; score layers absent from the source keep Caffe's default
    filler, zero. Returns the transplant's log lines."""
    lines = transplant(net, source, log=log) if source is not None else []
    interp(net, upsampling_layers(net))
    return lines
