"""The fused deconvolution-crop-sum op (csrc/) against its pure-PyTorch reference.

CPU tests run everywhere (the extension must be built); the GPU tests skip without CUDA.
"""
import itertools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import needs_cuda
from fcn_caffe_repro import ops

op = torch.ops.fcn_caffe_repro.deconv_crop_sum if ops.extension_available() else None


def full_size(n, k, s):
    return (n - 1) * s + k


def make_case(n=2, c=3, hi=5, wi=6, k=(4, 4), s=(2, 2), groups=1, crop=(1, 2, None, None), skip=True,
              skip_pad=(3, 2), dtype=torch.float64, device="cpu", seed=0):
    """Inputs and keyword arguments of one call; crop = (oh, ow, H, W), None: to the end."""
    g = torch.Generator().manual_seed(seed)
    kh, kw = k
    x = torch.randn(n, c, hi, wi, generator=g, dtype=dtype)
    w = torch.randn(c, c // groups, kh, kw, generator=g, dtype=dtype)
    fh, fw = full_size(hi, kh, s[0]), full_size(wi, kw, s[1])
    oh, ow, h, wd = crop
    h = fh - oh if h is None else h
    wd = fw - ow if wd is None else wd
    sk = None
    if skip:
        sk = torch.randn(n, c, h + skip_pad[0], wd + skip_pad[1], generator=g, dtype=dtype).to(device)
    kwargs = dict(stride=s, offset=(oh, ow), size=(h, wd), skip=sk, skip_offset=(skip_pad[0] // 2, skip_pad[1] // 2),
                  groups=groups)
    return x.to(device), w.to(device), kwargs


def draw_crop(data, hi, wi, k, s):
    """A random non-empty crop (oh, ow, H, W) of the full output of a k x k, stride-s deconvolution."""
    fh, fw = full_size(hi, k, s), full_size(wi, k, s)
    oh, ow = data.draw(st.integers(0, fh - 1)), data.draw(st.integers(0, fw - 1))
    return (oh, ow, data.draw(st.integers(1, fh - oh)), data.draw(st.integers(1, fw - ow)))


def assert_close_to_scale(got, want, scale, rtol):
    """|got - want| <= rtol * scale element by element, where scale is the sum of the magnitudes of
    the terms each element adds up (so the bound follows the rounding any summation order incurs,
    whatever the CPU's vector width); non-finite elements must be equal."""
    for g, w, m in zip(got, want, scale) if isinstance(got, (tuple, list)) else [(got, want, scale)]:
        assert g.shape == w.shape
        finite = torch.isfinite(w)
        assert torch.equal(finite, torch.isfinite(g)) and torch.equal(g[~finite], w[~finite])
        excess = (g - w).abs()[finite] - rtol * m[finite]
        assert (excess <= 0).all(), f"off by up to {excess.max().item():.3g} beyond rtol {rtol} of the terms' scale"


def term_scales(x, w, kw, gy=None):
    """Per element, the sum of the magnitudes of the terms the op adds up: of the output, or with an
    output gradient `gy`, of the x-, weight- and (when there is one) skip gradients."""
    a = {k: (v.detach().abs() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    xa, wa = x.detach().abs().requires_grad_(), w.detach().abs().requires_grad_()
    if a.get("skip") is not None:
        a["skip"].requires_grad_()
    out = ops.deconv_crop_sum(xa, wa, **a, impl="torch")
    if gy is None:
        return out.detach()
    inputs = (xa, wa) + ((a["skip"],) if a.get("skip") is not None else ())
    return torch.autograd.grad(out, inputs, gy.abs())


def assert_matches_reference(x, w, kwargs, rtol=None):
    """The kernel's output against the reference's, within rtol (float32 1e-5, float64 1e-12) of
    each element's terms."""
    got = ops.deconv_crop_sum(x, w, **kwargs)
    want = ops.deconv_crop_sum(x, w, **kwargs, impl="torch")
    assert got.is_contiguous()
    rtol = rtol or (1e-5 if x.dtype == torch.float32 else 1e-12)
    assert_close_to_scale(got, want, term_scales(x, w, kwargs), rtol)


def test_extension_is_built():
    assert ops.extension_available(), "fcn_caffe_repro._C is missing: pip install --no-build-isolation --no-deps -e ."


# Strides cover every CPU path: 1, 2, 4 (interleaved), 8, 16, 32 (register blocks), 3, 5 (gather).
@pytest.mark.parametrize("s", [1, 2, 3, 4, 5, 8, 16, 32])
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("skip", [False, True])
def test_forward_strides(s, groups, skip):
    for k in sorted({1, s, 2 * s, 2 * s + 1}):
        fh = full_size(5, k, s)
        x, w, kw = make_case(k=(k, k), s=(s, s), groups=groups, skip=skip, crop=(fh // 4, fh // 3, None, None))
        assert_matches_reference(x, w, kw)


@pytest.mark.parametrize("k,s", [(63, 1), (63, 32), (64, 32), (16, 8), (32, 16), (4, 2), (7, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_fcn_kernels(k, s, dtype):
    """FCN's kernel sizes (4, 16, 32, 63, 64), depthwise, with a centred crop and a skip."""
    fh = full_size(4, k, s)
    x, w, kw = make_case(n=2, c=4, hi=4, wi=5, k=(k, k), s=(s, s), groups=4, dtype=dtype,
                         crop=(k // 3, k // 2, fh - k // 3 - 1, full_size(5, k, s) - k // 2 - 2))
    assert_matches_reference(x, w, kw)


def test_forward_fcn8s_head_shapes():
    """The three calls of FCN-8s at a 500x500 input (batch 2, 21 classes)."""
    for (xs, k, s, skip, so, off, n) in [(16, 4, 2, 44, 5, 0, 34), (34, 4, 2, 88, 9, 0, 70), (70, 16, 8, None, 0, 31, 500)]:
        x = torch.randn(2, 21, xs, xs)
        w = torch.randn(21, 1, k, k)
        sk = torch.randn(2, 21, skip, skip) if skip else None
        kw = dict(stride=s, offset=off, size=(n, n), skip=sk, skip_offset=so, groups=21)
        assert_matches_reference(x, w, kw)


def test_forward_asymmetric_and_rectangular():
    for k, s in [((3, 5), (2, 3)), ((16, 4), (8, 2)), ((1, 9), (1, 4)), ((5, 2), (4, 8))]:
        x, w, kw = make_case(hi=3, wi=7, k=k, s=s, crop=(1, 3, None, None))
        assert_matches_reference(x, w, kw)


def test_forward_kernel_smaller_than_stride_leaves_gaps():
    """With k < s some outputs get no input: they equal the skip exactly."""
    x, w, kw = make_case(k=(2, 3), s=(4, 8), crop=(0, 0, None, None))
    assert_matches_reference(x, w, kw)
    out = ops.deconv_crop_sum(x, w, **kw)
    sh, sw = kw["skip_offset"]
    torch.testing.assert_close(out[..., 2, 3:8], kw["skip"][..., sh + 2, sw + 3:sw + 8], rtol=0, atol=0)


def test_forward_default_size_and_int_arguments():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    w = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    got = ops.deconv_crop_sum(x, w, 2, 1)
    want = F.conv_transpose2d(x, w, stride=2)[:, :, 1:, 1:]
    torch.testing.assert_close(got, want)


def test_forward_non_contiguous_inputs():
    x, w, kw = make_case(n=2, c=4, hi=6, wi=7, k=(4, 4), s=(2, 2), groups=4)
    x_nc = x.transpose(2, 3).contiguous().transpose(2, 3)  # column-major planes
    w_nc = torch.randn(4, 1, 4, 8, dtype=torch.float64)[:, :, :, ::2]  # strided columns
    x_sl = torch.randn(2, 4, 6, 14, dtype=torch.float64)[..., ::2]  # strided columns
    sk = kw["skip"]
    cases = [
        dict(skip=sk.contiguous(memory_format=torch.channels_last)),
        dict(skip=torch.randn(2, 4, sk.shape[2], 2 * sk.shape[3], dtype=torch.float64)[..., ::2]),  # column stride 2
        dict(skip=torch.randn(2, 8, *sk.shape[2:], dtype=torch.float64)[:, ::2]),  # channel stride
    ]
    for x_, w_ in [(x_nc, w), (x, w_nc), (x_sl, w_nc)]:
        for c in cases:
            assert_matches_reference(x_, w_, {**kw, **c})
    assert not (x_nc.is_contiguous() or w_nc.is_contiguous() or x_sl.is_contiguous())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), c=st.sampled_from([1, 2, 3]), hi=st.integers(1, 6), wi=st.integers(1, 9),
       kh=st.integers(1, 9), kw_=st.integers(1, 9), sh=st.integers(1, 9), sw=st.integers(1, 9),
       depthwise=st.booleans(), skip=st.booleans(), data=st.data())
def test_forward_random_geometry(n, c, hi, wi, kh, kw_, sh, sw, depthwise, skip, data):
    fh, fw = full_size(hi, kh, sh), full_size(wi, kw_, sw)
    oh = data.draw(st.integers(0, fh - 1))
    ow = data.draw(st.integers(0, fw - 1))
    h = data.draw(st.integers(1, fh - oh))
    wd = data.draw(st.integers(1, fw - ow))
    x, w, kw = make_case(n=n, c=c, hi=hi, wi=wi, k=(kh, kw_), s=(sh, sw), groups=c if depthwise else 1,
                         crop=(oh, ow, h, wd), skip=skip, skip_pad=(data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3))))
    assert_matches_reference(x, w, kw)


def stride2_float32_cases(hi, trim, vary_skip):
    """FCN's 2x layers (float32, 4 taps, stride 2) have a path of their own (a fixed tap count; two
    rows per pass in the forward): calls at every row width from 1 to 40 inputs, 4 crop phases, both
    group kinds; the crop's rows end wi % trim short of the full output."""
    for wi, (oh, ow), groups in itertools.product(range(1, 41), [(0, 0), (1, 1), (2, 3), (3, 0)], [1, 3]):
        fh, fw = full_size(hi, 4, 2), full_size(wi, 4, 2)
        crop = (oh, ow, fh - oh - (wi % trim), fw - ow - (oh % 3))
        if crop[3] >= 1:
            yield make_case(n=2, c=3, hi=hi, wi=wi, k=(4, 4), s=(2, 2), groups=groups, crop=crop,
                            skip=(wi + oh) % 2 == 0 if vary_skip else True, dtype=torch.float32, seed=wi)


def test_forward_float32_stride2_rows_every_width():
    for x, w, kw in stride2_float32_cases(hi=4, trim=2, vary_skip=True):
        assert_matches_reference(x, w, kw)


def test_backward_float32_stride2_rows_every_width():
    """The x-gradient: chunk groups, shifted last chunk and edge columns at every width."""
    for x, w, kw in stride2_float32_cases(hi=5, trim=3, vary_skip=False):
        x.requires_grad_()
        got = ops.deconv_crop_sum(x, w, **kw)
        want = ops.deconv_crop_sum(x, w, **kw, impl="torch")
        gy = torch.randn(want.shape, generator=torch.Generator().manual_seed(x.shape[-1]))
        assert_close_to_scale(torch.autograd.grad(got, x, gy)[0], torch.autograd.grad(want, x, gy)[0],
                              term_scales(x, w, kw, gy)[0], rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 2), c=st.sampled_from([1, 2, 3]), hi=st.integers(1, 6), wi=st.integers(1, 60),
       k=st.sampled_from([1, 3, 4, 5, 8]), s=st.sampled_from([1, 2, 4]), depthwise=st.booleans(),
       skip=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]), data=st.data())
def test_forward_small_strides_wide_rows(n, c, hi, wi, k, s, depthwise, skip, dtype, data):
    """The small-stride path's register groups (1 to 4 chunks of 8 input columns), its shifted last
    chunk, its row pairs (float32 4-tap kernels at stride 2: rows 2m and 2m+1 read the same input
    rows) and its element stores at odd crop offsets, on rows up to 240 outputs wide."""
    crop = draw_crop(data, hi, wi, k, s)
    x, w, kw = make_case(n=n, c=c, hi=hi, wi=wi, k=(k, k), s=(s, s), groups=c if depthwise else 1, crop=crop,
                         skip=skip, dtype=dtype, skip_pad=(data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3))))
    assert_matches_reference(x, w, kw)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 2), c=st.sampled_from([1, 2, 3]), hi=st.integers(1, 4), wi=st.integers(1, 45),
       k=st.integers(1, 9), s=st.sampled_from([1, 2, 3, 4, 8]), depthwise=st.booleans(), data=st.data())
