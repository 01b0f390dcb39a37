"""The fast-mode pass: optimize(net) rewrites the net's layer steps into fast steps and installs them."""
import torch

from . import onednn, precision, winograd
from .conv import IMPLS, FastConv, auto_impl
from .lrn import FastLRN
from .pool import BufferPool
from .. import layers as L
from .. import border, ops, torch_private
from ..errors import NetError
from ..fusion import FusedDeconvCropSum, fused_plan
from ..plan import Step, layer_steps

CONV_IMPLS = ("auto",) + IMPLS
SKIP_IMPLS = ("ext", "torch", None)
MEMORY_FORMATS = ("channels_last", "contiguous")
TRAIN_MODES = ("autograd", "error")
MODES = ("fast", "bf16", "plain")


def _check_choice(name, value, choices):
    if value not in choices:
        raise NetError(f"optimize(): {name} must be one of {choices}, got {value!r}")


def fast_steps(steps, conv, memory_format, train, pool, native=True, workspace=None):
    """Each Convolution (with the in-place ReLU right after it) and each cross-channel LRN as a fast
    step; native False (bfloat16 on a CPU without it in oneDNN): conv="auto" takes F.conv2d where
    it would take oneDNN; workspace None (the bfloat16 plan, or NCHW activations): conv="auto"
    takes no Winograd step, else they share it."""
    out, i = [], 0
    while i < len(steps):
        s = steps[i]
        if isinstance(s.module, L.LRN) and s.module.region == "ACROSS_CHANNELS":
            out.append(Step(s.name, s.bottom, s.top, FastLRN(s.module)))
            i += 1
            continue
        if not isinstance(s.module, L.Convolution):
            out.append(s)
            i += 1
            continue
        impl = auto_impl(s.module, workspace is not None) if conv == "auto" else conv
        if conv == "auto" and impl == "mkldnn" and not native:
            impl = "torch"
        if impl == "gemm" and s.module.group != 1:
            raise NetError(f"conv='gemm' needs group 1, this layer has group {s.module.group}", layer=s.name)
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        if (nxt is not None and isinstance(nxt.module, L.ReLU) and len(s.top) == 1
                and nxt.bottom == s.top and nxt.top == s.top):
            module = FastConv(s.module, nxt.module.negative_slope, impl, memory_format, train, pool,
                              workspace=workspace)
            out.append(Step(f"{s.name}+{nxt.name}", s.bottom, s.top, module))
            i += 2
        else:
            out.append(Step(s.name, s.bottom, s.top, FastConv(s.module, None, impl, memory_format, train, pool,
                                                              workspace=workspace)))
            i += 1
    return out


def bf16_steps(steps, outputs):
    """The fast steps given their dtype in the bfloat16 plan, and the other layers wrapped to get
    the dtype they compute in (precision.py)."""
    def compute(s):
        return isinstance(s.module, (FastConv, FusedDeconvCropSum))

    wide = precision.computes_float32(steps, outputs, compute)
    out = []
    for i, s in enumerate(steps):
        m = s.module
        if compute(s):
            m.dtype = torch.float32 if i in wide else torch.bfloat16
        elif isinstance(m, precision.MULTI_INPUT):
            m = precision.Cast(m, torch.bfloat16)
        elif isinstance(m, precision.PASS_THROUGH) and not set(s.top) & outputs:
            pass
        elif not isinstance(m, (L.Input, FastLRN)):
            m = precision.Cast(m, torch.float32)
        out.append(Step(s.name, s.bottom, s.top, m))
    return out


