"""Upgrade legacy Caffe nets to today's NetParameter, as Caffe's `UpgradeNetAsNeeded` does.

In Caffe's order: V0 `layers { layer { type: "conv" } }` nets (padding layers folded into the
next conv/pool) become V1; V1 data layers move scale/mean_file/crop_size/mirror into
`transform_param`; V1 `layers { type: CONVOLUTION }` become `layer { type: "Convolution" }`;
net-level `input` + `input_dim` / `input_shape` become a leading `Input` layer named "input";
old three-param BatchNorm layers get lr_mult and decay_mult 0. Where Caffe only logs a problem
and continues, we warn; where it dies (or its text parser would refuse), we raise a
PrototxtError naming file, line and column.
"""
import warnings

from ..errors import PrototxtError
from .proto import V1_NAME_BY_NUMBER, V1_TYPES
from .prototxt import Enum, Message, format_scalar


# V1 fields copied unchanged into the V2 layer (the *_param messages keep their names).
V1_COPIED = (
    "loss_weight", "blobs", "include", "exclude", "transform_param", "loss_param",
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param",
    "convolution_param", "data_param", "dropout_param", "dummy_data_param", "eltwise_param",
    "exp_param", "hdf5_data_param", "hdf5_output_param", "hinge_loss_param",
    "image_data_param", "infogain_loss_param", "inner_product_param", "lrn_param",
    "memory_data_param", "mvn_param", "pooling_param", "power_param", "relu_param",
    "sigmoid_param", "softmax_param", "slice_param", "tanh_param", "threshold_param",
    "window_data_param",
)
# V1 repeated fields that become the i-th `param { ... }` of the V2 layer, in ParamSpec order.
V1_PARAM_SPEC = (("param", "name"), ("blob_share_mode", "share_mode"),
                 ("blobs_lr", "lr_mult"), ("weight_decay", "decay_mult"))
V1_FIELDS = frozenset(("name", "type", "bottom", "top", "layer", *V1_COPIED,
                       *(v1 for v1, _ in V1_PARAM_SPEC)))
_SHARE_MODES = ("STRICT", "PERMISSIVE")

# UpgradeNetDataTransformation: V1 data layer type -> its param message losing these fields.
DATA_TRANSFORM_PARAMS = {"DATA": "data_param", "IMAGE_DATA": "image_data_param",
                         "WINDOW_DATA": "window_data_param"}
TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# V0 layer type string -> V1 enum name (UpgradeV0LayerType).
V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING",
    "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}


def _to(field, *types_params):
    """V0 field -> {V0 type: (V1 param message, its field)} for the types that take it."""
    return {t: (p, field) for t, p in types_params}


_CONV, _POOL, _IP = ("conv", "convolution_param"), ("pool", "pooling_param"), ("innerproduct", "inner_product_param")
_DATA, _HDF5, _IMAGES, _WINDOW = (("data", "data_param"), ("hdf5_data", "hdf5_data_param"),
                                  ("images", "image_data_param"), ("window_data", "window_data_param"))
_LRN = ("lrn", "lrn_param")
_ANY = "*"  # V0 fields that go to transform_param whatever the type
# UpgradeV0LayerParameter: V0 field -> where it goes in the V1 layer.
V0_FIELDS = {
    "num_output": _to("num_output", _CONV, _IP), "biasterm": _to("bias_term", _CONV, _IP),
    "weight_filler": _to("weight_filler", _CONV, _IP), "bias_filler": _to("bias_filler", _CONV, _IP),
    "pad": _to("pad", _CONV, _POOL), "kernelsize": _to("kernel_size", _CONV, _POOL),
    "group": _to("group", _CONV), "stride": _to("stride", _CONV, _POOL), "pool": _to("pool", _POOL),
    "dropout_ratio": _to("dropout_ratio", ("dropout", "dropout_param")),
    "local_size": _to("local_size", _LRN), "alpha": _to("alpha", _LRN),
    "beta": _to("beta", _LRN), "k": _to("k", _LRN),
    "source": _to("source", _DATA, _HDF5, _IMAGES, _WINDOW,
                  ("infogain_loss", "infogain_loss_param")),
    "scale": _to("scale", (_ANY, "transform_param")),
    "meanfile": _to("mean_file", (_ANY, "transform_param")),
    "cropsize": _to("crop_size", (_ANY, "transform_param")),
    "mirror": _to("mirror", (_ANY, "transform_param")),
    "batchsize": _to("batch_size", _DATA, _HDF5, _IMAGES, _WINDOW),
    "rand_skip": _to("rand_skip", _DATA, _IMAGES), "shuffle_images": _to("shuffle", _IMAGES),
    "new_height": _to("new_height", _IMAGES), "new_width": _to("new_width", _IMAGES),
    "new_num": {}, "new_channels": {},  # accepted by Caffe's parser, never upgraded
    "concat_dim": _to("concat_dim", ("concat", "concat_param")),
    "det_fg_threshold": _to("fg_threshold", _WINDOW), "det_bg_threshold": _to("bg_threshold", _WINDOW),
    "det_fg_fraction": _to("fg_fraction", _WINDOW), "det_context_pad": _to("context_pad", _WINDOW),
    "det_crop_mode": _to("crop_mode", _WINDOW),
    "hdf5_output_param": _to("hdf5_output_param", ("hdf5_output", None)),  # the whole message
}
V0_LAYER_FIELDS = ("blobs", "blobs_lr", "weight_decay")  # stay on the V1 layer
V0_KNOWN = frozenset(("name", "type", *V0_LAYER_FIELDS, *V0_FIELDS))

