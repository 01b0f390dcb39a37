"""One nn.Module per Caffe layer type, with Caffe's semantics where they differ from PyTorch's.

Every layer is built from its `LayerSpec` and the shapes of its bottoms (so that parameter
shapes are known before any weights are loaded), and `forward(*bottoms)` returns a tuple of
tops. Parameter blobs are registered as `weight` (blob 0) and `bias` (blob 1), in Caffe's blob
order, listed in `blob_names`; `lr_mults` carries each blob's (lr_mult, decay_mult).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import ops, train_ops
from .errors import NetError

FLT_MIN = float(np.finfo(np.float32).tiny)  # Caffe clips probabilities at FLT_MIN, also in double
FLT_MAX = float(np.finfo(np.float32).max)


INT_MAX = 2**31 - 1  # Caffe's blob counts and its int32/uint32 size fields end here
_MINIMUM = {"kernel": 1, "stride": 1, "pad": 0, "dilation": 1}


def _bounded(spec, params, field, value, lo, hi=INT_MAX):
    """`value` of `field` if lo <= value <= hi, else a NetError naming layer, field and place."""
    if not lo <= value <= hi:
        raise spec.error(f"{field}: {value} is out of range (must be {lo} to {hi})", field, params)
    return value


def _count(params, field, spec, lo=1, default=None):
    """A size field (num_output, group, local_size...): an integer in [lo, INT_MAX]; absent and
    no default is an error."""
    value = params.get_int(field, default)
    if value is None:
        raise spec.error(f"{field} must be specified", field, params)
    return _bounded(spec, params, field, value, lo)


def _pair(params, name, default, spec):
    """Caffe's repeated spatial field (`pad: 1` or `pad: 1 pad: 2`) or its _h/_w form, as (h, w),
    each value in Caffe's range for the field (kernel and stride at least 1, pad at least 0)."""
    field = "kernel_size" if name == "kernel" else name
    values = params.getall_int(field)
    lo = _MINIMUM[name]
    for key in (name + "_h", name + "_w"):
        if params.has(key):
            _bounded(spec, params, key, params.get_int(key), lo)
    for v in values:
        _bounded(spec, params, field, v, lo)
    h, w = params.get_int(name + "_h"), params.get_int(name + "_w")
    if h is not None or w is not None:
        if values:
            raise spec.error(f"either {name} or {name}_h/_w should be specified, not both", field, params)
        if h is None or w is None:
            raise spec.error(f"{name}_h and {name}_w must be given together", name + "_h", params)
        return h, w
    if not values:
        if default is None:
            raise spec.error(f"{name} size must be specified", field, params)
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise spec.error(f"{len(values)} values of {name} given for 2 spatial axes", field, params)


def check_blob_shape(spec, shape, what="blob"):
    """Caffe's Blob::Reshape checks, before any memory is asked for: no negative axis and at
    most INT_MAX elements."""
    count = 1
    for d in shape:
        if d < 0:
            raise spec.error(f"{what} shape {tuple(shape)} has a negative axis")
        count *= d
    if count > INT_MAX:
        raise spec.error(f"{what} shape {tuple(shape)} has {count} elements, more than INT_MAX ({INT_MAX}) "
                         "as Caffe's blobs allow")
    return tuple(shape)


