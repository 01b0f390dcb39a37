"""The Winograd backend: F(2x2, 3x3) for the wide 3x3 float32 convolutions of the fast mode.

A 2x2 output tile of a 3x3 convolution takes 16 products per channel pair in the Winograd domain
instead of 36 (Lavin & Gray, 2016): the input tiles are transformed (csrc/cpu/winograd.cpp), 16
matrix products (tiles x C) x (C x K) run at the GEMM rate (torch.bmm), and the output transform
adds the bias and applies the ReLU. At 256 and more input channels this beats oneDNN's direct
kernel (`fcn bench winograd` on the AMD EPYC VM, 2 threads: VGG's conv4_2, 512 channels at 88 x 88,
112 against 161 ms); below it the transforms' memory traffic eats the gain, so conv.auto_impl
takes it from 256 on.
Its rounding differs from a direct sum's (the transforms add and subtract inputs and products
first), within the fast mode's tolerances; an inf or NaN would spread over whole tiles, so a
layer whose values are not all finite is computed directly (FastConv), as Caffe places them.
"""
import torch

from .. import ops
from ..errors import NetError

MIN_CHANNELS = 256
# G of F(2x2, 3x3): the weight's transform G g G^T, made in float64 and rounded once
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def applies(conv):
    """Whether this Convolution layer can run here (in a float32 plan): 3x3, stride 1, no dilation,
    one group, and the extension built."""
    return (conv.kernel == (3, 3) and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.group == 1
            and ops.extension_available())


def worth_it(conv):
    """Whether auto takes this backend for the layer: it applies and has MIN_CHANNELS inputs or more."""
    return applies(conv) and conv.channels >= MIN_CHANNELS


def check_input(conv, x):
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise NetError(f"the Winograd path of this step runs float32 on the CPU, got {x.dtype} on {x.device}; "
                       f"re-run optimize() with conv='mkldnn' or 'torch' for this dtype/device", layer=conv.layer_name)


def transform_weight(conv):
    """The layer's weight in the Winograd domain, 16 x C x K float32 (G g G^T per channel pair)."""
    w = conv.weight.detach()
    if w.dtype != torch.float32 or w.device.type != "cpu":
        raise NetError(f"the Winograd path needs float32 CPU weights, the layer has {w.dtype} on {w.device}; "
                       f"re-run optimize() with conv='mkldnn'", layer=conv.layer_name)
    g = torch.tensor(_G, dtype=torch.float64)
    u = torch.einsum("ai,kcij,bj->abck", g, w.double(), g)
    return u.reshape(16, w.shape[1], w.shape[0]).to(torch.float32).contiguous()


class Workspace:
    """The Winograd-domain input and products of one fast plan, reused by its steps (which run one
    at a time, as a net's forwards do): tens of MB each at VGG's conv3-conv5 sizes, where fresh
    memory would be faulted in page by page on every forward."""

    def __init__(self):
        self.flat = [None, None]

    def take(self, which, n):
        """A flat float32 tensor of n values, buffer `which` (0: the input, 1: the products)."""
        buf = self.flat[which]
        if buf is None or buf.numel() < n or (buf.is_inference() and not torch.is_inference_mode_enabled()):
            buf = self.flat[which] = torch.empty(n, dtype=torch.float32)
        return buf[:n]

    def release(self):
        self.flat = [None, None]


def conv2d(conv, x, u, bias, slope, pad, workspace=None):
    """The layer's convolution of x (float32, N x C x H x W) with the transformed weight u, the
    bias (None: none), then ReLU (slope 0), leaky ReLU (another slope) or nothing (None); the
    output channels_last. None when a value before the activation is not finite (the caller
    computes the layer directly)."""
    n, c, h, w = x.shape
    oh, ow = h + 2 * pad[0] - 2, w + 2 * pad[1] - 2
    tiles = n * ((oh + 1) // 2) * ((ow + 1) // 2)
    k = u.shape[2]
    v_out = workspace.take(0, 16 * tiles * c) if workspace is not None else None
    v = torch.ops.fcn_caffe_repro.winograd_input(x, list(pad), v_out)
    m_out = workspace.take(1, 16 * tiles * k).view(16, tiles, k) if workspace is not None else None
    m = torch.bmm(v.view(16, tiles, c), u, out=m_out)
    activation = 0 if slope is None else (1 if slope == 0 else 2)
    y, finite = torch.ops.fcn_caffe_repro.winograd_output(m, bias, [n, oh, ow], activation, float(slope or 0.0))
    return y if finite else None
