"""How the layers compute when a gradient is wanted (training): the same functions as their
inference forward, run the way a CPU training iteration is fastest and smallest.

- Convolution whose weight outweighs its activations (N * H_out * W_out <= C_out, ungrouped:
  FCN's fc6 and fc7) runs as Caffe does it, im2col + one GEMM per image, in forward and backward.
  oneDNN would copy the weight into its blocked layout in the forward and again in the backward
  (two extra weight-sized buffers: 2 x 411 MB for fc6 at the peak of an iteration); the GEMM reads
  the weight in place and writes the weight gradient once.
- 3x3 convolution (stride 1, padding 1) of 4, 8 or 16 channels in and out, float32 (the
  width-divided nets of the main job and the tests) runs ops.small_conv (csrc/cpu/small_conv.cpp):
  oneDNN runs so few channels far below the FMA rate (FCN-8s at width/16 on 128x128 images: 54
  against 64 ms per iteration on an Intel Xeon, one thread).
- Other convolution with at most 128 input channels (VGG's conv1 and conv2 at their large sizes) runs
  oneDNN on channels_last tensors: plain NCHW makes oneDNN reorder source, output and gradients
  into its blocked layout (three activation-sized copies in the backward) and runs slower.
- MAX pooling (layers.Pooling) keeps one byte per pooled element, the winner's position in its
  window (ops.max_pool, csrc/cpu/max_pool.cpp): int64 indices are 2x the pooled output's bytes and
  a recomputation reads the input again (FCN-8s at width/16 on 128x128 images: 47 against 54 ms
  per iteration on an Intel Xeon, one thread). Where that op does not apply (padding, a stride past
  the kernel, no extension) the backward recomputes the pooling from the saved input, which the
  ReLU before it keeps anyway.
- Convolution padded wider than its window reaches (FCN's conv1_1: pad 100, 3x3) computes only
  where a window touches the input: elsewhere the output is the bias (Caffe sums zeros times the
  weight), the weight gradient gets nothing (zero inputs) and the input gradient nothing (no
  window there covers an input pixel). On a 128-pixel image 130x130 of conv1_1's 326x326 outputs
  (4.1 against 1.1 ms forward + backward on an Intel Xeon, one thread). A non-finite weight or
  output gradient takes the full computation, where Caffe's 0 x inf gives NaN.

Every choice changes rounding only (sums in another order), not the function; the caffe-ref
tolerances hold on both paths.
"""
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import ops

CHANNELS_LAST_MAX_CHANNELS = 128


def wants_grad(x, *params):
    """Whether this is a CPU forward that autograd records (training). The paths here were chosen
    by measuring CPUs; other devices, and graphs being traced (torch.export, torch.compile: a
    program must not keep this path's out= GEMMs), keep the plain forward."""
    return (x.device.type == "cpu" and torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and any(t is not None and t.requires_grad for t in (x,) + params))


def uses_gemm(x_shape, out_shape, groups):
    """The im2col + GEMM path: ungrouped, and the column buffer no larger than the weight."""
    n, cout, oh, ow = out_shape
    return groups == 1 and n * oh * ow <= cout


def conv2d(x, weight, bias, stride, pad, dilation, groups, out_shape):
    """The Convolution layer's output, recorded for autograd; out_shape is its top's shape."""
    if uses_gemm(x.shape, out_shape, groups):
        return _Im2colConv.apply(x, weight, bias, tuple(stride), tuple(pad), tuple(dilation), tuple(out_shape))
    layout = torch.channels_last if x.shape[1] <= CHANNELS_LAST_MAX_CHANNELS else torch.contiguous_format
    x, weight = x.contiguous(memory_format=layout), weight.contiguous(memory_format=layout)
    # the two paths exclude each other (a border needs padding past the window's reach, small_conv
    # padding 1 on a 3x3 window); both skip products with the padding, which a non-finite weight
    # would make NaN in Caffe, so such a weight takes F.conv2d
    border = border_reach(weight.shape[2:], stride, pad, dilation)
    if (border or ops.small_conv_applies(x, weight, stride, pad, dilation, groups)) \
            and bool(torch.isfinite(weight).all()):
        if border:
            return _BorderConv.apply(x, weight, bias, tuple(pad), tuple(dilation), groups, layout)
        return ops.small_conv(x, weight, bias)
    return F.conv2d(x, weight, bias, stride, pad, dilation, groups)


def border_reach(kernel, stride, pad, dilation):
    """The window's reach per axis, dilation x (kernel - 1), where a stride-1 convolution's padding
    exceeds it on both axes (a border of outputs whose windows hold only padding); else None."""
    reach = tuple(d * (k - 1) for k, d in zip(kernel, dilation))
    if tuple(stride) == (1, 1) and all(p > r for p, r in zip(pad, reach)):
        return reach
    return None


