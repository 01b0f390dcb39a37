"""The CUDA kernels' bodies (csrc/cuda/kernels.cuh) executed on the CPU under an emulated launch
(csrc/emulated/launch.h): every kernel, in every dtype the .cu dispatches, against the CPU op and
the pure-PyTorch reference.

The emulated op is built here with torch.utils.cpp_extension.load into a temporary directory, once
per session.  Blocks are small (mostly 32-64 threads, a few odd or tiny ones) and grids are capped
below the work, so the grid-stride loops wrap; the int64 index path is forced by a flag.  Tolerances are test_ops.py's.
"""
import random
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension as cpp_ext

from fcn_caffe_repro import ops
from test_ops import assert_close_to_scale, full_size, make_case, term_scales

CSRC = Path(__file__).resolve().parents[1] / "csrc"
EXACT = {torch.float32: 1e-5, torch.float64: 1e-12}  # test_ops.py's rtol of each term's magnitude
HALF = (torch.float16, torch.bfloat16)

pytestmark = pytest.mark.skipif(not ops.extension_available(), reason="fcn_caffe_repro._C is not built")


@pytest.fixture(scope="session")
def emulated(tmp_path_factory):
    """torch.ops.fcn_emulated: the kernels of kernels.cuh launched on the CPU."""
    build = tmp_path_factory.mktemp("fcn_emulated_build")
    cpp_ext.load(name="fcn_emulated", sources=[str(CSRC / "emulated" / "ops.cpp"), str(CSRC / "deconv_crop_sum.cpp")],
                 build_directory=str(build), extra_cflags=["-O1"], is_python_module=False, verbose=False)
    return torch.ops.fcn_emulated


def call_forward(emu, x, w, kw, threads=32, max_blocks=5, force_int64=False):
    return emu.forward(x, w, list(kw["stride"]), list(kw["offset"]), list(kw["size"]), kw["skip"],
                       list(kw["skip_offset"]), kw["groups"], threads, max_blocks, force_int64)


def call_backward(emu, gy, x, w, kw, threads=32, max_blocks=5, force_int64=False):
    skip_size = list(kw["skip"].shape) if kw["skip"] is not None else []
    return emu.backward(gy, x, w, list(kw["stride"]), list(kw["offset"]), skip_size, list(kw["skip_offset"]),
                        kw["groups"], threads, max_blocks, force_int64)


