"""NetSpec: the one representation of a net between its three sources and CaffeNet.

`NetSpec` / `LayerSpec` wrap the parsed `Message` of a NetParameter / LayerParameter, so no
field is ever lost on the way from prototxt to prototxt. Nets are written in Python with
`NetBuilder` and `L`, which follow Caffe's `net_spec.py`: assign tops to attributes, layers are
named after their first top, in-place layers keep the bottom's blob name, and layer order is
the depth-first order in which Caffe's `to_proto` emits them.
"""
from collections import Counter

from ..errors import NetError, PrototxtError
from . import prototxt
from .proto import check_fields
from .prototxt import Enum, Message

PHASES = {"train": "TRAIN", "test": "TEST", "val": "TEST", "deploy": "TEST"}

# Layer type -> its *_param field, as caffe.proto names them (net_spec's _param_names).
PARAM_FIELDS = {
    "Convolution": "convolution_param", "Deconvolution": "convolution_param",
    "Pooling": "pooling_param", "Crop": "crop_param", "Eltwise": "eltwise_param",
    "Python": "python_param", "Dropout": "dropout_param", "LRN": "lrn_param",
    "Scale": "scale_param", "Concat": "concat_param", "InnerProduct": "inner_product_param",
    "Softmax": "softmax_param", "SoftmaxWithLoss": "softmax_param", "ReLU": "relu_param",
    "Input": "input_param", "Accuracy": "accuracy_param", "Data": "data_param",
    "Bias": "bias_param", "Flatten": "flatten_param", "Reshape": "reshape_param",
}
# net_spec maps a type only to a *_param named after it (Deconvolution has none of its own).
_BUILDER_PARAM_FIELDS = {k: v for k, v in PARAM_FIELDS.items()
                         if k not in ("Deconvolution", "SoftmaxWithLoss")}


class LayerSpec:
    """One layer: its LayerParameter message with typed views of the common fields."""

    def __init__(self, msg):
        self.msg = msg

    @classmethod
    def make(cls, name, type, bottom=(), top=(), **fields):
        msg = Message([("name", name), ("type", type)])
        for b in bottom:
            msg.add("bottom", b)
        for t in top:
            msg.add("top", t)
        for k, v in Message.from_py(fields).fields:
            msg.add(k, v)
        return cls(msg)

    name = property(lambda self: self.msg.get_str("name", ""))
    type = property(lambda self: self.msg.get_str("type", ""))
    bottom = property(lambda self: [str(b) for b in self.msg.getall("bottom")])
    top = property(lambda self: [str(t) for t in self.msg.getall("top")])
    param_specs = property(lambda self: self.msg.getall("param"))

    @property
    def params(self):
        """The layer type's own *_param message (empty when absent)."""
        field = PARAM_FIELDS.get(self.type)
        return self.msg.msg(field) if field else Message(file=self.msg.file, line=self.msg.line)

    def lr_mults(self):
        """(lr_mult, decay_mult) per parameter blob index, Caffe's defaults 1 and 1."""
        return [(p.get_float("lr_mult", 1.0), p.get_float("decay_mult", 1.0)) for p in self.param_specs]

    def error(self, message, key=None, within=None):
        """A NetError naming this layer, with the prototxt position (of `key` in `within`, a
        sub-message such as the layer's params, else in the layer) when known."""
        line, col = (within if within is not None else self.msg).where(key)
        if key is not None and within is not None and not within.has(key):
            line, col = self.msg.where()
        where = f" ({self.msg.file or '<prototxt>'}:{line}:{col})" if line else ""
        return NetError(message + where, layer=self.name)

    def included_in(self, phase, level=0, stages=()):
        """Caffe's StateMeetsRule: include rules (any must match) or exclude rules (none may)."""
        includes, excludes = self.msg.getall("include"), self.msg.getall("exclude")
        if includes and excludes:
            raise self.error("specifies both include and exclude rules")
        state = (PHASES[phase], level, set(stages))
        if includes:
            return any(_meets(r, *state) for r in includes)
        return not any(_meets(r, *state) for r in excludes)

    def __repr__(self):
        return f"LayerSpec({self.name!r}, {self.type!r}, bottom={self.bottom}, top={self.top})"


