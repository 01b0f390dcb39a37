"""Fast inference mode: a CaffeNet's plan rewritten to run a CPU forward near the matmul roofline.

    net.optimize()                    # in place, returns the net; fast.optimize(net) is the same
    with torch.no_grad():
        scores = net(data=image)
    fast.describe(net)                # every step and the path it takes; fast.calls(net) counts them

The rewrite, each part measured to help on a 2-core AVX-512 CPU in float32 (tools/bench_net.py):
- every Convolution and the in-place ReLU after it become one step;
- conv="mkldnn": oneDNN's convolution with the ReLU as a post-op, weights reordered once into
  oneDNN's blocked layout (as inductor's freezing pass does), activations in channels_last,
  written into output buffers the steps share and reuse (BufferPool: no page faults);
- conv="gemm": im2col and one MKL GEMM against a view of the weight (no copy; a 1x1 layer is a
  GEMM on the NHWC view). "auto" takes it for fc-like layers (VGG fc6: a 7x7x512 reduction on a
  16x16 output), which oneDNN's direct kernel runs at about a third of the GEMM rate;
- Deconvolution -> Crop (-> Eltwise SUM) through the fused op (fusion.py), skip="ext";
- LRN across channels (AlexNet) as a windowed sum on the NHWC view (FastLRN);
- blobs freed after their last reader, as CaffeNet.forward does whenever return_blobs is off.
Every other layer runs its own module on whatever layout it gets (max pooling is some 5x faster
on channels_last than on NCHW here). Results agree with Caffe's
blobs to the tolerances of the parity tests (only summation order differs).

Training: the steps are an inference path. When autograd records (grad enabled and the input or
a parameter requires grad) a convolution step runs F.conv2d and the ReLU (path "autograd"), the
same arithmetic as the fused plan, so forward+backward works and is counted; train="error"
raises instead. Weights: a prepacked copy is keyed on the parameter's storage and version
counter, so any change made through PyTorch (load_caffemodel, load_state_dict, an optimizer
step, p.copy_) re-packs it on the next forward; writes through `p.data` bypass the version
counter (PyTorch semantics): call repack(net) after those. Nothing falls back silently: an
asked-for path that is unavailable raises, at optimize() or at the forward that would need it.
"""
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from . import layers as L
from . import ops
from .errors import NetError

CONV_IMPLS = ("auto", "mkldnn", "gemm", "torch")
SKIP_IMPLS = ("ext", "torch", None)
MEMORY_FORMATS = ("channels_last", "contiguous")
TRAIN_MODES = ("autograd", "error")


def mkldnn_available():
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def auto_impl(conv):
    """The measured rule: GEMM for fc-like layers (kernel >= 5x5 over >= 4096 inputs), else oneDNN."""
    kh, kw = conv.kernel
    if conv.group == 1 and conv.dilation == (1, 1) and kh * kw >= 25 and conv.channels * kh * kw >= 4096:
        return "gemm"
    return "mkldnn"


def _storage_users(t):
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


class BufferPool:
    """Output memory for the oneDNN steps of one fast plan, reused across steps and forwards.

    A fresh 125 MB activation costs ~30k page faults (longer than conv1_1's arithmetic); writing
    into memory already mapped (zeroed, then oneDNN's in-place conv + add + ReLU) saved about 6 %
    of a 500x500 FCN-8s forward here and gives the same values. A buffer is handed out only
    while nothing else uses its storage (no blob, view, numpy array or returned output), so a
    reused buffer never overwrites anything a caller or a later layer can still see. At most
    `size` buffers are kept (two serve VGG: a conv's input and its output); they stay allocated
    between forwards (the two largest activations) until release_buffers(net)."""

    MIN_BYTES = 1 << 20  # smaller outputs come from malloc's heap without faults anyway

    def __init__(self, size):
        self.size = size
        self.buffers = []  # [flat tensor, its storage use count when unused]
        self.reused = self.fresh = 0

    def take(self, shape, dtype, channels_last):
        """A zeroed tensor of `shape` in pooled memory, or None (the caller allocates)."""
        n = 1
        for d in shape:
            n *= d
        if n * torch.finfo(dtype).bits // 8 < self.MIN_BYTES or self.size == 0:
            return None
        free = [b for b in self.buffers if b[0].dtype == dtype and _storage_users(b[0]) == b[1]]
        fits = [b for b in free if b[0].numel() >= n]
        if fits:
            flat = min(fits, key=lambda b: b[0].numel())[0]
            self.reused += 1
        else:
            if len(self.buffers) >= self.size:
                if not free:
                    return None
                self.buffers.remove(free[0])  # a free one too small: replace it
            flat = torch.empty(n, dtype=dtype)
            self.buffers.append([flat, _storage_users(flat)])
            self.fresh += 1
        if channels_last:
            out = flat[:n].view(shape[0], shape[2], shape[3], shape[1]).permute(0, 3, 1, 2)
        else:
            out = flat[:n].view(shape)
        return out.zero_()

    def release(self):
        self.buffers = []


