"""The oneDNN convolution backend: the weight reordered once into oneDNN's blocked layout (as
inductor's freezing pass does), the ReLU as a post-op, the output optionally in a pooled buffer.
In bfloat16 oneDNN multiplies bfloat16 and accumulates in float32, rounding each output once."""
import torch

from .. import torch_private
from ..errors import NetError


def available():
    """Whether this torch build has oneDNN (torch.backends.mkldnn) and it is enabled."""
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def pack_weight(conv, dtype=torch.float32):
    """oneDNN's blocked copy of the Convolution layer's float32 CPU weight, converted to dtype
    (float32 or bfloat16) first."""
    w = conv.weight.detach()
    if w.dtype != torch.float32 or w.device.type != "cpu":
        raise NetError(f"the oneDNN path needs float32 CPU weights, the layer has {w.dtype} on {w.device}; "
                       f"re-run optimize() with conv='torch' or 'gemm'", layer=conv.layer_name)
    return torch_private.reorder_conv2d_weight(w.to(dtype), list(conv.pad), list(conv.stride),
                                               list(conv.dilation), conv.group, list(conv.bottom_shapes[0]))


def check_input(conv, x, dtype=torch.float32):
    if x.dtype != dtype or x.device.type != "cpu":
        raise NetError(f"the oneDNN path of this step runs {dtype} on the CPU, got {x.dtype} on {x.device}; "
                       f"re-run optimize() with conv='torch' or 'gemm' for this dtype/device",
                       layer=conv.layer_name)


def conv2d(conv, x, packed, bias, slope, pool, channels_last, pad=None):
    """The layer's convolution of x (checked by check_input, in the step's layout) with the packed
    weight and the bias (x's dtype: oneDNN's in-place form wants them equal; None: no bias), then
    ReLU (slope 0), leaky ReLU (another slope) or nothing (None), as one oneDNN call; padded by the
    layer's pad or by `pad`."""
    pad = conv.pad if pad is None else pad
    if slope is None:
        attr, scalars = "none", []
    elif slope == 0:
        attr, scalars = "relu", []
    else:
        attr, scalars = "leaky_relu", [slope]
    args = (list(pad), list(conv.stride), list(conv.dilation), conv.group)
    out = None
    if pool is not None and attr != "leaky_relu":  # oneDNN's in-place form fuses relu only
        out = pool.take(conv.output_shape(x.shape, pad), x.dtype, channels_last)
    if out is None:
        return torch_private.conv_pointwise(x, packed, bias, *args, attr, scalars)
    # out = relu(conv(x) + bias + out) with out zeroed: the same values, written in place
    return torch_private.conv_pointwise_add_(out, x, packed, bias, *args, None if attr == "none" else attr)