_INPUT_FIELDS = ("input", "input_dim", "input_shape")


def upgrade_net(msg):
    """Return a V2 NetParameter message: `msg` itself when nothing needs upgrading, else a new
    message (msg is not modified) keeping the net's other fields in their order."""
    v1_layers = _messages(msg, "layers")
    if not (v1_layers or msg.has("input") or any(map(_needs_batchnorm, _messages(msg, "layer")))):
        return msg
    if v1_layers and msg.has("layer"):
        (line, col), (v2_line, v2_col) = _where_first(msg, "layers"), _where_first(msg, "layer")
        raise PrototxtError(
            "net mixes V1 'layers { type: ENUM }' with V2 'layer { type: \"Name\" }' "
            f"(first 'layer' at {v2_line}:{v2_col}); Caffe refuses such a net: "
            "write every layer in one format", msg.file, line, col)
    if any(l.has("layer") for l in v1_layers):
        v1_layers = _upgrade_v0(msg, v1_layers)
    layers = [_upgrade_v1_layer(l) for l in v1_layers] or [l.copy() for l in msg.getall("layer")]
    legacy = ("layer", "layers") + (_INPUT_FIELDS if msg.has("input") else ())
    out = Message(file=msg.file, line=msg.line, col=msg.col)
    for i, (key, value) in enumerate(msg.fields):
        if key not in legacy:
            _put(out, key, value.copy() if isinstance(value, Message) else value, msg.positions.get(i))
    for layer in _input_layers(msg) + layers:
        _upgrade_batchnorm(layer)
        _put(out, "layer", layer, (layer.line, layer.col))
    return out


# --- V1 -> V2 ------------------------------------------------------------------------------------
def _upgrade_v1_layer(v1):
    """UpgradeV1LayerParameter, after UpgradeNetDataTransformation."""
    _check_fields(v1, V1_FIELDS, "V1 layer (V1LayerParameter)")
    v1_type = _v1_type(v1)
    v1 = _move_transform_fields(v1, v1_type)
    out = Message(file=v1.file, line=v1.line, col=v1.col)
    _copy(v1, out, "name")
    if v1_type is not None:
        _put(out, "type", V1_TYPES[v1_type][1], _where_first(v1, "type"))
    for key in ("bottom", "top"):
        _copy(v1, out, key)
    for spec in _param_specs(v1):
        _put(out, "param", spec, (spec.line, spec.col))
    for key in V1_COPIED:
        _copy(v1, out, key)
    return out


def _v1_type(v1):
    """The V1 enum name of the layer's type (None when it has none); numbers are accepted."""
    t = v1.get("type")
    if t is None:
        return None
    if isinstance(t, Enum) and str(t) in V1_TYPES:
        return str(t)
    if isinstance(t, int) and not isinstance(t, bool) and t in V1_NAME_BY_NUMBER:
        return V1_NAME_BY_NUMBER[t]
    hint = " (V1 'layers' take enum types such as CONVOLUTION; quoted names belong in 'layer')" \
        if isinstance(t, str) and not isinstance(t, Enum) else ""
    raise v1.error(f"layer '{v1.get('name', '')}': unknown V1 layer type {format_scalar(t)}{hint}",
                   "type")