class FastConv(nn.Module):
    """A Convolution (and the in-place ReLU after it) as one step, on the path chosen at optimize()."""

    def __init__(self, conv, slope, impl, memory_format, train, pool=None):
        super().__init__()
        self.conv = [conv]  # a list: the layer stays registered on the net only
        self.slope = slope  # None: no ReLU; 0.0: ReLU; else Caffe's negative_slope
        self.impl, self.memory_format, self.train_mode = impl, memory_format, train
        self.pool = pool  # BufferPool shared by the plan's oneDNN steps, or None
        self.calls = Counter()
        self.repacks = 0
        self._packed, self._key = None, None

    @property
    def layer(self):
        return self.conv[0]

    def extra_repr(self):
        relu = "" if self.slope is None else f", relu(slope={self.slope})"
        return f"'{self.layer.layer_name}', {self.impl}{relu}"

    def forward(self, x):
        c = self.layer
        c._check_input(x)
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in c.blobs())):
            if self.train_mode == "error":
                raise NetError("the fast mode is inference-only (optimize(train='error')) and autograd is "
                               "recording; run under torch.no_grad() or optimize(train='autograd')",
                               layer=c.layer_name)
            self.calls["autograd"] += 1  # the plain layers' arithmetic and layout (channels_last
            # costs memory in mkldnn's backward here and gains little)
            return (self._relu(F.conv2d(x, c.weight, c.bias, c.stride, c.pad, c.dilation, c.group)),)
        self.calls[self.impl] += 1
        if self.impl == "mkldnn":
            return (self._mkldnn(x),)
        if self.impl == "gemm":
            return (self._relu(self._gemm(x)),)
        return (self._relu(F.conv2d(self._layout(x), c.weight, c.bias, c.stride, c.pad, c.dilation, c.group)),)

    # --- paths -----------------------------------------------------------------------------------
    def _layout(self, x):
        fmt = torch.channels_last if self.memory_format == "channels_last" else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def _relu(self, y):
        if self.slope is None:
            return y
        return torch.relu_(y) if self.slope == 0 else F.leaky_relu_(y, self.slope)

    def _mkldnn(self, x):
        c = self.layer
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise NetError(f"the oneDNN path runs float32 on the CPU, got {x.dtype} on {x.device}; "
                           f"re-run optimize() with conv='torch' or 'gemm' for this dtype/device",
                           layer=c.layer_name)
        w = self.packed_weight()
        if self.slope is None:
            attr, scalars = "none", []
        elif self.slope == 0:
            attr, scalars = "relu", []
        else:
            attr, scalars = "leaky_relu", [self.slope]
        bias = c.bias.detach() if c.bias is not None else None
        x = self._layout(x)
        args = (list(c.pad), list(c.stride), list(c.dilation), c.group)
        out = None
        if self.pool is not None and attr != "leaky_relu":  # oneDNN's in-place form fuses relu only
            out = self.pool.take(self._out_shape(x), x.dtype, self.memory_format == "channels_last")
        if out is None:
            return torch.ops.mkldnn._convolution_pointwise(x, w, bias, *args, attr, scalars, "")
        # out = relu(conv(x) + bias + out) with out zeroed: the same values, written in place
        return torch.ops.mkldnn._convolution_pointwise_(out, x, w, bias, *args, "add", 1.0,
                                                        None if attr == "none" else attr, [], "")

    def _out_shape(self, x):
        c, w = self.layer, self.layer.weight
        size = [(x.shape[2 + i] + 2 * c.pad[i] - c.dilation[i] * (c.kernel[i] - 1) - 1) // c.stride[i] + 1
                for i in range(2)]
        return (x.shape[0], w.shape[0], *size)

    def _gemm(self, x):
        c = self.layer
        w, b = c.weight.detach(), (c.bias.detach() if c.bias is not None else None)
        n, cin, h, wd = x.shape
        cout = w.shape[0]
        if c.kernel == (1, 1) and c.stride == (1, 1) and c.pad == (0, 0) and x.is_contiguous(
                memory_format=torch.channels_last) and not x.is_contiguous():
            rows = x.permute(0, 2, 3, 1).reshape(-1, cin)  # a view: NHWC is (N*H*W) x C
            w2 = w.reshape(cout, cin).t()
            y = torch.addmm(b, rows, w2) if b is not None else rows.mm(w2)
            return y.view(n, h, wd, cout).permute(0, 3, 1, 2)  # logically NCHW, stored channels_last
        cols = F.unfold(x.contiguous(), c.kernel, c.dilation, c.pad, c.stride)  # N x (C kh kw) x L
        _, _, oh, ow = self._out_shape(x)
        w2 = w.reshape(cout, -1)
        y = x.new_empty((n, cout, oh * ow))
        for i in range(n):  # one GEMM per image: the weight streams once per image at full rate
            if b is not None:
                torch.addmm(b.unsqueeze(1), w2, cols[i], out=y[i])
            else:
                torch.mm(w2, cols[i], out=y[i])
        return y.view(n, cout, oh, ow)

    # --- prepacked weights -----------------------------------------------------------------------
    def _weight_key(self):
        w = self.layer.weight
        return (w.data_ptr(), w._version, w.dtype, w.device, tuple(w.shape))

    def packed_weight(self):
        """oneDNN's blocked copy of the weight, re-packed whenever the parameter has changed."""
        if self._key != self._weight_key():
            self.pack()
        return self._packed

    def pack(self):
        c = self.layer
        w = c.weight.detach()
        if w.dtype != torch.float32 or w.device.type != "cpu":
            raise NetError(f"the oneDNN path needs float32 CPU weights, the layer has {w.dtype} on {w.device}; "
                           f"re-run optimize() with conv='torch' or 'gemm'", layer=c.layer_name)
        self._packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            w.to_mkldnn(), list(c.pad), list(c.stride), list(c.dilation), c.group, list(c.bottom_shapes[0]))
        self._key = self._weight_key()
        self.repacks += 1