def recomputed(fn, x):
    """fn(x) recorded for autograd with only x saved: the backward runs fn again (no RNG in fn)."""
    return checkpoint(fn, x, use_reentrant=False, preserve_rng_state=False)


def _pointwise(kernel, stride, pad):
    return kernel == (1, 1) and stride == (1, 1) and pad == (0, 0)


class _BorderConv(torch.autograd.Function):
    """A stride-1 convolution padded past its reach: the outputs whose window touches the input
    are the convolution padded by the reach (the core, at offset pad - reach), the rest the bias.
    `layout`: the memory format x and weight come in, which the output and gradients keep."""

    @staticmethod
    def forward(ctx, x, weight, bias, pad, dilation, groups, layout):
        reach = tuple(d * (k - 1) for k, d in zip(weight.shape[2:], dilation))
        core = F.conv2d(x, weight, bias, 1, reach, dilation, groups)
        n, cout = core.shape[:2]
        size = [x.shape[2 + i] + 2 * pad[i] - reach[i] for i in range(2)]
        y = torch.empty((n, cout, *size), dtype=core.dtype, memory_format=layout)
        if bias is None:
            y.zero_()
        else:
            y.copy_(bias.detach().view(1, cout, 1, 1).expand(y.shape))
        _core_view(y, pad, reach, core.shape).copy_(core)
        ctx.save_for_backward(x, weight)
        ctx.geometry = (pad, reach, dilation, groups, core.shape, bias is not None, layout)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        pad, reach, dilation, groups, core_shape, has_bias, layout = ctx.geometry
        db = dy.sum((0, 2, 3))
        wanted = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False]
        if bool(torch.isfinite(db).all()):
            core = _core_view(dy, pad, reach, core_shape).contiguous(memory_format=layout)
            dx, dw, _ = torch.ops.aten.convolution_backward(
                core, x, weight, [weight.shape[0]], [1, 1], list(reach), list(dilation), False, [0, 0], groups,
                wanted)
        else:  # inf or NaN somewhere in the gradient: times the border's zero inputs, NaN in Caffe
            dx, dw, _ = torch.ops.aten.convolution_backward(
                dy.contiguous(memory_format=layout), x, weight, [weight.shape[0]], [1, 1], list(pad),
                list(dilation), False, [0, 0], groups, wanted)
        return dx, dw, db if has_bias and ctx.needs_input_grad[2] else None, None, None, None, None


def _core_view(t, pad, reach, core_shape):
    """The window of a padded-past-reach convolution's output (or its gradient) whose windows
    touch the input."""
    top, left = pad[0] - reach[0], pad[1] - reach[1]
    return t[:, :, top:top + core_shape[2], left:left + core_shape[3]]


class _Im2colConv(torch.autograd.Function):
    """Caffe's convolution: per image, columns = im2col(x); y = W (C_out x C k k) @ columns + b.
    Backward: dW = sum over images of dy @ columns^T, db = sum of dy, dx = col2im(W^T @ dy).
    The columns are saved (no larger than the weight); a 1x1 convolution's are x itself."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, pad, dilation, out_shape):
        n, cout, oh, ow = out_shape
        kernel = tuple(weight.shape[2:])
        x = x.contiguous()
        if _pointwise(kernel, stride, pad):
            cols = x.view(n, x.shape[1], -1)
        else:
            cols = F.unfold(x, kernel, dilation, pad, stride)  # N x (C kh kw) x (oh ow)
        w2 = weight.reshape(cout, -1)
        y = x.new_empty(out_shape)
        flat = y.view(n, cout, oh * ow)
        for i in range(n):
            if bias is not None:
                torch.addmm(bias.unsqueeze(1), w2, cols[i], out=flat[i])
            else:
                torch.mm(w2, cols[i], out=flat[i])
        ctx.save_for_backward(cols, weight)
        ctx.geometry = (tuple(x.shape), kernel, stride, pad, dilation, bias is not None)
        return y

    @staticmethod
    def backward(ctx, dy):
        cols, weight = ctx.saved_tensors
        x_shape, kernel, stride, pad, dilation, has_bias = ctx.geometry
        n, cout = dy.shape[:2]
        dy = dy.contiguous().view(n, cout, -1)
        w2 = weight.reshape(cout, -1)
        dx = dw = db = None
        if ctx.needs_input_grad[1]:
            dw = torch.mm(dy[0], cols[0].t())
            for i in range(1, n):
                dw.addmm_(dy[i], cols[i].t())
            dw = dw.view(weight.shape)
        if has_bias and ctx.needs_input_grad[2]:
            db = dy.sum((0, 2))
        if ctx.needs_input_grad[0]:
            dcols = torch.matmul(w2.t(), dy)  # N x (C kh kw) x (oh ow)
            if _pointwise(kernel, stride, pad):
                dx = dcols.view(x_shape)
            else:
                dx = F.fold(dcols, x_shape[2:], kernel, dilation, pad, stride)
        return dx, dw, db, None, None, None, None