class CaffeLayer(nn.Module):
    """Base: remembers the spec, the learning-rate multipliers and the blob names."""

    blob_names = ()

    def __init__(self, spec, bottom_shapes):
        super().__init__()
        self.spec = spec
        self.layer_name = spec.name
        self.bottom_shapes = [tuple(s) for s in bottom_shapes]
        self.lr_mults = []

    def _check_bottoms(self, n_min, n_max=None):
        n = len(self.bottom_shapes)
        n_max = n_min if n_max is None else n_max
        if not n_min <= n <= n_max:
            want = n_min if n_min == n_max else f"{n_min} to {n_max}"
            raise self.spec.error(f"{self.spec.type} takes {want} bottom(s), got {n}")

    def _make_blobs(self, shapes, fillers):
        """Register parameter blobs filled as Caffe's fillers would, with their lr/decay mults."""
        specs = self.spec.lr_mults()
        if len(specs) > len(shapes):
            raise self.spec.error(f"{len(specs)} param specs given for {len(shapes)} parameter blobs")
        for name, shape in zip(self.blob_names, shapes):
            check_blob_shape(self.spec, shape, f"parameter blob '{name}'")
        for i, (name, shape, filler) in enumerate(zip(self.blob_names, shapes, fillers)):
            mults = specs[i] if i < len(specs) else (1.0, 1.0)
            # Caffe computes no gradient for a blob with lr_mult 0 (Net::Init's param_need_backward)
            self.register_parameter(name, nn.Parameter(fill(filler, shape, self.spec), requires_grad=mults[0] != 0))
            self.lr_mults.append(mults)

    def blobs(self):
        return [getattr(self, n) for n in self.blob_names if getattr(self, n, None) is not None]

    def top_shapes(self, bottom_shapes):
        """The tops' shapes when known without running the layer (None: CaffeNet runs it on meta
        tensors); element-wise layers say so, a shape inference per layer costs milliseconds."""
        return None

    def extra_repr(self):
        return f"'{self.layer_name}'"


def fill(filler, shape, spec):
    """Caffe's fillers: constant (default 0), gaussian, uniform, xavier, msra, bilinear."""
    shape = tuple(int(s) for s in shape)
    kind = filler.get_str("type", "constant")
    t = torch.empty(shape, dtype=torch.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    fan_out = shape[0] * int(np.prod(shape[2:])) if len(shape) > 1 else shape[0]
    norm = filler.get_enum("variance_norm", ["FAN_IN", "FAN_OUT", "AVERAGE"], "FAN_IN")
    n = {"FAN_IN": fan_in, "FAN_OUT": fan_out, "AVERAGE": (fan_in + fan_out) / 2}[norm]
    if kind == "constant":
        return t.fill_(filler.get_float("value", 0.0))
    if kind == "gaussian":
        return t.normal_(filler.get_float("mean", 0.0), filler.get_float("std", 1.0))
    if kind == "uniform":
        return t.uniform_(filler.get_float("min", 0.0), filler.get_float("max", 1.0))
    if kind == "xavier":
        a = math.sqrt(3.0 / n)
        return t.uniform_(-a, a)
    if kind == "msra":
        return t.normal_(0.0, math.sqrt(2.0 / n))
    if kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise spec.error("bilinear filler needs a 4-D blob with square kernels")
        return torch.from_numpy(np.broadcast_to(bilinear_kernel(shape[3]), shape).copy())
    raise spec.error(f"unsupported filler type '{kind}'")


def bilinear_kernel(size):
    """The size x size bilinear upsampling kernel of Caffe's BilinearFiller and FCN's surgery."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.arange(size, dtype=np.float64)
    k1 = 1 - np.abs(og - center) / factor
    return np.outer(k1, k1).astype(np.float32)


# --- data and identity-like layers ------------------------------------------------------------
class Input(CaffeLayer):
    """Declares the net's inputs; the caller supplies the tensors (checked against the shapes)."""

    def __init__(self, spec, bottom_shapes, shapes, declared=True):
        super().__init__(spec, bottom_shapes)
        self.shapes = [tuple(s) for s in shapes]
        self.declared = declared  # False for data layers, whose shapes are only a guess

    def check(self, top, x):
        want = self.shapes[self.spec.top.index(top)]
        if self.declared and want and (x.dim() != len(want) or (len(want) > 1 and x.shape[1] != want[1])):
            raise NetError(f"input '{top}' has shape {tuple(x.shape)}; the net expects "
                           f"{len(want)} dims with {want[1] if len(want) > 1 else '?'} channels "
                           f"(declared shape {want})", layer=self.layer_name)


class ReLU(CaffeLayer):
    def __init__(self, spec, bottom_shapes):
        super().__init__(spec, bottom_shapes)
        self._check_bottoms(1)
        self.negative_slope = spec.params.get_float("negative_slope", 0.0)

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        if self.negative_slope == 0:
            return (F.relu(x),)
        return (F.leaky_relu(x, self.negative_slope),)


class Dropout(CaffeLayer):
    """Element-wise dropout scaled by 1/(1-p) at train time (scale_train: true), identity at test."""

    def __init__(self, spec, bottom_shapes):
        super().__init__(spec, bottom_shapes)
        self._check_bottoms(1)
        self.ratio = spec.params.get_float("dropout_ratio", 0.5)
        self.scale_train = spec.params.get_bool("scale_train", True)
        if not 0 <= self.ratio < 1:
            raise spec.error("dropout_ratio must be in [0, 1)")

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        scale = 1.0 / (1.0 - self.ratio)
        if not self.training:
            return (x if self.scale_train else x / scale,)
        mask = (torch.rand_like(x) >= self.ratio).to(x.dtype)
        return (x * mask * scale if self.scale_train else x * mask,)


class Split(CaffeLayer):
    def __init__(self, spec, bottom_shapes):
        super().__init__(spec, bottom_shapes)
        self._check_bottoms(1)

    def top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]] * len(self.spec.top)

    def forward(self, x):
        return (x,) * len(self.spec.top)