def _meets(rule, phase, level, stages):
    if rule.has("phase") and rule.get_enum("phase", ["TRAIN", "TEST"]) != phase:
        return False
    if rule.has("min_level") and level < rule.get_int("min_level"):
        return False
    if rule.has("max_level") and level > rule.get_int("max_level"):
        return False
    if any(s not in stages for s in rule.getall("stage")):
        return False
    return not any(s in stages for s in rule.getall("not_stage"))


class NetSpec:
    """An ordered list of LayerSpecs plus the net-level fields of the NetParameter."""

    def __init__(self, layers=(), name="", extra=None, file=None):
        self.layers = list(layers)
        self.name = name
        self.extra = extra or Message()  # net-level fields other than name/layer (force_backward, ...)
        self.file = file

    # --- loading -------------------------------------------------------------------------------
    @classmethod
    def from_message(cls, msg, file=None):
        from .upgrade import upgrade_net  # V1 text nets and legacy input fields

        msg = upgrade_net(msg)
        extra = Message([(k, v) for k, v in msg.fields if k not in ("name", "layer")])
        spec = cls([LayerSpec(m) for m in msg.getall("layer")], msg.get_str("name", ""), extra, file)
        spec.validate()
        return spec

    @classmethod
    def from_prototxt(cls, path_or_text, unknown_fields="error"):
        """From a prototxt file path, or from prototxt text if it contains a newline or brace.
        A field caffe.proto's NetParameter does not have is an error, as in Caffe; unknown_fields=
        "warn" ignores such fields (files of Caffe forks), naming each in a warning."""
        text = str(path_or_text)
        if "\n" in text or "{" in text:
            return cls.from_message(check_fields(prototxt.loads(text), "NetParameter", unknown_fields))
        msg = check_fields(prototxt.load(text), "NetParameter", unknown_fields)
        return cls.from_message(msg, file=text)

    def validate(self, one_source=False):
        """Every layer has a name and a type, and every bottom is produced by an earlier layer;
        with one_source (a net filtered to one phase, as Caffe's Net::AppendTop sees it) a top is
        produced once, unless a layer writes it in place (top i named as bottom i)."""
        produced = set()
        for layer in self.layers:
            if not layer.type:
                raise layer.error("layer has no type")
            bottoms = layer.bottom
            for b in bottoms:
                if b not in produced:
                    raise layer.error(f"unknown bottom blob '{b}' (no earlier layer produces it)", "bottom")
            for i, t in enumerate(layer.top):
                in_place = i < len(bottoms) and bottoms[i] == t
                if one_source and t in produced and not in_place:
                    raise layer.error(f"top blob '{t}' produced by multiple sources", "top")
                produced.add(t)
        return self

    # --- views ---------------------------------------------------------------------------------
    def for_phase(self, phase, level=0, stages=()):
        """The net Caffe would instantiate in that phase (FilterNet)."""
        if phase not in PHASES:
            raise NetError(f"unknown phase '{phase}' (one of {', '.join(PHASES)})")
        state = self.extra.msg("state")
        level = state.get_int("level", level)
        stages = tuple(state.getall("stage")) or stages
        kept = [l for l in self.layers if l.included_in(phase, level, stages)]
        return NetSpec(kept, self.name, self.extra.copy(), self.file).validate(one_source=True)

    def layer(self, name):
        for l in self.layers:
            if l.name == name:
                return l
        raise NetError("no such layer", layer=name)

    def to_message(self):
        msg = Message([("name", self.name)] if self.name else [])
        msg.fields += [(k, v) for k, v in self.extra.fields]
        msg.fields += [("layer", l.msg) for l in self.layers]
        return msg

    def to_prototxt(self):
        return prototxt.dumps(self.to_message())

    def __eq__(self, other):
        return isinstance(other, NetSpec) and self.to_message() == other.to_message()

    __hash__ = None

    def __repr__(self):
        return f"NetSpec({self.name!r}, {len(self.layers)} layers)"


# --- the Python builder, after Caffe's net_spec ---------------------------------------------------
class Top:
    """One output blob of a layer function."""

    def __init__(self, fn, n):
        self.fn, self.n = fn, n


