"""CaffeNet: a NetSpec run as an nn.Module, with Caffe's blob semantics.

Layers run in prototxt order; an in-place layer rewrites its blob name, so after a forward each
name holds the last writer's value, as in Caffe. Modules are registered under their layer names
(`net.conv1_1.weight` is blob 0 of layer conv1_1). Input layers, and Python data layers without
bottoms, are the net's inputs: the caller passes their tops by name.
"""
from pathlib import Path

import torch
from torch import nn

from . import border, fast, fusion, weight_formats
from . import layers as L
from .caffe import caffemodel
from .caffe.spec import NetSpec
from .data.release import TOP_CHANNELS
from .errors import CaffemodelError, NetError
from .plan import layer_steps, with_frees



class CaffeNet(nn.Module):
    def __init__(self, spec, phase="test", weights=None, input_shapes=None):
        super().__init__()
        if isinstance(spec, (str, Path)):
            spec = NetSpec.from_prototxt(spec)
        self.phase = phase
        self.spec = spec.for_phase(phase)
        self.inputs = {}  # top name -> declared shape (or None)
        self.loss_weights = {}  # top name -> loss weight
        self._modules_by_layer = {}
        self._build(dict(input_shapes or {}))
        self.set_plan(layer_steps(self))
        self.train(phase == "train")
        if weights is not None:
            self.load_caffemodel(weights)

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_prototxt(cls, path, weights=None, phase="test", input_shapes=None, unknown_fields="error"):
        """Any Caffe prototxt (V2, V1 or legacy inputs), optionally with weights (load_caffemodel);
        fields caffe.proto lacks are errors unless unknown_fields="warn" (NetSpec.from_prototxt)."""
        return cls(NetSpec.from_prototxt(path, unknown_fields), phase=phase, weights=weights,
                   input_shapes=input_shapes)

    def _build(self, input_shapes):
        shapes = {}
        for spec in self.spec.layers:
            if spec.type == "Input" or (spec.type in ("Python", "Data", "ImageData", "HDF5Data") and not spec.bottom):
                declared = self._input_shapes(spec, input_shapes)
                module = L.Input(spec, [], declared, declared=spec.type == "Input")
                for top, shape in zip(spec.top, declared):
                    self.inputs[top] = shape
                    shapes[top] = input_shapes.get(top, shape)
            else:
                cls = L.LAYER_TYPES.get(spec.type)
                if cls is None:
                    raise spec.error(f"unknown or unsupported layer type '{spec.type}'", "type")
                bottom_shapes = [shapes[b] for b in spec.bottom]
                module = cls(spec, bottom_shapes)
                for top, shape in zip(spec.top, self._infer_tops(module, bottom_shapes)):
                    shapes[top] = shape
            self._register(spec, module)
            weights = spec.msg.getall("loss_weight")
            default = 1.0 if spec.type in L.LOSS_TYPES else 0.0
            for i, top in enumerate(spec.top):
                w = float(weights[i]) if i < len(weights) else (default if i == 0 else 0.0)
                if w:
                    self.loss_weights[top] = w
        self.blob_shapes = shapes  # at the declared input sizes

    def set_plan(self, steps):
        """The steps forward() runs (plan.Step: the layers, or fused groups of them); each blob is
        freed after its last reader unless every blob is asked for (plan.with_frees)."""
        self._plan = with_frees(steps, set(self.outputs))

    @property
    def plan(self):
        return [step for step, _ in self._plan]

    @staticmethod
    def _input_shapes(spec, given):
        if spec.type == "Input":
            declared = [tuple(s.getall_int("dim")) for s in spec.params.getall("shape")]
            if len(declared) == 1 and len(spec.top) > 1:
                declared *= len(spec.top)
            if len(declared) != len(spec.top):
                raise spec.error(f"Input declares {len(declared)} shapes for {len(spec.top)} tops")
        elif spec.type == "Data":  # Caffe's DataLayer: batch_size crops and one label per image
            batch = spec.params.get_int("batch_size", 1)
            crop = spec.msg.msg("transform_param").get_int("crop_size", 0) or 224
            declared = [(batch, 3, crop, crop), (batch,)][:len(spec.top)]
        else:
            declared = [(1, TOP_CHANNELS.get(t, 3), 500, 500) for t in spec.top]  # a Python layer declares none
        return [L.check_blob_shape(spec, tuple(given.get(t, d)), f"input '{t}'") for t, d in zip(spec.top, declared)]

    def shapes_for(self, input_shapes):
        """Every blob's shape for the given input shapes ({top: shape}), computed on meta tensors."""
        shapes = {}
        for spec in self.spec.layers:
            module = self._modules_by_layer[spec.name]
            if isinstance(module, L.Input):
                for top in spec.top:
                    if top not in input_shapes:
                        raise NetError(f"no shape given for input '{top}'", layer=spec.name)
                    shapes[top] = tuple(input_shapes[top])
                continue
            for top, shape in zip(spec.top, self._infer_tops(module, [shapes[b] for b in spec.bottom])):
                shapes[top] = shape
        return shapes

    def _infer_tops(self, module, bottom_shapes):
        """Top shapes as the layer states them, else from a forward on meta tensors: no memory,
        no arithmetic."""
        known = module.top_shapes([tuple(s) for s in bottom_shapes])
        if known is not None:
            if len(known) != len(module.spec.top):
                raise NetError(f"{module.spec.type} gives {len(known)} top(s), the layer names "
                               f"{len(module.spec.top)}", layer=module.layer_name)
            return [tuple(s) for s in known]
        params = {k: torch.empty(v.shape, device="meta") for k, v in module.named_parameters()}
        bottoms = [torch.empty(s, device="meta") for s in bottom_shapes]
        try:
            tops = torch.func.functional_call(module, params, tuple(bottoms))
        except NetError:
            raise
        except (RuntimeError, ValueError, IndexError, TypeError, OverflowError, ZeroDivisionError) as e:
            raise NetError(f"cannot run on bottoms of shapes {bottom_shapes}: {e}", layer=module.layer_name) from None
        if len(tops) != len(module.spec.top):
            raise NetError(f"{module.spec.type} gives {len(tops)} top(s), the layer names "
                           f"{len(module.spec.top)}", layer=module.layer_name)
        return [tuple(t.shape) for t in tops]

    def _register(self, spec, module):
        name = spec.name.replace(".", "_") or f"layer{len(self._modules_by_layer)}"
        if name in self._modules or name in self._modules_by_layer:
            raise spec.error("two layers share this name")
        if hasattr(self, name):
            raise spec.error("this layer name clashes with an attribute of CaffeNet; rename the layer")
        self.add_module(name, module)
        self._modules_by_layer[spec.name] = module

    # --- access ------------------------------------------------------------------------------
    def layer(self, name):
        """The module of the Caffe layer `name`."""
        try:
            return self._modules_by_layer[name]
        except KeyError:
            raise NetError("no such layer in this net", layer=name) from None

    def layer_modules(self):
        """(Caffe layer name, module) in net order."""
        return list(self._modules_by_layer.items())

    def params_by_layer(self):
        """{layer name: [parameter blobs in Caffe's order]} for layers that have any."""
        return {n: m.blobs() for n, m in self._modules_by_layer.items() if m.blobs()}

    def param_keys(self):
        """{state_dict key: (layer name, shape)} of every parameter blob, in net and Caffe order."""
        names = {id(m): n for n, m in self.named_children()}
        return {f"{names[id(m)]}.{b}": (layer, tuple(getattr(m, b).shape))
                for layer, m in self._modules_by_layer.items() for b in m.blob_names if getattr(m, b, None) is not None}

    @property
    def outputs(self):
        """Blobs that no later layer consumes (Caffe's net outputs)."""
        available = {}  # an ordered set
        for spec in self.spec.layers:
            for b in spec.bottom:
                available.pop(b, None)
            for t in spec.top:
                available.setdefault(t)
        return list(available)

    # --- running -----------------------------------------------------------------------------
    def forward(self, return_blobs=False, **inputs):
        """{output: tensor} of the net on `inputs` (tensors by input name). return_blobs: False,
        True (every blob), or names of blobs to return besides the outputs (kept from being freed;
        the solver's loss tops). A border trunk (border.py) whose inner blobs are asked for runs
        its layers on the full maps, each top kept."""
        every = return_blobs is True
        wanted = [] if isinstance(return_blobs, bool) else [b for b in return_blobs if b not in self.outputs]
        missing = [t for t in self.inputs if t not in inputs]
        unknown = [t for t in inputs if t not in self.inputs]
        if missing or unknown:
            raise NetError(f"net inputs are {list(self.inputs)}; missing {missing}, unknown {unknown}")
        blobs = {}
        for step, frees in self._plan:
            module = step.module
            if isinstance(module, L.Input):
                for top in step.top:
                    x = inputs[top]
                    if not torch.is_tensor(x):
                        raise NetError(f"input '{top}' must be a tensor", layer=step.name)
                    module.check(top, x)
                    self._check_dtype(top, x, step.name)
                    blobs[top] = x
                continue
            if isinstance(module, border.Trunk) and (every or not module.inner_tops.isdisjoint(wanted)):
                # a blob inside the trunk asked for: its layers on the full maps, each top kept
                for inner in module.steps:
                    for name, value in zip(inner.top, inner.module(*[blobs[b] for b in inner.bottom])):
                        blobs[name] = value
                continue
            tops = module(*[blobs[b] for b in step.bottom])
            for name, value in zip(step.top, tops):
                blobs[name] = value
            if not every:
                for name in frees:
                    if name not in wanted:
                        del blobs[name]
        if every:
            return blobs
        return {name: blobs[name] for name in [*self.outputs, *wanted]}

    def _check_dtype(self, top, x, layer):
        """A floating input must have the parameters' dtype (convert the net with .to(dtype))."""
        param = next(self.parameters(), None)
        if param is not None and x.is_floating_point() and x.dtype != param.dtype:
            raise NetError(f"input '{top}' is {x.dtype}, the net's parameters are {param.dtype}; "
                           f"convert the input or the net (net.to({x.dtype}))", layer=layer)

    def objective(self, blobs):
        """Caffe's objective: the sum of loss tops times their loss weights."""
        total = None
        for top, w in self.loss_weights.items():
            term = blobs[top].sum() * w
            total = term if total is None else total + term
        if total is None:
            raise NetError("this net has no loss (no loss layer or loss_weight)")
        return total

    # --- weights -----------------------------------------------------------------------------
    def load_caffemodel(self, source, strict=True):
        """Copy weights from a weights file (.caffemodel, .safetensors or .pt state_dict, told apart
        by content: weight_formats) or a {layer: [arrays]} dict, matched by layer name.

        Everything is checked before anything is assigned. Shapes must match as in Caffe's
        CopyTrainedLayersFrom (Blob::ShapeEquals): exactly, or a legacy 4-D (num, channels,
        height, width) blob against the parameter's shape padded with leading 1s; strict=True raises
        on any missing or unexpected layer, strict=False returns (missing: net layers without
        weights, unexpected: file layers the net lacks).
        """
        path = str(source) if isinstance(source, (str, Path)) else None
        blobs = weight_formats.read_blobs(source, self.param_keys(), strict) if path else source
        plan, missing, unexpected = [], [], []
        own = self.params_by_layer()
        for name, arrays in blobs.items():
            if name not in own:
                if len(arrays):
                    unexpected.append(name)
                continue
            params = own[name]
            if len(arrays) != len(params):
                raise CaffemodelError(f"{len(arrays)} blobs in the file, the net's layer has {len(params)}",
                                      file=path, layer=name)
            for i, (a, p) in enumerate(zip(arrays, params)):
                if not weight_formats.shape_equals(a.shape, p.shape):
                    raise CaffemodelError(f"blob {i} has shape {tuple(a.shape)}; the net expects "
                                          f"{tuple(p.shape)} (Caffe copies a blob only into its own "
                                          "shape)", file=path, layer=name)
                plan.append((p, a))
        missing = [n for n in own if n not in blobs]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"net layers with parameters not in the file: {missing}")
            if unexpected:
                parts.append(f"file layers with blobs not in the net: {unexpected}")
            raise CaffemodelError("; ".join(parts), file=path)
        with torch.no_grad():
            for p, a in plan:
                p.copy_(torch.as_tensor(a).reshape(p.shape))
        return missing, unexpected

    load_weights = load_caffemodel  # the same loader under a name that does not suggest one format

    def save_caffemodel(self, path):
        """Write the parameters as a V2 .caffemodel Caffe can read."""
        layers = {}
        for name, module in self._modules_by_layer.items():
            blobs = module.blobs()
            if blobs:
                layers[name] = (module.spec.type, [b.detach().cpu().numpy() for b in blobs])
        caffemodel.write(path, layers, name=self.spec.name)

    def fuse(self, enabled=True, impl="ext"):
        """fusion.fuse(self, ...): Deconvolution -> Crop (-> Eltwise SUM) through ops.deconv_crop_sum."""
        return fusion.fuse(self, enabled, impl)

    def to_prototxt(self):
        return self.spec.to_prototxt()

    def optimize(self, **kw):
        """fast.optimize(self, ...): the fast inference plan (see fcn_caffe_repro/fast/)."""
        return fast.optimize(self, **kw)
