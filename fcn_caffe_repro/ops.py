"""Python side of csrc/: the fused deconvolution-crop-sum op, its fake registration, and the
pure-PyTorch reference it is tested against (its autograd is registered in C++); the training
path's MAX pooling, which keeps a byte per pooled element for its backward, and its 3x3
convolution for few channels (the width-divided nets), which oneDNN runs far below the FMA rate.

``deconv_crop_sum`` computes, in one pass and without materialising the uncropped output::

    full = conv_transpose2d(x, weight, stride=stride, groups=groups)   # no padding, no bias
    out  = full[:, :, oh:oh+H, ow:ow+W] + skip[:, :, sh:sh+H, sw:sw+W]  # skip optional

which is FCN's Deconvolution -> Crop -> Eltwise SUM.  ``impl="ext"`` runs the C++/CUDA kernels of
``fcn_caffe_repro._C`` and never falls back; ``impl="torch"`` is the reference.
"""
import torch
import torch.nn.functional as F

try:
    from . import _C  # noqa: F401  (loading it registers torch.ops.fcn_caffe_repro.*)

    _IMPORT_ERROR = None
except ImportError as exc:  # the extension was not built
    _IMPORT_ERROR = exc

__all__ = ["deconv_crop_sum", "deconv_crop_sum_reference", "extension_available", "extension_problem",
           "extension_runs_on", "max_pool", "max_pool_applies", "relu_max_pool", "small_conv", "small_conv_applies"]

_BUILD_HINT = ("build it from the repository root with "
               "`pip install --no-build-isolation --no-deps -e .`")


def extension_available() -> bool:
    """Whether the compiled extension fcn_caffe_repro._C loaded (and registered its ops)."""
    return _IMPORT_ERROR is None


def extension_problem() -> str:
    """Why the extension is unavailable and how to build it, for an error message."""
    return f"the C++ extension fcn_caffe_repro._C is not built ({_IMPORT_ERROR}); {_BUILD_HINT}"


_RUNS_ON = {}


def extension_runs_on(device) -> bool:
    """Whether the extension's fused op has kernels for `device`'s type. The CUDA kernels are built
    only where torch saw CUDA at build time (or FORCE_CUDA=1), so a CPU-built extension on a GPU
    machine has none: told by one tiny call per device type."""
    if not extension_available():
        return False
    kind = torch.device(device).type
    if kind not in _RUNS_ON:
        x = torch.zeros(1, 1, 1, 1, device=device)
        try:
            torch.ops.fcn_caffe_repro.deconv_crop_sum(x, x, [1, 1], [0, 0], [1, 1], None, [0, 0], 1)
            _RUNS_ON[kind] = True
        except NotImplementedError:  # the dispatcher has no kernel for this device type
            _RUNS_ON[kind] = False
    return _RUNS_ON[kind]


def _pair(v, name):
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2:
        raise ValueError(f"deconv_crop_sum: {name} must be an int or a pair, got {v!r}")
    return pair


def _full_size(x, weight, stride):
    """Spatial size of the uncropped transposed convolution (no padding)."""
    return ((x.shape[2] - 1) * stride[0] + weight.shape[2], (x.shape[3] - 1) * stride[1] + weight.shape[3])


def deconv_crop_sum_reference(x, weight, stride, offset, size, skip, skip_offset, groups):
    """The plain PyTorch composition (arguments already normalised to pairs)."""
    full = F.conv_transpose2d(x, weight, stride=stride, groups=groups)
    (oh, ow), (h, w) = offset, size
    if oh < 0 or ow < 0 or oh + h > full.shape[2] or ow + w > full.shape[3]:
        raise ValueError(f"deconv_crop_sum: crop {size} at {offset} lies outside the "
                         f"deconvolution output {tuple(full.shape[2:])}")
    out = full[:, :, oh:oh + h, ow:ow + w]
    if skip is None:
        return out.contiguous()  # Caffe's Crop materialises its output
    sh, sw = skip_offset
    return out + skip[:, :, sh:sh + h, sw:sw + w]