class Function:
    """A layer to be: its type, input Tops and parameters (kept as given, in order)."""

    def __init__(self, type_name, inputs, params):
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise TypeError(f"{type_name} input {i} is not a Top (got {type(inp).__name__})")
        self.type_name, self.inputs = type_name, list(inputs)
        self.ntop = params.pop("ntop", 1)
        self.in_place = params.pop("in_place", False)
        self.params = params
        self.tops = tuple(Top(self, i) for i in range(self.ntop))

    def param_msg(self):
        """The layer's *_param fields as a Message (for coord_map)."""
        field = PARAM_FIELDS.get(self.type_name)
        if field and field in self.params:
            return Message.from_py(self.params[field])
        own = {k: v for k, v in self.params.items() if not k.endswith("param")}
        return Message.from_py(own)


class _Layers:
    """`L.Convolution(bottom, ...)` returns a Top (or a tuple of Tops for ntop > 1)."""

    def __getattr__(self, type_name):
        def make(*inputs, **params):
            fn = Function(type_name, inputs, params)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        return make


L = _Layers()


class NetBuilder:
    """Assign Tops as attributes (`n.conv1 = L.Convolution(n.data, ...)`); `to_spec()` emits them."""

    def __init__(self):
        object.__setattr__(self, "tops", {})

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    __setitem__ = __setattr__

    def __getitem__(self, name):
        return self.tops[name]

    def to_spec(self, name=""):
        names = {id(v): k for k, v in self.tops.items()}
        state = {"names": names, "auto": Counter(), "layers": {}}
        for top in self.tops.values():
            _emit(top.fn if isinstance(top, Top) else top, state)
        return NetSpec([LayerSpec(m) for m in state["layers"].values()], name).validate()


def _top_name(top, state):
    names = state["names"]
    if id(top) not in names:
        state["auto"][top.fn.type_name] += 1
        names[id(top)] = f"{top.fn.type_name}{state['auto'][top.fn.type_name]}"
    return names[id(top)]


def _emit(fn, state):
    layers = state["layers"]
    if id(fn) in layers:
        return
    bottoms = []
    for inp in fn.inputs:
        _emit(inp.fn, state)
        bottoms.append(layers[id(inp.fn)].getall("top")[inp.n])
    msg = Message()
    tops = bottoms if fn.in_place else [_top_name(t, state) for t in fn.tops]
    if fn.ntop > 0:
        name = _top_name(fn.tops[0], state)
    else:
        state["auto"][fn.type_name] += 1
        name = f"{fn.type_name}{state['auto'][fn.type_name]}"
    msg.add("name", name)
    msg.add("type", fn.type_name)
    for b in bottoms:
        msg.add("bottom", b)
    for t in tops:
        msg.add("top", t)
    own = Message()
    field = _BUILDER_PARAM_FIELDS.get(fn.type_name)
    for k, v in fn.params.items():
        if k.endswith("param") or field is None:
            for sub in Message.from_py({k: v}).fields:
                msg.add(*sub)
        else:
            own.fields += Message.from_py({k: v}).fields
    if own.fields:
        existing = msg.get(field)
        if existing is None:
            msg.add(field, own)
        else:
            existing.fields += own.fields
    layers[id(fn)] = msg


# --- helpers that read like the reference net.py files -----------------------------------------
FCN_PARAM = (dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0))  # weights, bias


def conv_relu(bottom, nout, ks=3, stride=1, pad=1, group=None, param=FCN_PARAM):
    """Convolution + in-place ReLU. The fields print in the order kernel_size, stride, num_output,
    pad, group; a field given as None is left out; `param` is the blobs' lr/decay specs (FCN's
    lr 1/2, decay 1/0 by default; None: none)."""
    fields = dict(kernel_size=ks, stride=stride, num_output=nout, pad=pad, group=group)
    fields = {k: v for k, v in fields.items() if v is not None}
    if param is not None:
        fields["param"] = [dict(p) for p in param]
    conv = L.Convolution(bottom, **fields)
    return conv, L.ReLU(conv, in_place=True)


def max_pool(bottom, ks=2, stride=2):
    return L.Pooling(bottom, pool="MAX", kernel_size=ks, stride=stride)


def crop(top_from, top_to):
    """A Crop layer whose axis and offsets come from the graph (coord_map), as Caffe's helper."""
    from .coord_map import crop_params_between

    axis, offsets = crop_params_between(top_from, top_to)
    return L.Crop(top_from, top_to, crop_param=dict(axis=axis, offset=offsets))


__all__ = ["NetSpec", "LayerSpec", "NetBuilder", "L", "Top", "Function", "conv_relu", "max_pool",
           "crop", "Enum", "Message", "PrototxtError"]