class Silence(CaffeLayer):
    def forward(self, *xs):
        return ()


class Flatten(CaffeLayer):
    def __init__(self, spec, bottom_shapes):
        super().__init__(spec, bottom_shapes)
        self.axis = spec.params.get_int("axis", 1)
        self.end_axis = spec.params.get_int("end_axis", -1)

    def forward(self, x):
        return (torch.flatten(x, self.axis, self.end_axis),)


# --- convolution ----------------------------------------------------------------------------
class _ConvBase(CaffeLayer):
    blob_names = ("weight", "bias")

    def __init__(self, spec, bottom_shapes):
        super().__init__(spec, bottom_shapes)
        self._check_bottoms(1)
        p = spec.params
        if p.get_int("axis", 1) != 1:
            raise spec.error("only channel axis 1 is supported")
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise spec.error(f"2-D (N, C, H, W) bottoms only, got shape {shape}")
        self.num_output = _count(p, "num_output", spec)
        self.kernel = _pair(p, "kernel", None, spec)
        self.stride = _pair(p, "stride", 1, spec)
        self.pad = _pair(p, "pad", 0, spec)
        dil = [_bounded(spec, p, "dilation", d, 1) for d in p.getall_int("dilation")] or [1]
        self.dilation = (dil[0], dil[-1]) if len(dil) <= 2 else None
        if self.dilation is None:
            raise spec.error("at most 2 dilation values for 2 spatial axes", "dilation", p)
        self.group = _count(p, "group", spec, default=1)
        self.bias_term = p.get_bool("bias_term", True)
        self.channels = shape[1]
        if self.channels % self.group or self.num_output % self.group:
            raise spec.error(f"group {self.group} must divide input channels {self.channels} "
                             f"and num_output {self.num_output}")
        shapes = [self.weight_shape()] + ([(self.num_output,)] if self.bias_term else [])
        self._make_blobs(shapes, [p.msg("weight_filler"), p.msg("bias_filler")])
        if not self.bias_term:
            self.bias = None

    def _check_input(self, x):
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise NetError(f"bottom '{self.spec.bottom[0]}' has shape {tuple(x.shape)}, expected "
                           f"(N, {self.channels}, H, W)", layer=self.layer_name)