def deconv_crop_sum(x, weight, stride, offset=(0, 0), size=None, skip=None, skip_offset=(0, 0),
                    groups=1, impl="ext"):
    """Cropped transposed convolution plus an optional cropped skip, in one pass.

    x: N x C_in x Hi x Wi; weight: C_in x C_out/groups x kh x kw (Caffe/PyTorch layout);
    stride, offset, skip_offset: int or (rows, cols); size: the crop (H, W), by default the rest
    of the deconvolution output after ``offset``.  Returns N x C_out x H x W.
    """
    stride, offset, skip_offset = _pair(stride, "stride"), _pair(offset, "offset"), _pair(skip_offset, "skip_offset")
    if size is None:
        full = _full_size(x, weight, stride)
        size = (full[0] - offset[0], full[1] - offset[1])
    size = _pair(size, "size")
    if impl == "torch":
        return deconv_crop_sum_reference(x, weight, stride, offset, size, skip, skip_offset, groups)
    if impl != "ext":
        raise ValueError(f"deconv_crop_sum: impl must be 'ext' or 'torch', got {impl!r}")
    if not extension_available():
        raise RuntimeError(f"deconv_crop_sum: {extension_problem()}, or pass impl='torch'")
    if x.dim() == 4 and x.shape[0] == 0:  # an empty batch: no arithmetic, the reference's empty result
        return deconv_crop_sum_reference(x, weight, stride, offset, size, skip, skip_offset, groups)
    return torch.ops.fcn_caffe_repro.deconv_crop_sum(x, weight, list(stride), list(offset), list(size),
                                                     skip, list(skip_offset), groups)


def max_pool_applies(x, kernel, stride, pad):
    """Whether `max_pool` computes this MAX pooling: a CPU float32/float64 4-D input at least as
    large as the window, no padding, a window of at most 256 elements (its position fits a byte)
    and no smaller than the stride (no empty windows), and the extension built."""
    return (extension_available() and x.device.type == "cpu" and x.dim() == 4
            and x.dtype in (torch.float32, torch.float64) and tuple(pad) == (0, 0) and kernel[0] * kernel[1] <= 256
            and stride[0] <= kernel[0] and stride[1] <= kernel[1]
            and x.shape[2] >= kernel[0] and x.shape[3] >= kernel[1])


def max_pool(x, kernel, stride):
    """MAX pooling with Caffe's output size (no padding), recorded for autograd. Its backward
    scatters the gradient by the winners' positions kept as one byte per pooled element, where
    max_pool2d keeps int64 indices (8x the bytes) or a recomputation reads the input again."""
    return _MaxPool.apply(x, tuple(kernel), tuple(stride))


class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, stride):
        y, winners = torch.ops.fcn_caffe_repro.max_pool_forward(x, list(kernel), list(stride))
        ctx.save_for_backward(winners)
        ctx.geometry = (list(x.shape), list(kernel), list(stride))
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        (winners,) = ctx.saved_tensors
        size, kernel, stride = ctx.geometry
        return torch.ops.fcn_caffe_repro.max_pool_backward(dy, winners, size, kernel, stride), None, None


def relu_max_pool(x, kernel, stride, in_place=False):
    """ReLU then MAX pooling as one op recorded for autograd (max_pool's conditions): returns
    (relu(x), pooled). The ReLU's top carries no gradient (the pooling must be its only reader);
    the backward keeps the winners' positions and one byte per pooled element telling whether it
    is positive, not the activation-sized ReLU top: the ReLU's gradient is zero except at the
    winners, and at a winner it passes exactly when the pooled value (the winner's) is positive.
    `in_place`: write relu(x) into x (x must have no other reader that saved it)."""
    return _ReLUMaxPool.apply(x, tuple(kernel), tuple(stride), bool(in_place))