class FastLRN(nn.Module):
    """LRN across channels as a sum of `size` shifted channel slices on the NHWC view: about twice
    as fast here as the layer's own avg_pool3d formulation (AlexNet's norm1/norm2)."""

    def __init__(self, lrn):
        super().__init__()
        self.lrn = [lrn]
        self.calls = Counter()

    def extra_repr(self):
        return f"'{self.lrn[0].layer_name}'"

    def forward(self, x):
        m = self.lrn[0]
        if x.dim() != 4:
            raise NetError(f"LRN needs a 4-D bottom, got shape {tuple(x.shape)}", layer=m.layer_name)
        self.calls["nhwc-sum"] += 1
        half = (m.size - 1) // 2
        xt = x.permute(0, 2, 3, 1)  # N H W C: a view when x is channels_last
        sq = F.pad(xt * xt, (half, half))
        c = x.shape[1]
        total = sq[..., 0:c]
        for i in range(1, m.size):
            total = total + sq[..., i:i + c]
        scale = (total * (m.alpha / m.size) + m.k).pow(-m.beta)
        return ((xt * scale).permute(0, 3, 1, 2),)


# --- the pass ---------------------------------------------------------------------------------------
def _check_choice(name, value, choices):
    if value not in choices:
        raise NetError(f"optimize(): {name} must be one of {choices}, got {value!r}")


def _fast_steps(steps, conv, memory_format, train, pool):
    """Each Convolution (with the in-place ReLU right after it) and each cross-channel LRN as a fast step."""
    from .net import Step

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
        impl = auto_impl(s.module) if conv == "auto" else conv
        if impl == "gemm" and s.module.group != 1:
            raise NetError(f"conv='gemm' needs group 1, this layer has group {s.module.group}", layer=s.name)
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        if (nxt is not None and isinstance(nxt.module, L.ReLU) and len(s.top) == 1
                and nxt.bottom == s.top and nxt.top == s.top):
            module = FastConv(s.module, nxt.module.negative_slope, impl, memory_format, train, pool)
            out.append(Step(f"{s.name}+{nxt.name}", s.bottom, s.top, module))
            i += 2
        else:
            out.append(Step(s.name, s.bottom, s.top, FastConv(s.module, None, impl, memory_format, train, pool)))
            i += 1
    return out