class Convolution(_ConvBase):
    def weight_shape(self):
        return (self.num_output, self.channels // self.group) + self.kernel

    def output_shape(self, x_shape, pad=None):
        """The top's shape for a bottom of shape x_shape (N x C x H x W), padded by the layer's
        pad or `pad`."""
        pad = self.pad if pad is None else pad
        size = [(x_shape[2 + i] + 2 * pad[i] - self.dilation[i] * (self.kernel[i] - 1) - 1) // self.stride[i] + 1
                for i in range(2)]
        return (x_shape[0], self.num_output, *size)

    def forward(self, x):
        self._check_input(x)
        if train_ops.wants_grad(x, self.weight, self.bias):
            return (train_ops.conv2d(x, self.weight, self.bias, self.stride, self.pad, self.dilation, self.group,
                                     self.output_shape(x.shape)),)
        return (F.conv2d(x, self.weight, self.bias, self.stride, self.pad, self.dilation, self.group),)


class Deconvolution(_ConvBase):
    """Caffe's weight layout C_in x C_out/group x kh x kw is conv_transpose2d's; output size
    stride*(H-1) + dilation*(k-1) + 1 - 2*pad is too."""

    def weight_shape(self):
        return (self.channels, self.num_output // self.group) + self.kernel

    def forward(self, x):
        self._check_input(x)
        return (F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.pad, 0, self.group,
                                   self.dilation),)

    def is_diagonal(self):
        """True when the weights are exactly channel-diagonal (a depthwise deconvolution)."""
        w = self.weight
        if self.group != 1 or w.shape[0] != w.shape[1]:
            return False
        eye = torch.eye(w.shape[0], dtype=torch.bool, device=w.device)[:, :, None, None]
        return bool((w.detach().masked_fill(eye, 0) == 0).all())


# --- pooling --------------------------------------------------------------------------------
def caffe_pool_size(size, kernel, stride, pad):
    """Caffe rounds up, then drops a last window that would start inside the padding."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1  # integer ceil: exact, and symbolic sizes (export) stay symbolic
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


class Pooling(CaffeLayer):
    """MAX and AVE pooling with Caffe's output size, window clipping and AVE divisor."""

    def __init__(self, spec, bottom_shapes):
        super().__init__(spec, bottom_shapes)
        self._check_bottoms(1)
        p = spec.params
        self.method = p.get_enum("pool", ["MAX", "AVE", "STOCHASTIC"], "MAX")
        if self.method == "STOCHASTIC":
            raise spec.error("STOCHASTIC pooling is not supported")
        self.global_pooling = p.get_bool("global_pooling", False)
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise spec.error(f"pooling needs a 4-D bottom, got shape {shape}")
        if self.global_pooling:
            if p.has("kernel_size") or p.has("kernel_h"):
                raise spec.error("with global_pooling the kernel size cannot be specified")
            self.kernel = None
        else:
            self.kernel = _pair(p, "kernel", None, spec)
        self.pad = _pair(p, "pad", 0, spec)
        self.stride = _pair(p, "stride", 1, spec)
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise spec.error("with global_pooling pad must be 0 and stride 1")
        if self.kernel and any(pd >= k for pd, k in zip(self.pad, self.kernel)):
            raise spec.error("pad must be smaller than the kernel")

    def forward(self, x):
        if self.method == "MAX" and train_ops.wants_grad(x):
            kernel = self.byte_path_kernel(x)
            if kernel is not None:
                return (ops.max_pool(x, kernel, self.stride),)
            return (train_ops.recomputed(self.pool, x),)
        return (self.pool(x),)

    def byte_path_kernel(self, x):
        """The window when the training path's MAX pooling (ops.max_pool: a byte per pooled element
        for the backward) computes this layer on x; else None."""
        kernel, _ = self._geometry(x)
        return kernel if self.method == "MAX" and ops.max_pool_applies(x, kernel, self.stride, self.pad) else None

    def _geometry(self, x):
        """The window and Caffe's output size (rows, cols) for bottom x; a clear error if x does
        not fit."""
        if x.dim() != 4:
            raise NetError(f"pooling needs a 4-D bottom, got shape {tuple(x.shape)}", layer=self.layer_name)
        kernel = tuple(x.shape[2:]) if self.global_pooling else self.kernel
        (kh, kw), (sh, sw), (ph, pw) = kernel, self.stride, self.pad
        oh, ow = caffe_pool_size(x.shape[2], kh, sh, ph), caffe_pool_size(x.shape[3], kw, sw, pw)
        if oh <= 0 or ow <= 0:
            raise NetError(f"bottom {tuple(x.shape)} is smaller than the pooling window", layer=self.layer_name)
        return kernel, (oh, ow)

    def pool(self, x):
        """The pooled top."""
        kernel, (oh, ow) = self._geometry(x)
        if self.method == "MAX":
            return self._max(x, kernel, oh, ow)
        return self._ave(x, kernel, oh, ow)

    def _padded(self, x, kernel, oh, ow, value):
        """Pad explicitly so every Caffe window lies inside; the extra cells never win or count."""
        (kh, kw), (sh, sw), (ph, pw) = kernel, self.stride, self.pad
        bottom = max(0, (oh - 1) * sh + kh - x.shape[2] - ph)
        right = max(0, (ow - 1) * sw + kw - x.shape[3] - pw)
        return F.pad(x, (pw, right, ph, bottom), value=value)

    def _max(self, x, kernel, oh, ow):
        direct = F.max_pool2d(x, kernel, self.stride, self.pad, ceil_mode=True) \
            if all(2 * p <= k for p, k in zip(self.pad, kernel)) else None
        if direct is not None and direct.shape[2:] == (oh, ow):
            return direct
        xp = self._padded(x, kernel, oh, ow, -FLT_MAX)
        return F.max_pool2d(xp, kernel, self.stride)[:, :, :oh, :ow]

    def _ave(self, x, kernel, oh, ow):
        (kh, kw), (sh, sw), (ph, pw) = kernel, self.stride, self.pad
        sums = F.avg_pool2d(self._padded(x, kernel, oh, ow, 0.0), kernel, self.stride,
                            divisor_override=1)[:, :, :oh, :ow]

        def sizes(n_out, k, s, p, size):
            start = np.arange(n_out) * s - p
            return np.minimum(start + k, size + p) - start

        div = np.outer(sizes(oh, kh, sh, ph, x.shape[2]), sizes(ow, kw, sw, pw, x.shape[3]))
        return sums / torch.as_tensor(div, dtype=x.dtype, device=x.device)


# --- normalisation and pointwise ------------------------------------------------------------
class LRN(CaffeLayer):
    """ACROSS_CHANNELS: x * (k + alpha/n * sum of squares over n channels)^-beta.
    WITHIN_CHANNEL: x * (1 + alpha * mean of squares over an n x n window)^-beta (no k, as Caffe)."""

    def __init__(self, spec, bottom_shapes):
        super().__init__(spec, bottom_shapes)
        self._check_bottoms(1)
        p = spec.params
        self.size = _count(p, "local_size", spec, default=5)
        if self.size % 2 == 0:
            raise spec.error("LRN only supports odd values for local_size")
        self.alpha, self.beta, self.k = p.get_float("alpha", 1.0), p.get_float("beta", 0.75), p.get_float("k", 1.0)
        self.region = p.get_enum("norm_region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"], "ACROSS_CHANNELS")

    def forward(self, x):
        pad = (self.size - 1) // 2
        sq = x * x
        if self.region == "ACROSS_CHANNELS":
            # shifted channel slices summed: plain ops every exporter maps (ONNX has no divisor_override)
            padded, channels = F.pad(sq, (0, 0, 0, 0, pad, pad)), x.shape[1]
            summed = padded[:, :channels]
            for i in range(1, self.size):
                summed = summed + padded[:, i:i + channels]
            scale = self.k + (self.alpha / self.size) * summed
        else:
            mean = F.avg_pool2d(sq, self.size, 1, pad, count_include_pad=True)
            scale = 1.0 + self.alpha * mean
        return (x * scale.pow(-self.beta),)