def check_case(emu, x, w, kw, **launch):
    """Forward, x- and weight-gradient of the emulated kernels against the CPU op and the reference."""
    rtol = EXACT[x.dtype]
    got, _ = call_forward(emu, x, w, kw, **launch)
    assert_close_to_scale(got, ops.deconv_crop_sum(x, w, **kw), term_scales(x, w, kw), rtol)
    assert_close_to_scale(got, ops.deconv_crop_sum(x, w, **kw, impl="torch"), term_scales(x, w, kw), rtol)
    gy = torch.randn(got.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    gx, gw, syncs, _ = call_backward(emu, gy, x, w, kw, **launch)
    assert syncs > 0
    xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
    scales = term_scales(x, w, kw, gy)[:2]
    for impl in ("ext", "torch"):
        want = torch.autograd.grad(ops.deconv_crop_sum(xr, wr, **kw, impl=impl), (xr, wr), gy)
        assert_close_to_scale((gx, gw), want, scales, rtol)


def random_cases(count, seed):
    """Geometries with strides 1-32 (kernel up to twice the stride), groups, skip or not, and a crop
    of random phase; small enough for a fiber per thread."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        sh, sw = rng.choice([1, 2, 3, 4, 5, 8, 16, 32]), rng.choice([1, 2, 3, 4, 7, 8, 32])
        kh, kw_ = rng.randint(1, 2 * sh), rng.randint(1, 2 * sw)
        hi, wi = rng.randint(1, 4), rng.randint(1, 5)
        groups = rng.choice([1, 1, 2, 3])
        c = groups * rng.randint(1, 2)
        fh, fw = full_size(hi, kh, sh), full_size(wi, kw_, sw)
        oh, ow = rng.randrange(fh), rng.randrange(fw)
        crop = (oh, ow, rng.randint(1, min(fh - oh, 24)), rng.randint(1, min(fw - ow, 24)))
        cases.append(dict(n=rng.randint(1, 2), c=c, hi=hi, wi=wi, k=(kh, kw_), s=(sh, sw), groups=groups,
                          crop=crop, skip=rng.random() < 0.6, seed=i))
    return cases


@pytest.mark.parametrize("case", random_cases(16, seed=18), ids=lambda c: f"s{c['s']}k{c['k']}g{c['groups']}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_geometries(emulated, case, dtype):
    x, w, kw = make_case(dtype=dtype, **case)
    check_case(emulated, x, w, kw, threads=32, max_blocks=3)


@pytest.mark.parametrize("s", [2, 3, 8, 32])
@pytest.mark.parametrize("axis", [0, 1])
def test_every_crop_phase(emulated, s, axis):
    """Crop offsets of every residue mod the stride, along one axis (the other at stride 1, which
    keeps the weight gradient's grid, one block per tap, small at stride 32)."""
    for phase in range(s):
        k, st = [2, 2], [1, 1]
        k[axis], st[axis] = s + 1, s
        crop = [1, 1, 2, 2]
        crop[axis], crop[2 + axis] = phase, s + 1
        x, w, kw = make_case(n=1, c=2, hi=2, wi=3, k=tuple(k), s=tuple(st), crop=tuple(crop), seed=phase)
        check_case(emulated, x, w, kw, threads=32, max_blocks=2)


@pytest.mark.parametrize("threads, max_blocks", [(32, 1), (64, 3), (32, 7), (64, 1 << 20)])
def test_launch_geometry(emulated, threads, max_blocks):
    """One block, a few (not a multiple of anything), or enough blocks that nothing wraps."""
    x, w, kw = make_case(n=2, c=6, hi=5, wi=7, k=(4, 6), s=(2, 3), groups=3, crop=(1, 2, None, None))
    check_case(emulated, x, w, kw, threads=threads, max_blocks=max_blocks)


@pytest.mark.parametrize("threads", [2, 32])
def test_weight_gradient_rows_wrap_the_block(emulated, threads):
    """More (n, row) terms per weight element than threads: each thread sums several rows."""
    x, w, kw = make_case(n=3, c=2, hi=30, wi=4, k=(3, 3), s=(1, 2), crop=(1, 1, None, None), dtype=torch.float64)
    assert 3 * 30 > 2 * threads
    check_case(emulated, x, w, kw, threads=threads, max_blocks=3)


def test_forward_and_grad_input_blocks_need_not_be_powers_of_two(emulated):
    x, w, kw = make_case(n=2, c=3, hi=4, wi=5, k=(3, 5), s=(2, 3), crop=(1, 1, None, None), dtype=torch.float64)
    for threads in (1, 7, 48):
        got, _ = call_forward(emulated, x, w, kw, threads=threads, max_blocks=5)
        assert_close_to_scale(got, ops.deconv_crop_sum(x, w, **kw), term_scales(x, w, kw), 1e-12)


@pytest.mark.parametrize("layout", ["permuted", "strided_columns", "channels_last"])
def test_non_contiguous_skip(emulated, layout):
    """The skip view's four strides and its offset, each a different number."""
    x, w, kw = make_case(n=2, c=3, hi=4, wi=5, k=(4, 4), s=(2, 2), crop=(1, 2, 7, 8), skip=False, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    n, c, h, wd = 2, 3, 7 + 3, 8 + 2
    if layout == "permuted":
        skip = torch.randn(wd, n, h, c, generator=g, dtype=torch.float64).permute(1, 3, 2, 0)
    elif layout == "strided_columns":
        skip = torch.randn(n, c, h, 2 * wd, generator=g, dtype=torch.float64)[..., ::2]
    else:
        skip = torch.randn(n, c, h, wd, generator=g, dtype=torch.float64).to(memory_format=torch.channels_last)
    assert not skip.is_contiguous() and len(set(skip.stride())) == 4
    kw = {**kw, "skip": skip, "skip_offset": (2, 1)}
    check_case(emulated, x, w, kw, threads=32, max_blocks=4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_int64_index_path(emulated, dtype):
    x, w, kw = make_case(n=2, c=4, hi=4, wi=5, k=(4, 4), s=(2, 2), groups=2, dtype=dtype)
    assert not call_forward(emulated, x, w, kw)[1]  # small calls take int32
    assert call_forward(emulated, x, w, kw, force_int64=True)[1]
    check_case(emulated, x, w, kw, threads=32, max_blocks=3, force_int64=True)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("force_int64", [False, True])
def test_half_precision_as_the_gpu_test(emulated, dtype, force_int64):
    """test_ops.py's test_cuda_half_precision: the FCN head shape, against float32."""
    x, w, kw = make_case(n=2, c=21, hi=16, wi=16, k=(4, 4), s=(2, 2), groups=21, dtype=torch.float32)
    want = ops.deconv_crop_sum(x, w, **kw)
    got, _ = call_forward(emulated, x.to(dtype), w.to(dtype), {**kw, "skip": kw["skip"].to(dtype)},
                          threads=64, max_blocks=7, force_int64=force_int64)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("case", random_cases(6, seed=180), ids=lambda c: f"s{c['s']}k{c['k']}g{c['groups']}")
@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_accumulates_in_float(emulated, case, dtype):
    """Inputs exactly representable in the dtype: the kernels accumulate in float and round once, so
    each result is within the dtype's epsilon of its terms' magnitude from the float64 reference
    (accumulating in the dtype itself would lose several epsilons on these sums)."""
    x, w, kw = make_case(dtype=torch.float64, **case)
    x, w = x.to(dtype).double(), w.to(dtype).double()
    if kw["skip"] is not None:
        kw["skip"] = kw["skip"].to(dtype).double()
    low = {**kw, "skip": None if kw["skip"] is None else kw["skip"].to(dtype)}
    eps = torch.finfo(dtype).eps
    got, _ = call_forward(emulated, x.to(dtype), w.to(dtype), low, threads=32, max_blocks=3)
    assert_close_to_scale(got.double(), ops.deconv_crop_sum(x, w, **kw, impl="torch"), term_scales(x, w, kw), eps)
    gy = torch.randn(got.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype).double()
    gx, gw, _, _ = call_backward(emulated, gy.to(dtype), x.to(dtype), w.to(dtype), low, threads=32, max_blocks=3)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    want = torch.autograd.grad(ops.deconv_crop_sum(xr, wr, **kw, impl="torch"), (xr, wr), gy)
    assert_close_to_scale((gx.double(), gw.double()), want, term_scales(x, w, kw, gy)[:2], eps)
