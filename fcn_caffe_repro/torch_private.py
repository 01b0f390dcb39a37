"""Every private PyTorch API the package calls, checked once when this module loads.

The fast mode (fast/) runs oneDNN's weight reorder and fused convolution ops, asks storages for
their use count (BufferPool), tensors for their version counter (re-packing a changed weight) and
oneDNN whether this CPU runs bfloat16 natively (the bfloat16 plan's choice of convolution);
fusion.py reads version counters to cache a weight check. None of these is public API, so a torch
release may drop or rename one. What this torch lacks is in MISSING; require() turns a need for
it into one error naming the torch version and the APIs, while everything else keeps running.
"""
import torch

from .errors import NetError

REORDER_WEIGHT = "torch._C._nn.mkldnn_reorder_conv2d_weight"
CONV_POINTWISE = "torch.ops.mkldnn._convolution_pointwise"
CONV_POINTWISE_INPLACE = "torch.ops.mkldnn._convolution_pointwise_"
STORAGE_USE_COUNT = "torch._C._storage_Use_Count"
VERSION_COUNTER = "torch.Tensor._version"
BF16_SUPPORTED = "torch.ops.mkldnn._is_mkldnn_bf16_supported"

ONEDNN = (REORDER_WEIGHT, CONV_POINTWISE, VERSION_COUNTER)  # the prepacked oneDNN convolution
BUFFERS = (STORAGE_USE_COUNT, CONV_POINTWISE_INPLACE)  # its outputs written into pooled buffers
BF16 = (BF16_SUPPORTED,)  # asking whether oneDNN runs bfloat16 natively on this CPU

_PROBES = {
    REORDER_WEIGHT: lambda: torch._C._nn.mkldnn_reorder_conv2d_weight,
    CONV_POINTWISE: lambda: torch.ops.mkldnn._convolution_pointwise,
    CONV_POINTWISE_INPLACE: lambda: torch.ops.mkldnn._convolution_pointwise_,
    STORAGE_USE_COUNT: lambda: torch._C._storage_Use_Count,
    VERSION_COUNTER: lambda: torch.empty(0)._version,
    BF16_SUPPORTED: lambda: torch.ops.mkldnn._is_mkldnn_bf16_supported,
}


def _missing():
    missing = set()
    for name, probe in _PROBES.items():
        try:
            probe()
        except (AttributeError, RuntimeError):
            missing.add(name)
    return frozenset(missing)


MISSING = _missing()


def require(apis, what, hint):
    """Raise NetError if this torch lacks any of `apis`, which `what` needs; `hint` says what to do."""
    lacking = sorted(set(apis) & MISSING)
    if lacking:
        raise NetError(f"{what} needs private PyTorch APIs that torch {torch.__version__} does not have: "
                       f"{', '.join(lacking)}; {hint}")


def version_counter(t):
    """t's version counter (bumped by every in-place change made through PyTorch), None without one."""
    return None if VERSION_COUNTER in MISSING else t._version


def onednn_bf16_supported():
    """Whether oneDNN runs bfloat16 convolutions on this CPU (torch asks the CPU's features, within
    ONEDNN_MAX_CPU_ISA); False on a torch without the query."""
    return BF16_SUPPORTED not in MISSING and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def storage_use_count(t):
    """How many tensors (and other owners) share t's storage."""
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


def reorder_conv2d_weight(w, pad, stride, dilation, groups, input_size):
    """A float32 or bfloat16 weight copied into oneDNN's blocked layout for the given convolution."""
    return torch._C._nn.mkldnn_reorder_conv2d_weight(w.to_mkldnn(), pad, stride, dilation, groups, input_size)


def conv_pointwise(x, w, bias, pad, stride, dilation, groups, attr, scalars):
    """oneDNN's convolution with the unary post-op `attr` ("none", "relu", "leaky_relu")."""
    return torch.ops.mkldnn._convolution_pointwise(x, w, bias, pad, stride, dilation, groups, attr, scalars, "")


def conv_pointwise_add_(out, x, w, bias, pad, stride, dilation, groups, unary):
    """out = unary(conv(x) + bias + out), written into out (unary None or "relu")."""
    return torch.ops.mkldnn._convolution_pointwise_(out, x, w, bias, pad, stride, dilation, groups, "add", 1.0,
                                                    unary, [], "")