class Crop(CaffeLayer):
    """Crops bottom 0 to bottom 1's shape from `axis` on, at the given offsets."""

    def __init__(self, spec, bottom_shapes):
        super().__init__(spec, bottom_shapes)
        self._check_bottoms(2)
        p = spec.params
        a, b = self.bottom_shapes
        axis = p.get_int("axis", 2)
        self.axis = axis + len(a) if axis < 0 else axis
        if not 0 <= self.axis < len(a) or len(a) != len(b):
            raise spec.error(f"crop axis {axis} does not fit bottoms of shapes {a} and {b}")
        offsets = p.getall_int("offset")
        n = len(a) - self.axis
        if len(offsets) not in (0, 1, n):
            raise spec.error(f"crop gives {len(offsets)} offsets for {n} cropped axes (1 or {n} expected)")
        self.offsets = [0] * n if not offsets else offsets * n if len(offsets) == 1 else offsets
        if any(o < 0 for o in self.offsets):
            raise spec.error("crop offsets must be non-negative")
        self._check_fit(a, b)

    def _check_fit(self, a, b):
        for i, off in enumerate(self.offsets):
            ax = self.axis + i
            if b[ax] + off > a[ax]:
                raise NetError(f"crop of '{self.spec.bottom[0]}' {tuple(a)} to '{self.spec.bottom[1]}' "
                               f"{tuple(b)}: size {b[ax]} + offset {off} exceeds {a[ax]} on axis {ax}",
                               layer=self.layer_name)

    def forward(self, x, ref):
        self._check_fit(tuple(x.shape), tuple(ref.shape))
        index = [slice(None)] * self.axis
        index += [slice(o, o + ref.shape[self.axis + i]) for i, o in enumerate(self.offsets)]
        return (x[tuple(index)],)