def _move_transform_fields(v1, v1_type):
    """UpgradeNetDataTransformation: a V1 data layer's scale/mean_file/crop_size/mirror go to
    transform_param. Returns v1, or an upgraded copy."""
    field = DATA_TRANSFORM_PARAMS.get(v1_type)
    param = v1.get(field) if field else None
    if not isinstance(param, Message) or not any(param.has(k) for k in TRANSFORM_FIELDS):
        return v1
    v1 = v1.copy()
    param, transform = v1.get(field), v1.get("transform_param")
    if not isinstance(transform, Message):
        transform = _put(v1, "transform_param", Message(file=v1.file, line=param.line, col=param.col),
                         (param.line, param.col))
    for key in TRANSFORM_FIELDS:
        if param.has(key):
            _replace(transform, key, param.get(key), param.where(key))
            param.remove(key)
    return v1


def _param_specs(v1):
    """The i-th name, blob_share_mode, blobs_lr and weight_decay form the i-th ParamSpec."""
    specs = []
    for v1_key, key in V1_PARAM_SPEC:
        for i, (value, where) in enumerate(_occurrences(v1, v1_key)):
            while len(specs) <= i:
                specs.append(Message(file=v1.file, line=where[0], col=where[1]))
            if key == "share_mode":
                value = _share_mode(v1, value)
            _put(specs[i], key, value, where)
    return specs


def _share_mode(v1, value):
    if isinstance(value, Enum) and value in _SHARE_MODES:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(_SHARE_MODES):
        return Enum(_SHARE_MODES[value])
    raise v1.error(f"unknown blob_share_mode {format_scalar(value)} (STRICT or PERMISSIVE)",
                   "blob_share_mode")


# --- net-level inputs, BatchNorm -------------------------------------------------------------
def _input_layers(net):
    """UpgradeNetInput: `input` with `input_shape` or 4 `input_dim` each -> [Input layer]."""
    inputs, shapes = net.getall("input"), _messages(net, "input_shape")
    if not inputs or not (shapes or net.has("input_dim")):
        return []  # no inputs, or a bare legacy `input` that Caffe simply strips
    if shapes:
        if len(shapes) != len(inputs):
            raise net.error(f"{len(inputs)} 'input' fields but {len(shapes)} 'input_shape' "
                            "(one shape per input)", "input_shape")
        shapes = [s.copy() for s in shapes]
    else:
        dims = net.getall_int("input_dim")
        if len(dims) != 4 * len(inputs):
            raise net.error(f"{len(inputs)} 'input' fields but {len(dims)} 'input_dim' "
                            "(four per input: num, channels, height, width)", "input_dim")
        shapes = [Message([("dim", d) for d in dims[4 * i:4 * i + 4]]) for i in range(len(inputs))]
    line, col = _where_first(net, "input") or (net.line, net.col)
    layer = Message([("name", "input"), ("type", "Input")] + [("top", t) for t in inputs],
                    file=net.file, line=line, col=col)
    layer.add("input_param", Message([("shape", s) for s in shapes], file=net.file, line=line, col=col))
    return [layer]


def _needs_batchnorm(layer):
    return layer.get("type") == "BatchNorm" and len(_messages(layer, "param")) == 3


def _upgrade_batchnorm(layer):
    """UpgradeNetBatchNorm: the old three-param BatchNorm learns nothing (lr/decay mult 0)."""
    if _needs_batchnorm(layer):
        for spec in layer.getall("param"):
            for key in ("lr_mult", "decay_mult"):
                _replace(spec, key, 0.0, spec.where(key))


# --- V0 -> V1 ----------------------------------------------------------------------------------
def _upgrade_v0(net, conns):
    """UpgradeV0Net: fold padding layers into their consumers, then each V0 layer into V1."""
    for conn in conns:
        if not conn.has("layer"):
            raise conn.error("net mixes V0 'layers { layer { ... } }' with V1 'layers' entries; "
                             "write every layer in one format")
    return [_upgrade_v0_layer(conn) for conn in _fold_padding(net, conns)]