def optimize(net, conv="auto", skip="ext", memory_format="channels_last", train="autograd", buffers=2,
             enabled=True):
    """Install the fast plan on `net` (in place) and return it; enabled=False restores the plain plan.

    conv: "auto" (per layer, see auto_impl), "mkldnn", "gemm" or "torch" (F.conv2d, still fused
    with its ReLU); skip: the fused upsampling op's impl, "ext", "torch", or None (not fused);
    memory_format of the activations; train: "autograd" or "error" (see the module docstring);
    buffers: how many output buffers the oneDNN steps share and reuse (BufferPool; 0: none).
    """
    from .fusion import fused_plan
    from .net import Step

    steps = [Step(spec.name, spec.bottom, spec.top, net.layer(spec.name)) for spec in net.spec.layers]
    if not enabled:
        net.set_plan(steps)
        return net
    _check_choice("conv", conv, CONV_IMPLS)
    _check_choice("skip", skip, SKIP_IMPLS)
    _check_choice("memory_format", memory_format, MEMORY_FORMATS)
    _check_choice("train", train, TRAIN_MODES)
    if not isinstance(buffers, int) or isinstance(buffers, bool) or buffers < 0:
        raise NetError(f"optimize(): buffers must be a non-negative integer, got {buffers!r}")
    if skip == "ext" and not ops.extension_available():
        raise NetError("optimize(skip='ext'): the C++ extension fcn_caffe_repro._C is not built "
                       f"({ops._IMPORT_ERROR}); {ops._BUILD_HINT}, or pass skip='torch' or None")
    if skip is not None:
        steps = fused_plan(steps, skip)
    steps = _fast_steps(steps, conv, memory_format, train, BufferPool(buffers) if buffers else None)
    packed = [s.module for s in steps if isinstance(s.module, FastConv) and s.module.impl == "mkldnn"]
    if packed and not mkldnn_available():
        raise NetError(f"optimize(conv={conv!r}): oneDNN (torch.backends.mkldnn) is not available in this "
                       f"torch build; pass conv='torch' or 'gemm'")
    for module in packed:  # up front: the memory is claimed and bad dtypes/devices raise here
        module.pack()
    net.set_plan(steps)
    return net


# --- inspection ------------------------------------------------------------------------------------
def step_path(step):
    """The path a step takes in an inference forward, in words."""
    from .fusion import FusedDeconvCropSum

    m = step.module
    if isinstance(m, FastConv):
        return f"conv{'+relu' if m.slope is not None else ''}/{m.impl}"
    if isinstance(m, FastLRN):
        return "lrn/nhwc-sum"
    if isinstance(m, FusedDeconvCropSum):
        return f"deconv_crop{'_sum' if m.with_skip else ''}/{m.impl}/{'depthwise' if m.is_depthwise else 'dense'}"
    return f"layer/{m.spec.type}"


def describe(net):
    """[(step name, path)] for every step of the net's current plan."""
    return [(s.name, step_path(s)) for s in net.plan]


def calls(net):
    """{step name: {path: times run}} for the convolution (and LRN) steps of the fast plan."""
    return {s.name: dict(s.module.calls) for s in net.plan if isinstance(s.module, (FastConv, FastLRN))}


def _pool(net):
    return next((s.module.pool for s in net.plan if isinstance(s.module, FastConv) and s.module.pool), None)


def buffer_stats(net):
    """{"buffers": [bytes of each pooled buffer], "reused": n, "fresh": n} of the fast plan's pool."""
    pool = _pool(net)
    if pool is None:
        return {"buffers": [], "reused": 0, "fresh": 0}
    return {"buffers": [b[0].numel() * b[0].element_size() for b in pool.buffers], "reused": pool.reused,
            "fresh": pool.fresh}


def release_buffers(net):
    """Give the pooled output buffers back (the next forward maps fresh ones)."""
    pool = _pool(net)
    if pool is not None:
        pool.release()


def repack(net):
    """Re-pack every prepacked weight now (needed only after writes through `param.data`)."""
    for s in net.plan:
        if isinstance(s.module, FastConv) and s.module.impl == "mkldnn":
            s.module.pack()