def test_backward_random_geometry(n, c, hi, wi, k, s, depthwise, data):
    """Gradients of x, weight and skip against the reference's, rows wide enough for every group
    size of the vectorised column loops (up to 4 chunks of 8 input columns) and their ends."""
    crop = draw_crop(data, hi, wi, k, s)
    x, w, kw = make_case(n=n, c=c, hi=hi, wi=wi, k=(k, k), s=(s, s), groups=c if depthwise else 1, crop=crop)
    inputs = (x.requires_grad_(), w.requires_grad_(), kw.pop("skip").requires_grad_())
    got = ops.deconv_crop_sum(x, w, skip=inputs[2], **kw)
    want = ops.deconv_crop_sum(x, w, skip=inputs[2], **kw, impl="torch")
    gy = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, inputs, gy), torch.autograd.grad(want, inputs, gy),
                               rtol=1e-10, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 2), c=st.sampled_from([1, 2]), hi=st.integers(1, 3), wi=st.integers(1, 24),
       s=st.sampled_from([8, 16, 32]), blocks=st.sampled_from([1, 2, 3]), extra=st.sampled_from([0, 3]),
       depthwise=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]), data=st.data())
def test_large_strides_forward_and_gradient(n, c, hi, wi, s, blocks, extra, depthwise, dtype, data):
    """The upsampling layers' paths (strides 8, 16, 32): kernels of 2 blocks (FCN's, a path of their
    own), 1 and 3 blocks and ragged ones; eight-column register groups and the vector row ends,
    whose loads stay inside the gradient tensor or fall back to the gather (first and last rows)."""
    k = min(blocks * s - extra, 64)
    crop = draw_crop(data, hi, wi, k, s)
    x, w, kw = make_case(n=n, c=c, hi=hi, wi=wi, k=(k, k), s=(s, s), groups=c if depthwise else 1, crop=crop,
                         dtype=dtype, seed=wi)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    inputs = (x.requires_grad_(), kw["skip"].requires_grad_())
    got = ops.deconv_crop_sum(x, w, **kw)
    want = ops.deconv_crop_sum(x, w, **kw, impl="torch")
    assert_close_to_scale(got, want, term_scales(x, w, kw), rtol)
    gy = torch.randn(want.shape, generator=torch.Generator().manual_seed(wi), dtype=dtype)
    x_scale, _, skip_scale = term_scales(x, w, kw, gy)
    assert_close_to_scale(torch.autograd.grad(got, inputs, gy), torch.autograd.grad(want, inputs, gy),
                          (x_scale, skip_scale), rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_outside_a_columns_taps_does_not_reach_it(dtype):
    """The vector row ends load gradient values beyond the crop's row (the neighbouring rows) and
    must blend them away, not multiply them by zero: an infinity there would turn into NaN."""
    x, w, kw = make_case(n=2, c=2, hi=9, wi=12, k=(16, 16), s=(8, 8), groups=2, crop=(5, 31, 60, 70),
                         skip=False, dtype=dtype)
    w = w.abs()
    x.requires_grad_()
    got = ops.deconv_crop_sum(x, w, **kw)
    want = ops.deconv_crop_sum(x, w, **kw, impl="torch")
    gy = torch.randn_like(want)
    gy[:, :, 10:30, -1] = float("inf")  # right end of some rows: next to the next rows' left ends
    gy[:, :, 30:50, 0] = float("inf")  # left end of others: next to the previous rows' right ends
    (g_got,), (g_want,) = torch.autograd.grad(got, x, gy), torch.autograd.grad(want, x, gy)
    assert torch.isinf(g_want).any() and torch.isfinite(g_want).any()
    scale = term_scales(x, w, kw, gy.nan_to_num(posinf=0.0))[0]
    assert_close_to_scale(g_got, g_want, scale, rtol=1e-5)


_ISA_SCRIPT = """
import itertools, torch
from fcn_caffe_repro import ops
for s, k, g, wi in itertools.product([1, 2, 3, 4, 8, 16], [1, 4, 16, 17], [1, 2], [11, 40]):
    x = torch.randn(2, 2, 5, wi); w = torch.randn(2, 2 // g, k, k, requires_grad=True)
    xr = x.clone().requires_grad_(); sk = torch.randn(2, 2, (5 - 1) * s + k + 1, (wi - 1) * s + k + 2)
    kw = dict(stride=s, offset=(1, 2), size=((5 - 1) * s + k - 2, (wi - 1) * s + k - 3), skip=sk, skip_offset=1, groups=g)
    a, b = ops.deconv_crop_sum(xr, w, **kw), ops.deconv_crop_sum(xr, w, **kw, impl="torch")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    gy = torch.randn_like(a)
    torch.testing.assert_close(torch.autograd.grad(a, (xr, w), gy), torch.autograd.grad(b, (xr, w), gy), rtol=1e-4, atol=1e-3)
print("ok")
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_every_cpu_instruction_set_variant(isa):
    """The kernels are compiled per instruction set and picked at run time; check the lower ones
    too (the default run already checks the best one this CPU has)."""
    env = dict(os.environ, FCN_CPU_ISA=isa)
    res = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


@pytest.mark.parametrize("s,k,groups", [(1, 3, 1), (2, 4, 3), (3, 5, 1), (4, 4, 3), (8, 16, 3), (8, 3, 1)])
def test_gradcheck(s, k, groups):
    x, w, kw = make_case(n=2, c=3, hi=3, wi=4, k=(k, k), s=(s, s), groups=groups, crop=(1, 2, None, None))
    x.requires_grad_(True)
    w.requires_grad_(True)
    sk = kw.pop("skip").requires_grad_(True)
    fast = k >= 16  # a 16x16 kernel has 768 weight entries: random projections keep it quick
    assert torch.autograd.gradcheck(lambda x, w, sk: ops.deconv_crop_sum(x, w, skip=sk, **kw), (x, w, sk),
                                    fast_mode=fast)


def test_gradcheck_without_skip_and_fixed_weight():
    x, w, kw = make_case(n=1, c=2, hi=4, wi=3, k=(16, 16), s=(8, 8), groups=2, crop=(5, 3, 12, 20), skip=False)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ops.deconv_crop_sum(x, w, **kw), (x,))


def test_backward_op_mask_and_skip_gradient():
    x, w, kw = make_case(n=2, c=3, hi=4, wi=4, groups=3)
    grad = torch.randn(2, 3, *kw["size"], dtype=torch.float64)
    sk = kw["skip"]
    gx, gw, gs = torch.ops.fcn_caffe_repro.deconv_crop_sum_backward(
        grad, x, w, list(kw["stride"]), list(kw["offset"]), list(sk.shape), list(kw["skip_offset"]), 3,
        [True, False, True])
    assert gw.numel() == 0 and gx.shape == x.shape
    expect = torch.zeros_like(sk)
    (sh, sw), (h, wd) = kw["skip_offset"], kw["size"]
    expect[:, :, sh:sh + h, sw:sw + wd] = grad
    assert torch.equal(gs, expect)


class BackwardCalls(TorchDispatchMode):
    """Records the output_mask of every deconv_crop_sum_backward call (made by the C++ node)."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.fcn_caffe_repro.deconv_crop_sum_backward.default:
            self.masks.append(list(args[-1]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("wants,mask", [("x", [True, False, False]), ("skip", [False, False, True]),
                                        ("x weight skip", [True, True, True]), ("weight", [False, True, False])])
def test_autograd_computes_only_the_gradients_needed(wants, mask):
    x, w, kw = make_case(groups=3)
    leaves = dict(x=x, weight=w, skip=kw["skip"])
    for name in wants.split():
        leaves[name].requires_grad_(True)
    out = ops.deconv_crop_sum(x, w, **kw)
    with BackwardCalls() as calls:
        out.sum().backward()
    assert calls.masks == [mask]
    for name, t in leaves.items():
        assert (t.grad is not None) == (name in wants.split()), name


def test_double_backward_is_a_clear_error():
    """The backward op has no derivative: create_graph works for first-order uses, and going
    through it a second time raises instead of returning a silent zero."""
    x, w, kw = make_case(groups=3)
    x.requires_grad_(True)
    (g,) = torch.autograd.grad((ops.deconv_crop_sum(x, w, **kw) ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="deconv_crop_sum_backward.*not implemented"):
        torch.autograd.grad(g.sum(), x)


def test_no_graph_without_grad():
    x, w, kw = make_case(groups=3)
    x.requires_grad_(True)
    assert ops.deconv_crop_sum(x, w, **kw).grad_fn is not None
    with torch.no_grad():
        assert ops.deconv_crop_sum(x, w, **kw).grad_fn is None
    assert ops.deconv_crop_sum(x.detach(), w, **kw).grad_fn is None


def opcheck_cases():
    x, w, kw = make_case(n=2, c=2, hi=3, wi=4, k=(4, 4), s=(2, 2), groups=2)
    args = (x, w, list(kw["stride"]), list(kw["offset"]), list(kw["size"]), kw["skip"], list(kw["skip_offset"]), 2)
    yield args
    xg, wg, sg = x.clone().requires_grad_(), w.clone().requires_grad_(), kw["skip"].clone().requires_grad_()
    yield (xg, wg, *args[2:5], sg, *args[6:])
    x2, w2, kw2 = make_case(n=1, c=2, hi=3, wi=3, k=(16, 16), s=(8, 8), crop=(3, 4, 10, 11), skip=False)
    yield (x2.requires_grad_(), w2, [8, 8], [3, 4], [10, 11], None, [0, 0], 1)


def test_opcheck():
    for args in opcheck_cases():
        torch.library.opcheck(torch.ops.fcn_caffe_repro.deconv_crop_sum.default, args)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_torch_compile_fullgraph(device):
    x, w, kw = make_case(n=1, c=2, hi=3, wi=3, k=(4, 4), s=(2, 2), groups=2, dtype=torch.float32, device=device)
    sk = kw.pop("skip")
    x, w = x.to(device), w.to(device)

    def f(x, w, sk):
        return ops.deconv_crop_sum(x, w, skip=sk, **kw).relu()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, w, sk), f(x, w, sk))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_torch_compile_fullgraph_backward(device):
    """The C++ autograd node traces under AOTAutograd: compiled gradients equal eager ones."""
    x, w, kw = make_case(n=2, c=2, hi=3, wi=4, k=(4, 4), s=(2, 2), groups=2, dtype=torch.float32, device=device)
    sk = kw.pop("skip")
    x, w = x.to(device), w.to(device)

    def f(x, sk):
        return (ops.deconv_crop_sum(x, w, skip=sk, **kw) ** 2).sum()

    grads = []
    for fn in (f, torch.compile(f, fullgraph=True, backend="aot_eager")):
        xs, sks = x.clone().requires_grad_(), sk.clone().requires_grad_()
        fn(xs, sks).backward()
        grads.append((xs.grad, sks.grad))
    torch.testing.assert_close(grads[1], grads[0])


# ----- bad input: clear errors, never a crash or an out-of-bounds read -----

def bad(**changes):
    x, w, kw = make_case(n=1, c=3, hi=4, wi=4, groups=1, dtype=torch.float32)
    args = dict(x=x, weight=w, **kw)
    args.update(changes)
    return args


@pytest.mark.parametrize("changes,message", [
    (dict(weight=torch.randn(4, 3, 4, 4)), "input channels"),
    (dict(skip=torch.randn(1, 2, 20, 20)), "skip has shape"),
    (dict(skip=torch.randn(2, 3, 20, 20)), "skip has shape"),
    (dict(skip=torch.randn(1, 3, 9, 9)), "too small"),
    (dict(skip_offset=(5, 0)), "too small"),
    (dict(skip_offset=(-1, 0)), "skip_offset must be >= 0"),
    (dict(offset=(-1, 0)), "offset must be >= 0"),
    (dict(offset=(0, 0), size=(11, 10)), "outside the deconvolution output"),
    (dict(offset=(9, 0), size=(2, 2)), "outside the deconvolution output"),
    (dict(size=(0, 4)), "size must be >= 1"),
    (dict(stride=(0, 2)), "stride must be >= 1"),
    (dict(groups=2), "does not divide"),
    (dict(groups=0), "groups must be >= 1"),
    (dict(x=torch.randn(0, 3, 4, 4)), "x must be non-empty"),
    (dict(x=torch.randn(1, 3, 0, 4)), "x must be non-empty"),
    (dict(weight=torch.randn(3, 3, 0, 4)), "weight .* must be non-empty"),
    (dict(x=torch.randn(3, 4, 4)), "must be 4-D"),
    (dict(skip=torch.randn(1, 3, 0, 12)), "skip must be non-empty"),
    (dict(weight=torch.randn(3, 3, 4, 4, dtype=torch.float64)), "weight has dtype"),
    (dict(skip=torch.randn(1, 3, 20, 20, dtype=torch.float64)), "skip has dtype"),
    (dict(x=torch.ones(1, 3, 4, 4).to(torch.float8_e4m3fn), weight=torch.ones(3, 3, 4, 4).to(torch.float8_e4m3fn),
          skip=None), "supports float32, float64, bfloat16 and float16, got Float8_e4m3fn"),
    (dict(x=torch.ones(1, 3, 4, 4, dtype=torch.int32), weight=torch.ones(3, 3, 4, 4, dtype=torch.int32), skip=None), "floating point"),
])
def test_bad_input_raises_clear_error(changes, message):
    args = bad(**changes)
    with pytest.raises(RuntimeError, match=message):
        op(args["x"], args["weight"], list(args["stride"]), list(args["offset"]), list(args["size"]), args["skip"],
           list(args["skip_offset"]), args["groups"])


def test_backward_bad_input():
    x, w, kw = make_case(n=1, c=3, hi=4, wi=4, groups=3)
    with pytest.raises(RuntimeError, match="grad has shape"):
        torch.ops.fcn_caffe_repro.deconv_crop_sum_backward(
            torch.randn(1, 2, 5, 5, dtype=torch.float64), x, w, [2, 2], [1, 2], [], [0, 0], 3, [True, False, False])
    with pytest.raises(RuntimeError, match="too small"):
        torch.ops.fcn_caffe_repro.deconv_crop_sum_backward(
            torch.randn(1, 3, 5, 5, dtype=torch.float64), x, w, [2, 2], [1, 2], [1, 3, 5, 5], [1, 0], 3, [False, False, True])


def test_wrapper_argument_errors():
    x, w, kw = make_case()
    with pytest.raises(ValueError, match="impl"):
        ops.deconv_crop_sum(x, w, 2, impl="cuda")
    with pytest.raises(ValueError, match="pair"):
        ops.deconv_crop_sum(x, w, (2, 2, 2))
    with pytest.raises(ValueError, match="outside"):
        ops.deconv_crop_sum(x, w, 2, offset=(0, 0), size=(100, 4), impl="torch")


def test_missing_extension_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setattr(ops, "_IMPORT_ERROR", ImportError("no module named fcn_caffe_repro._C"))
    assert not ops.extension_available()
    x, w, kw = make_case()
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation --no-deps -e"):
        ops.deconv_crop_sum(x, w, **kw)
    ops.deconv_crop_sum(x, w, **kw, impl="torch")  # the reference path still works


# ----- CUDA (skipped without a GPU) -----

CUDA_CASES = [((4, 4), (2, 2), 3, True), ((16, 16), (8, 8), 3, False), ((5, 3), (3, 2), 1, True), ((63, 63), (32, 32), 3, True)]


@needs_cuda
@pytest.mark.parametrize("k,s,groups,skip", CUDA_CASES)
def test_cuda_matches_cpu(k, s, groups, skip):
    x, w, kw = make_case(n=2, c=3, hi=5, wi=6, k=k, s=s, groups=groups, skip=skip, crop=(2, 1, None, None))
    x.requires_grad_(True)
    w.requires_grad_(True)
    xc, wc = x.detach().cuda().requires_grad_(True), w.detach().cuda().requires_grad_(True)
    kc = {**kw, "skip": kw["skip"].cuda() if skip else None}
    out, outc = ops.deconv_crop_sum(x, w, **kw), ops.deconv_crop_sum(xc, wc, **kc)
    torch.testing.assert_close(outc.cpu(), out)
    gy = torch.randn_like(out)
    torch.testing.assert_close([t.cpu() for t in torch.autograd.grad(outc, (xc, wc), gy.cuda())],
                               list(torch.autograd.grad(out, (x, w), gy)))


@needs_cuda
def test_cuda_gradcheck_and_opcheck():
    x, w, kw = make_case(n=2, c=3, hi=3, wi=4, k=(4, 4), s=(2, 2), groups=3, device="cuda")
    x, w = x.cuda().requires_grad_(True), w.cuda().requires_grad_(True)
    sk = kw.pop("skip").requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, w, sk: ops.deconv_crop_sum(x, w, skip=sk, **kw), (x, w, sk))
    for args in opcheck_cases():
        args = tuple(a.detach().cuda().requires_grad_(a.requires_grad) if torch.is_tensor(a) else a for a in args)
        torch.library.opcheck(torch.ops.fcn_caffe_repro.deconv_crop_sum.default, args)


def assert_rounded_once(got, want, scale, dtype):
    """got (dtype) is want (float32) rounded once to dtype: within half an ulp of want, plus float32's
    summation slack (1e-5 of the terms' scale)."""
    assert got.dtype == dtype
    bound = torch.finfo(dtype).eps / 2 * want.abs() + 1e-5 * scale
    excess = (got.float() - want).abs() - bound
    assert (excess <= 0).all(), f"off by up to {excess.max().item():.3g} beyond one rounding to {dtype}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k, s, groups", [((4, 4), (2, 2), 1), ((4, 4), (2, 2), 3), ((16, 16), (8, 8), 3),
                                          ((64, 64), (32, 32), 1), ((3, 5), (3, 2), 1)])