class Eltwise(CaffeLayer):
    """SUM (with coeffs), PROD, MAX. MAX follows Caffe's strict comparisons: of the first two
    bottoms a tie goes to the second, a later bottom must be strictly greater to win."""

    def __init__(self, spec, bottom_shapes):
        super().__init__(spec, bottom_shapes)
        p = spec.params
        if len(self.bottom_shapes) < 2:
            raise spec.error("Eltwise needs at least 2 bottoms")
        if len(set(self.bottom_shapes)) != 1:
            raise spec.error(f"Eltwise bottoms must have equal shapes, got {self.bottom_shapes}")
        self.op = p.get_enum("operation", ["PROD", "SUM", "MAX"], "SUM")
        self.coeffs = p.getall_float("coeff")
        if self.coeffs and (self.op != "SUM" or len(self.coeffs) != len(self.bottom_shapes)):
            raise spec.error("Eltwise coeffs are for SUM only, one per bottom")

    def forward(self, *xs):
        if any(x.shape != xs[0].shape for x in xs[1:]):  # not a set: traced sizes (export) are tensors
            raise NetError(f"Eltwise bottoms must have equal shapes, got {[tuple(x.shape) for x in xs]}",
                           layer=self.layer_name)
        if self.op == "SUM":
            out = xs[0] * self.coeffs[0] if self.coeffs and self.coeffs[0] != 1 else xs[0]
            for i, x in enumerate(xs[1:], 1):
                c = self.coeffs[i] if self.coeffs else 1.0
                out = out + x if c == 1 else out + c * x
            return (out,)
        if self.op == "PROD":
            out = xs[0]
            for x in xs[1:]:
                out = out * x
            return (out,)
        with torch.no_grad():
            idx = (xs[0] <= xs[1]).long()  # a > b keeps a; a tie goes to b
            best = torch.where(idx.bool(), xs[1], xs[0])
            for i, x in enumerate(xs[2:], 2):
                win = x > best
                idx = torch.where(win, torch.full_like(idx, i), idx)
                best = torch.where(win, x, best)
        return (torch.stack(xs).gather(0, idx.unsqueeze(0)).squeeze(0),)


class Scale(CaffeLayer):
    """y = x * scale (+ bias), scale a learned blob (1 bottom) or bottom 1, broadcast from `axis`."""

    blob_names = ("weight", "bias")

    def __init__(self, spec, bottom_shapes):
        super().__init__(spec, bottom_shapes)
        self._check_bottoms(1, 2)
        p = spec.params
        x = self.bottom_shapes[0]
        axis = p.get_int("axis", 1)
        self.axis = axis + len(x) if axis < 0 else axis
        if len(self.bottom_shapes) == 2:
            shape = self.bottom_shapes[1]
        else:
            num_axes = p.get_int("num_axes", 1)
            end = len(x) if num_axes == -1 else self.axis + num_axes
            shape = x[self.axis:end]
        if tuple(x[self.axis:self.axis + len(shape)]) != tuple(shape):
            raise spec.error(f"scale shape {shape} does not match bottom {x} from axis {self.axis}")
        self.scale_shape = tuple(shape)
        self.bias_term = p.get_bool("bias_term", False)
        shapes, fillers = [], []
        if len(self.bottom_shapes) == 1:
            filler = p.msg("filler") if p.has("filler") else _constant(1.0)
            shapes, fillers = [shape], [filler]
        if self.bias_term:
            shapes.append(shape)
            fillers.append(p.msg("bias_filler"))
        if len(self.bottom_shapes) == 2:
            self.blob_names = ("bias",) if self.bias_term else ()
        self._make_blobs(shapes, fillers)

    def _bcast(self, t, x):
        return t.reshape(self.scale_shape + (1,) * (x.dim() - self.axis - len(self.scale_shape)))

    def forward(self, x, *scale):
        s = scale[0] if scale else self.weight
        out = x * self._bcast(s, x)
        if self.bias_term:
            out = out + self._bcast(self.bias, x)
        return (out,)