def optimize(net, conv="auto", skip="ext", memory_format="channels_last", train="autograd", buffers=2,
             enabled=True, dtype=torch.float32):
    """Install the fast plan on `net` (in place) and return it; enabled=False restores the plain plan.

    conv: "auto" (per layer, see conv.auto_impl), "mkldnn", "gemm" or "torch" (F.conv2d, still fused
    with its ReLU); skip: the fused upsampling op's impl, "ext", "torch", or None (not fused);
    memory_format of the activations; train: "autograd" or "error" (see the package docstring);
    buffers: how many output buffers the oneDNN steps share and reuse (BufferPool; 0: none);
    dtype: torch.float32, or torch.bfloat16 for bfloat16 activations and weight copies, inference
    only, outputs float32 (precision.py); on a CPU where oneDNN lacks bfloat16, conv="auto" runs
    F.conv2d in bfloat16 instead (slower than float32; the benchmark says by how much).
    """
    steps = layer_steps(net)
    if not enabled:
        net.set_plan(steps)
        return net
    _check_choice("conv", conv, CONV_IMPLS)
    _check_choice("skip", skip, SKIP_IMPLS)
    _check_choice("memory_format", memory_format, MEMORY_FORMATS)
    _check_choice("train", train, TRAIN_MODES)
    if not isinstance(buffers, int) or isinstance(buffers, bool) or buffers < 0:
        raise NetError(f"optimize(): buffers must be a non-negative integer, got {buffers!r}")
    _check_choice("dtype", dtype, precision.DTYPES)
    bf16 = dtype == torch.bfloat16
    native = not bf16 or precision.native_bf16()
    if bf16 and conv == "mkldnn" and not native:
        raise NetError("optimize(conv='mkldnn', dtype=torch.bfloat16): oneDNN has no bfloat16 convolution on "
                       "this CPU (it needs AVX512-BF16, AMX or AVX-NE-CONVERT); pass conv='auto' or 'torch'")
    device = _device_of(net)
    if skip == "ext" and not ops.extension_runs_on(device):
        problem = (ops.extension_problem() if not ops.extension_available() else
                   f"the C++ extension has no {device.type} kernels (it was built where torch saw no CUDA; rebuild "
                   f"it with FORCE_CUDA=1)")
        raise NetError(f"optimize(skip='ext'): {problem}, or pass skip='torch' or None")
    if skip is not None:
        steps = fused_plan(steps, skip)
    pool = BufferPool(buffers) if buffers else None
    # Winograd steps (conv="auto", float32 channels_last plans) share one workspace
    workspace = winograd.Workspace() if not bf16 and memory_format == "channels_last" else None
    steps = fast_steps(steps, conv, memory_format, train, pool, native, workspace)
    if bf16:
        steps = bf16_steps(steps, set(net.outputs))
    packed = [s.module for s in steps if isinstance(s.module, FastConv) and s.module.impl == "mkldnn"]
    if packed:
        if not onednn.available():
            raise NetError(f"optimize(conv={conv!r}): oneDNN (torch.backends.mkldnn) is not available in this "
                           f"torch build; pass conv='torch' or 'gemm'")
        torch_private.require(torch_private.ONEDNN, f"optimize(conv={conv!r})", "pass conv='torch' or 'gemm'")
        if pool is not None:
            torch_private.require(torch_private.BUFFERS, f"optimize(buffers={buffers})", "pass buffers=0")
    for module in [s.module for s in steps if isinstance(s.module, FastConv) and s.module.has_copies()]:
        # up front: the memory is claimed and bad dtypes/devices raise here
        module.pack()
    net.set_plan(border.trunk_plan(steps, keep=net.outputs))
    return net


def for_inference(net, mode="fast"):
    """`net` set up to score images in `mode` (in place, returned): "fast" the float32 fast plan
    (conv="torch" on CUDA, where oneDNN does not run), "bf16" the bfloat16 plan (a CPU path),
    "plain" the layer-by-layer plan; the skips take the fused op's reference (skip="torch") where
    the extension lacks the device's kernels. The fcn command's --mode and the benchmark's paths."""
    if mode not in MODES:
        raise NetError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "plain":
        return optimize(net, enabled=False)
    device = _device_of(net)
    if mode == "bf16" and device.type != "cpu":
        raise NetError(f"mode 'bf16' is the CPU bfloat16 path (oneDNN); on {device.type} use mode 'fast'")
    # the skips through the fused op where the extension has this device's kernels, else its reference
    skip = "ext" if ops.extension_runs_on(device) else "torch"
    return optimize(net, conv="auto" if device.type == "cpu" else "torch", skip=skip,
                    dtype=torch.bfloat16 if mode == "bf16" else torch.float32)


def _device_of(net):
    """The device of the net's parameters (the CPU for a net without any)."""
    return next((p.device for p in net.parameters()), torch.device("cpu"))