def test_cpu_half_precision_sums_in_float32(dtype, k, s, groups):
    """bfloat16 and float16 on the CPU: the float32 sum of the same inputs, rounded once to the dtype
    (a kernel summing in the half type rounds at every partial sum and misses this bound); the
    gradients likewise."""
    x, w, kw = make_case(n=2, c=3, hi=5, wi=6, k=k, s=s, groups=groups, dtype=torch.float32, seed=1)
    x, w, skip = x.to(dtype), w.to(dtype), kw["skip"].to(dtype)
    x.requires_grad_()
    w.requires_grad_()
    got = ops.deconv_crop_sum(x, w, **{**kw, "skip": skip})
    xf, wf = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    want = ops.deconv_crop_sum(xf, wf, **{**kw, "skip": skip.float()}, impl="torch")
    assert_rounded_once(got, want.detach(), term_scales(xf, wf, {**kw, "skip": skip.float()}), dtype)
    gy = torch.randn(got.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    got_g = torch.autograd.grad(got, (x, w), gy)
    want_g = torch.autograd.grad(want, (xf, wf), gy.float())
    scales = term_scales(xf, wf, {**kw, "skip": skip.float()}, gy.float())
    for g, wg, sc in zip(got_g, want_g, scales):
        assert_rounded_once(g, wg, sc, dtype)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision(dtype):
    x, w, kw = make_case(n=2, c=21, hi=16, wi=16, k=(4, 4), s=(2, 2), groups=21, dtype=torch.float32, device="cuda")
    x, w = x.cuda(), w.cuda()
    want = ops.deconv_crop_sum(x, w, **kw)
    got = ops.deconv_crop_sum(x.to(dtype), w.to(dtype), **{**kw, "skip": kw["skip"].to(dtype)})
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=5e-2)