def _constant(value):
    from .caffe.prototxt import Message
    return Message([("type", "constant"), ("value", value)])


class Concat(CaffeLayer):
    def __init__(self, spec, bottom_shapes):
        super().__init__(spec, bottom_shapes)
        p = spec.params
        axis = p.get_int("concat_dim") if p.has("concat_dim") else p.get_int("axis", 1)
        nd = len(self.bottom_shapes[0])
        self.axis = axis + nd if axis < 0 else axis
        for s in self.bottom_shapes[1:]:
            if len(s) != nd or any(a != b for i, (a, b) in enumerate(zip(s, self.bottom_shapes[0])) if i != self.axis):
                raise spec.error(f"Concat bottoms {self.bottom_shapes} differ outside axis {self.axis}")

    def forward(self, *xs):
        return (torch.cat(xs, self.axis),)


class InnerProduct(CaffeLayer):
    """Flattens from `axis` and multiplies by weight N x K (K x N with transpose: true)."""

    blob_names = ("weight", "bias")

    def __init__(self, spec, bottom_shapes):
        super().__init__(spec, bottom_shapes)
        self._check_bottoms(1)
        p = spec.params
        x = self.bottom_shapes[0]
        axis = p.get_int("axis", 1)
        self.axis = axis + len(x) if axis < 0 else axis
        if not 0 <= self.axis < len(x):  # Caffe's CanonicalAxisIndex
            raise spec.error(f"axis {axis} out of range for a {len(x)}-axis bottom {x}", "axis", p)
        self.num_output = _count(p, "num_output", spec)
        self.k = int(np.prod(x[self.axis:]))
        self.transpose = p.get_bool("transpose", False)
        self.bias_term = p.get_bool("bias_term", True)
        wshape = (self.k, self.num_output) if self.transpose else (self.num_output, self.k)
        shapes = [wshape] + ([(self.num_output,)] if self.bias_term else [])
        self._make_blobs(shapes, [p.msg("weight_filler"), p.msg("bias_filler")])
        if not self.bias_term:
            self.bias = None

    def forward(self, x):
        flat = x.flatten(self.axis)
        if flat.shape[-1] != self.k:
            raise NetError(f"bottom {tuple(x.shape)} flattens to {flat.shape[-1]} inputs, expected {self.k}",
                           layer=self.layer_name)
        w = self.weight.t() if self.transpose else self.weight
        return (F.linear(flat, w, self.bias),)


class Softmax(CaffeLayer):
    def __init__(self, spec, bottom_shapes):
        super().__init__(spec, bottom_shapes)
        self.axis = spec.msg.msg("softmax_param").get_int("axis", 1)

    def forward(self, x):
        return (torch.softmax(x, self.axis),)


# --- losses ---------------------------------------------------------------------------------
class _SoftmaxLossFn(torch.autograd.Function):
    """Forward clips each probability at FLT_MIN; backward is (softmax - onehot) / normalizer,
    unclipped, exactly as Caffe's SoftmaxWithLossLayer."""

    @staticmethod
    def forward(ctx, logits, labels, valid, axis, mode):
        prob = torch.softmax(logits, axis)
        picked = prob.gather(axis, labels.unsqueeze(axis)).squeeze(axis)
        logp = torch.log(picked.clamp_min(FLT_MIN))
        loss = -(logp * valid).sum()
        outer = int(np.prod(logits.shape[:axis]))
        inner = int(np.prod(logits.shape[axis + 1:]))
        count = valid.sum()
        norm = {"FULL": outer * inner, "VALID": count, "BATCH_SIZE": outer, "NONE": 1}[mode]
        norm = torch.clamp(torch.as_tensor(norm, dtype=logits.dtype, device=logits.device), min=1.0)
        ctx.save_for_backward(prob, labels, valid, norm)
        ctx.axis = axis
        return loss / norm, prob

    @staticmethod
    def backward(ctx, grad_loss, grad_prob):
        prob, labels, valid, norm = ctx.saved_tensors
        grad = prob.clone()
        grad.scatter_add_(ctx.axis, labels.unsqueeze(ctx.axis), -torch.ones_like(prob).narrow(ctx.axis, 0, 1))
        grad = grad * valid.unsqueeze(ctx.axis) * (grad_loss / norm)
        if grad_prob is not None:
            # the prob top, if used downstream, backpropagates through the softmax
            s = (grad_prob * prob).sum(ctx.axis, keepdim=True)
            grad = grad + prob * (grad_prob - s)
        return grad, None, None, None, None


