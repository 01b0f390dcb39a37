"""Crop offsets from the graph, with the semantics of Caffe's python/caffe/coord_map.py.

Each spatial layer maps output coordinates to input coordinates by an axis, a scale and a
shift: conv/pool (1/s, (p - (k-1)/2)/s), deconv (s, (k-1)/2 - p), crop (1, -offset), the
pointwise layers the identity. Walking from two tops back to a common ancestor and composing
gives the offset a Crop needs. Exact fractions, so 19, 5, 27, 9, 31 and 18 come out exact.
"""
from fractions import Fraction

from ..errors import NetError

PASS_THROUGH = {"AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN",
                "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH",
                "Threshold"}

IDENTITY = (None, Fraction(1), Fraction(0))


class UndefinedMap(Exception):
    """The layer has no coordinate mapping (data layers, InnerProduct, ...)."""


def _first(values, default):
    return values[0] if values else default


def layer_map(type_name, params):
    """(axis, scale, shift) of one layer; params is its *_param Message."""
    if type_name in ("Convolution", "Deconvolution", "Pooling", "Im2col"):
        for legacy in ("pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"):
            if params.has(legacy):
                raise NetError(f"coord_map: cropping does not support the legacy {legacy} field")
        axis = params.get_int("axis", 1)
        ks = _first(params.getall_int("kernel_size"), None)
        if ks is None:
            ks = params.get_int("kernel_size")
        if ks is None:
            raise UndefinedMap  # global pooling
        stride = Fraction(_first(params.getall_int("stride"), 1))
        pad = Fraction(_first(params.getall_int("pad"), 0))
        dilation = _first(params.getall_int("dilation"), 1)
        extent = Fraction((ks - 1) * dilation + 1)
        if type_name == "Deconvolution":
            return axis, stride, (extent - 1) / 2 - pad
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if type_name in PASS_THROUGH:
        return IDENTITY
    if type_name == "Crop":
        axis = params.get_int("axis", 2) - 1  # the last non-coordinate axis
        return axis, Fraction(1), -Fraction(_first(params.getall_int("offset"), 0))
    raise UndefinedMap


def compose(base, nxt):
    ax1, a1, b1 = base
    ax2, a2, b2 = nxt
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise NetError(f"coord_map: axis mismatch ({ax1} vs {ax2})")
    return ax, a1 * a2, a1 * b2 + b1


def inverse(m):
    ax, a, b = m
    return ax, 1 / a, -b / a


def map_between(top_from, top_to, step):
    """Coordinate map from top_from to top_to. step(top) -> (type, params, input tops) or None."""

    def parents(top):
        node = step(top)
        if node is None:
            return None, []
        type_name, params, inputs = node
        try:
            m = layer_map(type_name, params)
        except UndefinedMap:
            return None, []
        return m, (inputs[:1] if type_name == "Crop" else inputs)

    from_maps, frontier = {top_from: IDENTITY}, [top_from]
    while frontier:
        top = frontier.pop()
        m, inputs = parents(top)
        for b in inputs:
            from_maps[b] = compose(from_maps[top], m)
            frontier.append(b)

    to_maps, frontier = {top_to: IDENTITY}, [top_to]
    while frontier:
        top = frontier.pop()
        if top in from_maps:
            return compose(to_maps[top], inverse(from_maps[top]))
        m, inputs = parents(top)
        for b in inputs:
            to_maps[b] = compose(to_maps[top], m)
            frontier.append(b)
    raise NetError("coord_map: could not relate the two tops; are they connected by spatial layers?")


def crop_offset(m, what="crop"):
    """(axis, offsets) for a Crop from a map, or a clear error when it cannot be aligned."""
    ax, a, b = m
    if a != 1:
        raise NetError(f"{what}: scale mismatch on crop (scale {a}), the two tops are not aligned")
    if b > 0:
        raise NetError(f"{what}: cannot crop a negative offset ({-b})")
    if b.denominator != 1:
        raise NetError(f"{what}: cannot crop a non-integer offset ({-b})")
    return (ax if ax is not None else 1) + 1, [int(-b)]


def crop_params_between(top_from, top_to):
    """Axis and offsets for crop(top_from, top_to) in a NetBuilder graph."""

    def step(top):
        fn = top.fn
        return fn.type_name, fn.param_msg(), [t for t in fn.inputs]

    return crop_offset(map_between(top_from, top_to, step))


def crop_params_in_spec(spec, layer):
    """Axis and offsets that coord_map gives for a Crop layer of a NetSpec (for checking nets)."""
    producers = {}
    for i, l in enumerate(spec.layers):
        for t in l.top:
            producers.setdefault(t, []).append(i)

    def version(blob, before):
        """A blob as read by layer `before`: (name, index of its last writer), one node per value."""
        writers = [i for i in producers.get(blob, []) if i < before]
        return blob, (writers[-1] if writers else None)

    def step(node):
        blob, writer = node
        if writer is None:
            return None
        l = spec.layers[writer]
        return l.type, l.params, [version(b, writer) for b in l.bottom]

    pos = spec.layers.index(layer)
    a, b = layer.bottom[:2]
    return crop_offset(map_between(version(a, pos), version(b, pos), step), f"layer '{layer.name}'")