@needs_cuda
def test_cuda_device_mix_is_an_error():
    x, w, kw = make_case(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="is on"):
        op(x.cuda(), w, list(kw["stride"]), list(kw["offset"]), list(kw["size"]), kw["skip"].cuda(),
           list(kw["skip_offset"]), 1)
    with pytest.raises(RuntimeError, match="is on"):
        op(x.cuda(), w.cuda(), list(kw["stride"]), list(kw["offset"]), list(kw["size"]), kw["skip"],
           list(kw["skip_offset"]), 1)


@pytest.mark.parametrize("s, k", [(1, 3), (2, 4), (2, 3), (4, 6), (3, 5), (8, 12), (8, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("where", ["weight", "input"])
def test_infinities_give_what_the_reference_gives(s, k, dtype, where):
    """The vector paths multiply zero padding (past the kernel, past the input's columns), and
    0 * inf = NaN where Caffe's arithmetic (products of real taps only) gives +-inf. The float64
    reference forms real taps only (col2im); float32's (oneDNN) may pad too, so it is not the judge."""
    x, w, kwargs = make_case(k=(k, k), s=(s, s), dtype=dtype, seed=3)
    if where == "weight":
        w[0, 1, 1, 2], w[1, 0, 0, 0] = float("inf"), float("-inf")
    else:
        x[0, 0, 1, 2], x[1, 2, 0, 0] = float("inf"), float("-inf")
    got = ops.deconv_crop_sum(x, w, **kwargs)
    exact = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    want = ops.deconv_crop_sum(x.double(), w.double(), **exact, impl="torch").to(dtype)
    assert torch.isinf(want).any()
    assert torch.equal(got.isnan(), want.isnan()), f"{int(got.isnan().sum())} NaN where the reference has {int(want.isnan().sum())}"
    inf = torch.isinf(want)
    assert torch.equal(got[inf], want[inf])
    finite = torch.isfinite(want)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    bound = rtol * (term_scales(x.double(), w.double(), exact).to(dtype) + want.abs())  # want was rounded
    assert ((got - want).abs()[finite] <= bound[finite]).all()


def _gradients(x, w, kwargs, gy, dtype, impl=None):
    """(x, weight, skip) gradients of one call in `dtype`, for the output gradient gy."""
    leaves = [x.detach().to(dtype).requires_grad_(), w.detach().to(dtype).requires_grad_()]
    kw = {k: v.detach().to(dtype).requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    out = ops.deconv_crop_sum(*leaves, **kw, **({"impl": impl} if impl else {}))
    return torch.autograd.grad(out, leaves + [kw["skip"]], gy.to(dtype))


@pytest.mark.parametrize("s, k", [(1, 3), (2, 4), (2, 3), (4, 6), (3, 5), (8, 12), (8, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("where", ["weight", "input"])
def test_backward_infinities_give_what_the_reference_gives(s, k, dtype, where):
    """Caffe backpropagates zeros from the cropped-away border through the whole deconvolution, and
    0 * inf = NaN there: an infinite weight makes NaN in the x gradient, an infinite input in the
    weight gradient, where a kernel that skips the border's products gives +-inf. The judge is the
    float64 reference (im2col arithmetic, as Caffe's)."""
    x, w, kwargs = make_case(k=(k, k), s=(s, s), dtype=torch.float64, seed=3)
    if where == "weight":
        w[0, 1, 1, 2], w[1, 0, 0, 0] = float("inf"), float("-inf")
    else:
        x[0, 0, 1, 2], x[1, 2, 0, 0] = float("inf"), float("-inf")
    gy = torch.randn(x.shape[0], w.shape[1], *kwargs["size"], generator=torch.Generator().manual_seed(4),
                     dtype=torch.float64)
    got = _gradients(x, w, kwargs, gy, dtype)
    want = [g.to(dtype) for g in _gradients(x, w, kwargs, gy, torch.float64, impl="torch")]
    affected = got[0] if where == "weight" else got[1]
    assert affected.isnan().any() or affected.isinf().any()
    scales = [t.to(dtype) for t in term_scales(x, w, kwargs, gy)]
    rtol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2e-2}[dtype]
    for name, g, r, scale in zip(("x", "weight", "skip"), got, want, scales):
        assert torch.equal(g.isnan(), r.isnan()), \
            f"{name} gradient: {int(g.isnan().sum())} NaN where the reference has {int(r.isnan().sum())}"
        inf = torch.isinf(r)
        assert torch.equal(g[inf], r[inf]), f"{name} gradient: infinities differ"
        finite = torch.isfinite(r)
        bound = rtol * (scale.float() + r.float().abs())
        assert ((g.float() - r.float()).abs()[finite] <= bound[finite]).all(), f"{name} gradient"


@pytest.mark.parametrize("skip", [False, True])
def test_empty_batch_gives_the_references_empty_result(skip):
    x, w, kwargs = make_case(n=0, skip=skip, dtype=torch.float32)
    x.requires_grad_()
    w.requires_grad_()
    got, want = ops.deconv_crop_sum(x, w, **kwargs), ops.deconv_crop_sum(x, w, **kwargs, impl="torch")
    assert got.shape == want.shape and got.shape[0] == 0
    got.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and x.grad.shape == x.shape