def _fold_padding(net, conns):
    """UpgradeV0PaddingLayers: drop `padding` layers, moving their pad into the conv/pool after."""
    last_top = {name: None for name in net.getall("input")}  # blob -> index of its last producer
    out = []
    for i, conn in enumerate(conns):
        v0 = conn.msg("layer")
        kind = v0.get("type")
        if kind != "padding":
            out.append(conn.copy())
        for j, blob in enumerate(conn.getall("bottom")):
            if blob not in last_top:
                raise conn.error(f"layer '{v0.get('name', '')}': unknown bottom blob '{blob}'", "bottom")
            src = conns[last_top[blob]] if last_top[blob] is not None else None
            if src is None or src.msg("layer").get("type") != "padding":
                continue
            if kind not in ("conv", "pool"):
                raise conn.error(f"layer '{v0.get('name', '')}': a padding layer feeds a "
                                 f"{format_scalar(kind)} layer (only conv and pool can take one)")
            if len(conn.getall("bottom")) != 1 or len(src.getall("bottom")) != 1 \
                    or len(src.getall("top")) != 1:
                raise conn.error("a padding layer and its consumer take one blob each")
            out[-1].msg("layer").set("pad", src.msg("layer").get("pad", 0))
            _set_nth(out[-1], "bottom", j, src.get("bottom"))
        for blob in conn.getall("top"):
            last_top[blob] = i
    return out


def _upgrade_v0_layer(conn):
    """UpgradeV0LayerParameter: a V0 connection -> a V1 layer with an enum type."""
    v0 = conn.msg("layer")
    _check_fields(v0, V0_KNOWN, "V0 layer (V0LayerParameter)")
    for key in conn.keys():
        if key not in ("bottom", "top", "layer"):
            _warn(conn, f"V0 net: '{key}' outside 'layer {{ }}' is ignored, as Caffe does", key)
    v1 = Message(file=conn.file, line=conn.line, col=conn.col)
    for key in ("bottom", "top"):
        _copy(conn, v1, key)
    _copy(v0, v1, "name")
    kind = v0.get("type")
    if kind is not None:
        if kind not in V0_TYPES:
            raise v0.error(f"layer '{v0.get('name', '')}': unknown V0 layer type {format_scalar(kind)}",
                           "type")
        _put(v1, "type", Enum(V0_TYPES[kind]), v0.where("type"))
    for key in V0_LAYER_FIELDS:
        _copy(v0, v1, key)
    for key, targets in V0_FIELDS.items():
        if not v0.has(key):
            continue
        target = targets.get(kind) or targets.get(_ANY)
        if target is None:
            _warn(v0, f"layer '{v0.get('name', '')}': V0 field '{key}' does not apply to type "
                  f"{format_scalar(kind)}; dropped, as Caffe does", key)
            continue
        param, field = target
        value = v0.get(key)
        value = value.copy() if isinstance(value, Message) else value
        if param is None:
            _put(v1, field, value, v0.where(key))
            continue
        sub = v1.get(param)
        if sub is None:
            sub = _put(v1, param, Message(file=v0.file, line=v0.line, col=v0.col), v0.where(key))
        _put(sub, field, value, v0.where(key))
    return v1


# --- small helpers -----------------------------------------------------------------------------
def _put(dst, key, value, where):
    """Append (key, value) to dst, remembering where it came from; returns value."""
    if where is not None and where[0] is not None:
        dst.positions[len(dst.fields)] = where
    return dst.add(key, value)


def _messages(msg, key):
    """Every value of key, each of which must be a message."""
    for value, (line, col) in _occurrences(msg, key):
        if not isinstance(value, Message):
            raise PrototxtError(f"'{key}' must be a message, got {format_scalar(value)}", msg.file, line, col)
    return msg.getall(key)


def _replace(dst, key, value, where):
    """Set a singular field: drop its old occurrences, append the new value."""
    dst.remove(key)
    _put(dst, key, value, where)


def _occurrences(src, key):
    return [(v, src.positions.get(i, (src.line, src.col)))
            for i, (k, v) in enumerate(src.fields) if k == key]


def _copy(src, dst, key):
    """Copy every occurrence of key (deep) with its position."""
    for value, where in _occurrences(src, key):
        _put(dst, key, value.copy() if isinstance(value, Message) else value, where)


def _where_first(msg, key):
    found = _occurrences(msg, key)
    return found[0][1] if found else None


def _set_nth(msg, key, n, value):
    idx = [i for i, (k, _) in enumerate(msg.fields) if k == key][n]
    msg.fields[idx] = (key, value)


def _check_fields(msg, known, what):
    """Caffe's text parser refuses fields its message type lacks; so do we, with the place."""
    for i, (key, _) in enumerate(msg.fields):
        if key not in known:
            line, col = msg.positions.get(i, (msg.line, msg.col))
            raise PrototxtError(f"a {what} has no field '{key}'", msg.file, line, col)


def _warn(msg, text, key=None):
    warnings.warn(str(msg.error(text, key)), stacklevel=4)