class _ReLUMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, stride, in_place):
        y = x.clamp_min_(0) if in_place else x.clamp_min(0)  # F.relu's kernel (NaN stays NaN)
        if in_place:
            ctx.mark_dirty(y)
        ctx.mark_non_differentiable(y)
        pooled, winners = torch.ops.fcn_caffe_repro.max_pool_forward(y, list(kernel), list(stride))
        ctx.save_for_backward(winners, pooled > 0)
        ctx.geometry = (list(x.shape), list(kernel), list(stride))
        return y, pooled

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, _, dpooled):
        winners, positive = ctx.saved_tensors
        size, kernel, stride = ctx.geometry
        # a product, as Caffe's ReLU backward (top_diff x (bottom > 0)): an inf or NaN gradient
        # at a non-positive winner gives NaN there, as in Caffe
        dx = torch.ops.fcn_caffe_repro.max_pool_backward(dpooled * positive, winners, size, kernel, stride)
        return dx, None, None, None


SMALL_CONV_CHANNELS = (4, 8, 16)  # at 32 oneDNN is faster


def small_conv_applies(x, weight, stride, pad, dilation, groups):
    """Whether `small_conv` computes this convolution: CPU float32, 3x3, stride 1, padding 1,
    ungrouped, 4, 8 or 16 channels in and out, and the extension built."""
    return (extension_available() and x.device.type == "cpu" and x.dim() == 4 and x.dtype == torch.float32
            and weight.dtype == torch.float32 and tuple(weight.shape[2:]) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(pad) == (1, 1) and tuple(dilation) == (1, 1) and groups == 1
            and x.shape[1] in SMALL_CONV_CHANNELS and weight.shape[0] in SMALL_CONV_CHANNELS)


def small_conv(x, weight, bias):
    """A 3x3, stride-1, padding-1 convolution of few channels (see small_conv_applies; a finite
    weight: Caffe's products with the zero padding make inf weights NaN at the edges, which this
    op does not compute), recorded for autograd; the output is channels_last.
    csrc/cpu/small_conv.cpp: one output pixel's channels per vector, one broadcast and FMA per term
    (4 -> 4 channels over 326 x 326, forward and backward: about 3.4 against 8 ms for oneDNN on an
    Intel Xeon, one thread)."""
    return _SmallConv.apply(x, weight, bias)


class _SmallConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.fcn_caffe_repro.small_conv_forward(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        wanted = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        # the bias gradient, a sum of every output gradient, tells whether one is inf or NaN
        dx, dw, db = torch.ops.fcn_caffe_repro.small_conv_backward(dy, x, weight, wanted[:2] + [True])
        if wanted[1] and not bool(torch.isfinite(db).all()):
            # Caffe's weight gradient multiplies every output gradient by the zero padding: 0 x inf
            # is NaN there, which this op's kernel (no products with the padding) would not give
            dw = torch.ops.aten.convolution_backward(dy, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                     [False, True, False])[1]
        return tuple(g if want else None for g, want in zip((dx, dw, db), wanted))


def _register_fake():
    """Fake (meta) kernels for torch.compile; the autograd formula is in C++ (csrc/autograd.cpp)."""

    @torch.library.register_fake("fcn_caffe_repro::deconv_crop_sum")
    def _(x, weight, stride, offset, size, skip, skip_offset, groups):
        return x.new_empty((x.shape[0], weight.shape[1] * groups, size[0], size[1]))

    @torch.library.register_fake("fcn_caffe_repro::deconv_crop_sum_backward")
    def _(grad, x, weight, stride, offset, skip_size, skip_offset, groups, output_mask):
        gx = x.new_empty(x.shape) if output_mask[0] else x.new_empty((0,))
        gw = weight.new_empty(weight.shape) if output_mask[1] else x.new_empty((0,))
        gs = x.new_empty(skip_size) if output_mask[2] else x.new_empty((0,))
        return gx, gw, gs


if extension_available():
    _register_fake()