class SoftmaxWithLoss(CaffeLayer):
    """Multinomial logistic loss of the softmax; ignore_label; Caffe's normalization modes."""

    def __init__(self, spec, bottom_shapes):
        super().__init__(spec, bottom_shapes)
        self._check_bottoms(2)
        lp = spec.msg.msg("loss_param")
        self.ignore_label = lp.get_int("ignore_label")
        modes = ["FULL", "VALID", "BATCH_SIZE", "NONE"]
        if not lp.has("normalization") and lp.has("normalize"):
            self.mode = "VALID" if lp.get_bool("normalize") else "BATCH_SIZE"
        else:
            self.mode = lp.get_enum("normalization", modes, "VALID")
        axis = spec.msg.msg("softmax_param").get_int("axis", 1)
        self.axis = axis + len(self.bottom_shapes[0]) if axis < 0 else axis
        self._check_counts(self.bottom_shapes[0], self.bottom_shapes[1])

    def _check_counts(self, s, l):
        outer_inner = int(np.prod(s)) // s[self.axis] if s[self.axis] else 0
        if outer_inner != int(np.prod(l)):
            raise NetError(f"number of labels {int(np.prod(l))} (shape {tuple(l)}) must match the number of "
                           f"predictions {outer_inner} (shape {tuple(s)})", layer=self.layer_name)

    def forward(self, logits, label):
        self._check_counts(tuple(logits.shape), tuple(label.shape))
        shape = logits.shape[:self.axis] + logits.shape[self.axis + 1:]
        lab = label.reshape(shape)
        lab = lab.long() if not lab.is_floating_point() else lab.trunc().long()
        valid = torch.ones_like(lab, dtype=logits.dtype)
        if self.ignore_label is not None:
            keep = lab != self.ignore_label
            valid = keep.to(logits.dtype)
            lab = torch.where(keep, lab, torch.zeros_like(lab))
        if logits.device.type != "meta":
            bad = (lab < 0) | (lab >= logits.shape[self.axis])
            if bool(bad.any()):
                v = int(lab[bad][0])
                raise NetError(f"label value {v} outside [0, {logits.shape[self.axis]}) "
                               f"(ignore_label {self.ignore_label})", layer=self.layer_name)
        loss, prob = _SoftmaxLossFn.apply(logits, lab, valid, self.axis, self.mode)
        return (loss, prob)[:max(1, len(self.spec.top))]


class Accuracy(CaffeLayer):
    def __init__(self, spec, bottom_shapes):
        super().__init__(spec, bottom_shapes)
        p = spec.params
        self.top_k, self.axis = p.get_int("top_k", 1), p.get_int("axis", 1)
        self.ignore_label = p.get_int("ignore_label")

    def forward(self, scores, label):
        with torch.no_grad():
            shape = scores.shape[:self.axis] + scores.shape[self.axis + 1:]
            lab = label.reshape(shape).long()
            top = scores.topk(self.top_k, self.axis).indices
            hit = (top == lab.unsqueeze(self.axis)).any(self.axis)
            keep = lab != self.ignore_label if self.ignore_label is not None else torch.ones_like(hit)
            acc = (hit & keep).sum().to(scores.dtype) / keep.sum().clamp_min(1).to(scores.dtype)
        return (acc,)


LAYER_TYPES = {cls.__name__: cls for cls in (
    ReLU, Dropout, Split, Silence, Flatten, Convolution, Deconvolution, Pooling, LRN, Crop, Eltwise,
    Scale, Concat, InnerProduct, Softmax, SoftmaxWithLoss, Accuracy)}
LOSS_TYPES = {"SoftmaxWithLoss"}
