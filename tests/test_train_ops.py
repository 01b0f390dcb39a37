"""The layers' training path (train_ops): the im2col + GEMM convolution against PyTorch's and
against Caffe's gradients, the channels_last and recomputed-pooling paths taken and exact, the
inference forward untouched, and the heap policy (heap.py) in a fresh process."""
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import CAFFE_REF, randomize, rel_err
from fcn_caffe_repro import heap, ops, train_ops
from fcn_caffe_repro.caffe.spec import L as S
from fcn_caffe_repro.caffe.spec import NetBuilder, max_pool
from fcn_caffe_repro.net import CaffeNet

GEOMETRIES = {  # (N, C, H, W), C_out, kernel, stride, pad, dilation, bias
    "fc6-like 7x7": ((1, 6, 9, 9), 40, (7, 7), (1, 1), (0, 0), (1, 1), True),
    "1x1": ((1, 8, 3, 4), 16, (1, 1), (1, 1), (0, 0), (1, 1), True),
    "batch 2, stride, pad, no bias": ((2, 3, 7, 6), 32, (3, 3), (2, 2), (1, 1), (1, 1), False),
    "rectangular, dilated": ((1, 4, 8, 9), 48, (3, 2), (1, 2), (2, 1), (2, 1), True),
}


def out_shape(x_shape, cout, k, s, p, d):
    return (x_shape[0], cout) + tuple((x_shape[2 + i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2))


@pytest.mark.parametrize("case", list(GEOMETRIES))
def test_im2col_conv_matches_pytorch(case):
    xs, cout, k, s, p, d, has_bias = GEOMETRIES[case]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(xs, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn((cout, xs[1]) + k, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(cout, generator=g, dtype=torch.float64, requires_grad=True) if has_bias else None
    shape = out_shape(xs, cout, k, s, p, d)
    assert train_ops.uses_gemm(xs, shape, 1)
    got = train_ops.conv2d(x, w, b, s, p, d, 1, shape)
    assert "Im2colConv" in type(got.grad_fn).__name__
    want = F.conv2d(x, w, b, s, p, d)
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    inputs = [x, w] + ([b] if has_bias else [])
    for a, e in zip(torch.autograd.grad(got, inputs, dy), torch.autograd.grad(want, inputs, dy)):
        assert rel_err(a.numpy(), e.numpy()) < 1e-12
    assert rel_err(got.detach().numpy(), want.detach().numpy()) < 1e-12


def test_im2col_conv_only_the_wanted_gradients():
    x = torch.randn(1, 5, 4, 4)
    w = torch.randn(30, 5, 3, 3, requires_grad=True)
    y = train_ops.conv2d(x, w, None, (1, 1), (0, 0), (1, 1), 1, (1, 30, 2, 2))
    y.sum().backward()
    assert x.grad is None and w.grad.shape == w.shape


@pytest.mark.parametrize("case", ["conv_basic", "conv_stride_pad_nobias", "conv_rect_hw_fields"])
def test_im2col_conv_matches_caffe(case):
    """Caffe's own gradients (the layer fixtures) through the GEMM path, whatever the layer would pick."""
    folder = CAFFE_REF / "layers" / case
    ref = np.load(folder / "blobs.npz")
    net = CaffeNet.from_prototxt(folder / "net.prototxt")
    conv = net.layer_modules()[-1][1]
    x = torch.tensor(ref["x"], requires_grad=True)
    w = torch.tensor(ref["param0"], requires_grad=True)
    b = torch.tensor(ref["param1"], requires_grad=True) if conv.bias is not None else None
    y = train_ops._Im2colConv.apply(x, w, b, conv.stride, conv.pad, conv.dilation, conv.output_shape(x.shape))
    y.backward(torch.tensor(ref["out_diff"]))
    assert rel_err(y.detach().numpy(), ref["out"]) <= 1e-5
    assert rel_err(x.grad.numpy(), ref["x_diff"]) <= 1e-5
    assert rel_err(w.grad.numpy(), ref["param0_diff"]) <= 1e-5
    if b is not None:
        assert rel_err(b.grad.numpy(), ref["param1_diff"]) <= 1e-5


def conv_net(channels, num_output, size=12):
    """A one-convolution net (3x3, pad 1) in the TRAIN phase with seeded random weights."""
    n = NetBuilder()
    n.data = S.Input(input_param=dict(shape=dict(dim=[1, channels, size, size])))
    n.conv = S.Convolution(n.data, num_output=num_output, kernel_size=3, pad=1)
    return randomize(CaffeNet(n.to_spec("c"), phase="train"), 1)


@pytest.mark.parametrize("channels, layout", [(16, torch.channels_last), (130, torch.contiguous_format)])
def test_training_convolution_layout(channels, layout):
    net = conv_net(channels, 8)
    x = torch.randn(1, channels, 12, 12)
    y = net(data=x)["conv"]
    assert y.is_contiguous(memory_format=layout)
    want = F.conv2d(x, net.conv.weight, net.conv.bias, 1, 1)
    assert rel_err(y.detach().numpy(), want.detach().numpy()) < 1e-5


def test_training_convolution_takes_the_gemm_path_when_the_weight_dominates():
    net = conv_net(4, 40, size=6)  # 36 output pixels, 40 output channels
    assert "Im2colConv" in type(net(data=torch.randn(1, 4, 6, 6))["conv"].grad_fn).__name__
    assert "Im2colConv" not in type(conv_net(4, 30, size=6)(data=torch.randn(1, 4, 6, 6))["conv"].grad_fn).__name__


BORDER_CASES = {  # (N, C, H, W), C_out, kernel, pad, dilation, groups, bias: padded past the window's reach
    "conv1_1-like": ((1, 3, 12, 10), 4, (3, 3), (100, 100), (1, 1), 1, True),
    "rectangular, dilated, grouped": ((2, 4, 7, 9), 6, (3, 2), (7, 4), (2, 3), 2, True),
    "no bias, pad one past": ((1, 3, 5, 6), 5, (3, 3), (3, 3), (1, 1), 1, False),
}


def _border_conv(case, dtype=torch.float64, seed=0):
    xs, cout, k, p, d, groups, has_bias = BORDER_CASES[case]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(xs, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn((cout, xs[1] // groups) + k, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(cout, generator=g, dtype=dtype, requires_grad=True) if has_bias else None
    want = F.conv2d(x, w, b, 1, p, d, groups)
    got = train_ops.conv2d(x, w, b, (1, 1), p, d, groups, want.shape)
    dy = torch.randn(want.shape, generator=g, dtype=dtype)
    return got, want, dy, [x, w] + ([b] if has_bias else [])


@pytest.mark.parametrize("case", list(BORDER_CASES))
def test_convolution_padded_past_its_reach_computes_only_where_windows_touch_the_input(case):
    """The border of outputs whose windows hold only padding is the bias, gets no weight or input
    gradient and all of the bias gradient: the same function and gradients as F.conv2d's."""
    got, want, dy, inputs = _border_conv(case)
    assert "BorderConv" in type(got.grad_fn).__name__
    assert got.shape == want.shape
    assert rel_err(got.detach().numpy(), want.detach().numpy()) < 1e-12
    for a, e in zip(torch.autograd.grad(got, inputs, dy), torch.autograd.grad(want, inputs, dy)):
        assert rel_err(a.numpy(), e.numpy()) < 1e-12


@pytest.mark.parametrize("case", list(BORDER_CASES))
@pytest.mark.parametrize("where", ["border", "core"])
def test_convolution_padded_past_its_reach_with_an_infinite_gradient_gives_what_caffe_gives(case, where):
    """Caffe multiplies every output gradient by the zeros of the padding: an infinite gradient in
    the border makes the weight gradient NaN there, as the full convolution's backward does."""
    got, want, dy, inputs = _border_conv(case)
    dy[0, 0, 0 if where == "border" else dy.shape[2] // 2, 0 if where == "border" else dy.shape[3] // 2] = math.inf
    grads = list(zip(torch.autograd.grad(got, inputs, dy), torch.autograd.grad(want, inputs, dy)))
    for a, e in grads:
        assert torch.equal(a.isnan(), e.isnan()) and torch.equal(a.isinf(), e.isinf())
        assert rel_err(a.nan_to_num(0, 0, 0).numpy(), e.nan_to_num(0, 0, 0).numpy()) < 1e-12
    assert where == "core" or bool(grads[1][1].isnan().any())  # the border's 0 x inf in the weight gradient


def test_convolution_padded_past_its_reach_with_an_infinite_weight_runs_in_full():
    """0 x inf is NaN in Caffe's border; the full convolution gives it."""
    xs, cout, k, p, d, groups, has_bias = BORDER_CASES["conv1_1-like"]
    x = torch.randn(xs, dtype=torch.float64)
    w = torch.randn((cout, xs[1]) + k, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        w[1, 0, 0, 0] = math.inf
    want = F.conv2d(x, w, None, 1, p, d)
    got = train_ops.conv2d(x, w, None, (1, 1), p, d, 1, want.shape)
    assert "BorderConv" not in type(got.grad_fn).__name__
    assert torch.equal(got.isnan(), want.isnan()) and bool(got[0, 1, 0, 0].isnan())


@pytest.mark.parametrize("stride, pad", [((1, 1), (2, 2)), ((2, 2), (100, 100)), ((1, 1), (100, 1))])
def test_convolution_within_its_reach_or_strided_takes_the_full_path(stride, pad):
    assert train_ops.border_reach((3, 3), stride, pad, (1, 1)) is None
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    want = F.conv2d(x, w, None, stride, pad)
    got = train_ops.conv2d(x, w, None, stride, pad, (1, 1), 1, want.shape)
    assert "BorderConv" not in type(got.grad_fn).__name__ and rel_err(got.detach(), want.detach()) < 1e-12


SMALL_CONV_CASES = [((1, 4, 9, 11), 4), ((2, 4, 7, 5), 8), ((1, 8, 6, 13), 16), ((1, 16, 5, 4), 16),
                    ((1, 16, 3, 3), 4), ((1, 8, 1, 7), 8), ((1, 4, 6, 1), 4), ((1, 4, 2, 2), 16)]


@pytest.mark.skipif(not ops.extension_available(), reason="needs the C++ extension (not built)")
@pytest.mark.parametrize("xs, cout", SMALL_CONV_CASES)
@pytest.mark.parametrize("isa", ["native", "avx2", "baseline"])
def test_small_conv_matches_the_float64_convolution(xs, cout, isa):
    """Forward, input, weight and bias gradients of the few-channel 3x3 op against float64
    F.conv2d, on every instruction-set variant (a fresh process per cap), edges and 1-pixel
    images included; bias and no bias."""
    script = textwrap.dedent(f"""
        import torch, torch.nn.functional as F
        from fcn_caffe_repro import ops
        g = torch.Generator().manual_seed(0)
        xs, cout = {xs!r}, {cout!r}
        for has_bias in (True, False):
            x = torch.randn(xs, generator=g).contiguous(memory_format=torch.channels_last)
            w = torch.randn(cout, xs[1], 3, 3, generator=g)
            b = torch.randn(cout, generator=g) if has_bias else None
            leaves = [t.clone().requires_grad_() for t in (x, w) + ((b,) if has_bias else ())]
            got = ops.small_conv(leaves[0], leaves[1], leaves[2] if has_bias else None)
            assert got.is_contiguous(memory_format=torch.channels_last)
            ref = [t.double().requires_grad_() for t in (x, w) + ((b,) if has_bias else ())]
            want = F.conv2d(ref[0], ref[1], ref[2] if has_bias else None, 1, 1)
            dy = torch.randn(want.shape, generator=g)
            grads = torch.autograd.grad(got, leaves, dy)
            wants = torch.autograd.grad(want, ref, dy.double())
            def rel(a, e):
                return float((a.double() - e).abs().max() / e.abs().max())
            assert rel(got.detach(), want.detach()) < 1e-6, rel(got.detach(), want.detach())
            for a, e in zip(grads, wants):
                assert a.shape == e.shape and rel(a, e) < 1e-6, (a.shape, rel(a, e))
        print("ok")
    """)
    env = dict(os.environ)
    if isa != "native":
        env["FCN_CPU_ISA"] = isa
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


@pytest.mark.skipif(not ops.extension_available(), reason="needs the C++ extension (not built)")
def test_small_conv_sums_the_same_bits_on_any_thread_count():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 37, 29, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 8, 3, 3, generator=g)
    dy = torch.randn(2, 16, 37, 29, generator=g)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(torch.ops.fcn_caffe_repro.small_conv_backward(dy, x, w, [True, True, True]))
    finally:
        torch.set_num_threads(threads)
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, results[0]))


@pytest.mark.parametrize("cin, cout, kernel, stride, pad, dtype", [
    (4, 4, 3, 1, 1, torch.float32), (3, 4, 3, 1, 1, torch.float32), (4, 6, 3, 1, 1, torch.float32),
    (4, 4, 3, 2, 1, torch.float32), (4, 4, 3, 1, 0, torch.float32), (4, 4, 1, 1, 0, torch.float32),
    (4, 4, 3, 1, 1, torch.float64), (32, 32, 3, 1, 1, torch.float32)])
def test_small_conv_applies_only_where_it_computes_the_layer(cin, cout, kernel, stride, pad, dtype):
    x = torch.zeros(1, cin, 8, 8, dtype=dtype)
    w = torch.zeros(cout, cin, kernel, kernel, dtype=dtype)
    want = (cin, cout, kernel, stride, pad, dtype) == (4, 4, 3, 1, 1, torch.float32) and ops.extension_available()
    assert ops.small_conv_applies(x, w, (stride, stride), (pad, pad), (1, 1), 1) == want


@pytest.mark.skipif(not ops.extension_available(), reason="needs the C++ extension (not built)")
def test_training_convolution_of_few_channels_takes_the_small_conv_op():
    net = conv_net(8, 16, size=10)
    y = net(data=torch.randn(1, 8, 10, 10))["conv"]
    assert "SmallConv" in type(y.grad_fn).__name__


@pytest.mark.parametrize("channels, num_output", [(16, 8), (4, 40)])  # the channels_last and GEMM training paths
def test_inference_forward_is_the_plain_one(channels, num_output):
    """Without a gradient the layer runs F.conv2d on the tensors as given: the inference outputs
    are bit for bit what they were."""
    net = conv_net(channels, num_output, size=6)
    x = torch.randn(1, channels, 6, 6)
    with torch.no_grad():
        got = net(data=x)["conv"]
        assert got.is_contiguous() and torch.equal(got, F.conv2d(x, net.conv.weight, net.conv.bias, 1, 1))


def test_max_pooling_saves_no_indices_and_gives_the_same_gradient():
    n = NetBuilder()
    n.data = S.Input(input_param=dict(shape=dict(dim=[2, 3, 11, 13])))
    n.pool = max_pool(n.data, ks=3, stride=2)  # Caffe's ceil rounding: a last window partly outside
    layer = CaffeNet(n.to_spec("p"), phase="train").pool
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 11, 13, generator=g, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
        (y,) = layer(x)
    assert saved and torch.int64 not in saved  # the input only, no int64 indices
    dy = torch.randn(y.shape, generator=g)
    (got,) = torch.autograd.grad(y, x, dy)
    x2 = x.detach().requires_grad_()
    (want,) = torch.autograd.grad(layer.pool(x2), x2, dy)  # the plain path: indices saved
    assert torch.equal(y, layer.pool(x.detach())) and torch.equal(got, want)
    assert got.abs().sum() > 0


def _pool_layer(shape, ks, stride, pad=0):
    n = NetBuilder()
    n.data = S.Input(input_param=dict(shape=dict(dim=list(shape))))
    n.pool = S.Pooling(n.data, pool=0, kernel_size=ks, stride=stride, pad=pad)  # pool 0: MAX
    return CaffeNet(n.to_spec("p"), phase="train").pool


POOL_CASES = [((2, 3, 11, 13), 3, 2), ((1, 4, 16, 16), 2, 2), ((1, 5, 9, 7), 2, 2), ((2, 2, 8, 9), 3, 1),
              ((1, 3, 10, 10), 3, 3), ((1, 1, 5, 6), 5, 2), ((1, 8, 7, 7), 4, 3)]


@pytest.mark.skipif(not ops.extension_available(), reason="needs the C++ extension (not built)")
@pytest.mark.parametrize("shape, ks, stride", POOL_CASES)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("values", ["distinct", "ties", "nan"])
def test_training_max_pooling_keeps_a_byte_per_output_and_gives_the_plain_paths_results(
        shape, ks, stride, layout, dtype, values):
    """The training path's MAX pooling (a winner's window position kept as one byte) against the
    plain forward and max_pool2d's backward: the same top and gradient bit for bit, with ties (a
    ReLU's zeros: the first maximum wins) and NaN (a NaN wins), in either memory layout."""
    layer = _pool_layer(shape, ks, stride)
    g = torch.Generator().manual_seed(POOL_CASES.index((shape, ks, stride)))
    x = torch.randn(shape, generator=g, dtype=dtype)
    if values == "ties":
        x = torch.randint(-1, 3, shape, generator=g).to(dtype).clamp_min(0)
    elif values == "nan":
        x.view(-1)[torch.randperm(x.numel(), generator=g)[:3]] = float("nan")
    x = x.contiguous(memory_format=layout).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((t.dtype, t.numel())) or t, lambda t: t):
        (y,) = layer(x)
    assert saved == [(torch.uint8, y.numel())]  # one byte per pooled element, not the input or int64 indices
    dy = torch.randn(y.shape, generator=g, dtype=dtype)
    (got,) = torch.autograd.grad(y, x, dy)
    x2 = x.detach().clone().requires_grad_()
    plain = layer.pool(x2)  # max_pool2d, its indices saved
    (want,) = torch.autograd.grad(plain, x2, dy)
    assert y.shape == plain.shape and torch.equal(y.isnan(), plain.isnan())
    assert torch.equal(y.nan_to_num(), plain.nan_to_num()) and torch.equal(got, want)


@pytest.mark.parametrize("shape, ks, stride, pad", [((1, 2, 9, 10), 3, 2, 1), ((1, 2, 9, 10), 1, 3, 0),
                                                   ((1, 2, 2, 5), 3, 2, 0)])
def test_training_max_pooling_outside_the_byte_path_recomputes(shape, ks, stride, pad):
    """Padding, a stride past the kernel (Caffe then keeps a window that starts outside the input),
    or an input smaller than the window (Caffe's one clipped window) take the recomputing path: the
    plain forward's top and gradient."""
    layer = _pool_layer(shape, ks, stride, pad)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=g, requires_grad=True)
    assert not ops.max_pool_applies(x, (ks, ks), (stride, stride), (pad, pad))
    (y,) = layer(x)
    dy = torch.randn(y.shape, generator=g)
    (got,) = torch.autograd.grad(y, x, dy)
    x2 = x.detach().requires_grad_()
    (want,) = torch.autograd.grad(layer.pool(x2), x2, dy)
    assert torch.equal(got, want)


STEPS = textwrap.dedent("""
    import contextlib, json, resource, sys, torch
    from fcn_caffe_repro.caffe.spec import L, NetBuilder
    from fcn_caffe_repro.net import CaffeNet
    from fcn_caffe_repro.solver import SGDSolver

    class Default(SGDSolver):
        @staticmethod
        def _memory_policy(net):
            return contextlib.nullcontext

    n = NetBuilder()
    n.data, n.label = L.Input(ntop=2, input_param=dict(shape=[dict(dim=[1, 3, 400, 400]), dict(dim=[1, 1, 400, 400])]))
    n.conv = L.Convolution(n.data, num_output=64, kernel_size=3, pad=1)  # 41 MB blobs, above glibc's mmap threshold
    n.relu = L.ReLU(n.conv, in_place=True)
    n.score = L.Convolution(n.relu, num_output=2, kernel_size=1)
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    torch.manual_seed(0)
    net = CaffeNet(n.to_spec("h"), phase="train")
    cls = SGDSolver if sys.argv[1] == "kept" else Default
    solver = cls(net, base_lr=1e-6, lr_policy="fixed", momentum=0.9)
    data, label = torch.randn(1, 3, 400, 400), torch.randint(0, 2, (1, 1, 400, 400)).float()
    faults = []
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        solver.step(data=data, label=label)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps(faults))
""")


def _step_faults(mode):
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(CAFFE_REF.parents[2])})
    return json.loads(out.stdout.split("\n")[-2])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the heap policy is glibc's")
def test_training_iterations_reuse_their_memory():
    """In fresh processes, eight solver steps: once the heap has reached its high-water mark (the
    first steps may still grow it by a blob, depending on where blocks land), a step faults in
    almost no new pages, where glibc's default heap (mmap for large blocks, unmapped on free)
    faults the 41 MB blobs in every step. Medians over the last five steps, so that one late
    growth of the heap does not decide the outcome."""
    default = statistics.median(_step_faults("default")[3:])
    if default < 5000:
        pytest.skip(f"this kernel faulted only {default} pages per step without the policy (huge pages?)")
    kept = _step_faults("kept")
    assert statistics.median(kept[3:]) < default / 10, (kept, default)


def test_solver_keeps_freed_memory():
    from fcn_caffe_repro.solver import SGDSolver
    SGDSolver(conv_net(3, 4), base_lr=0.1, lr_policy="fixed")
    assert heap.keeps_freed_memory() == (platform.libc_ver()[0] == "glibc")


def test_the_training_path_is_for_recorded_cpu_forwards():
    x = torch.empty(1, requires_grad=True)
    assert train_ops.wants_grad(x)
    assert not train_ops.wants_grad(torch.empty(1, device="meta", requires_grad=True))  # another device
    assert not train_ops.wants_grad(torch.empty(1), torch.empty(1))  # nothing requires a gradient
    with torch.no_grad():
        assert not train_ops.wants_grad(x)


@pytest.mark.skipif(not ops.extension_available(), reason="needs the C++ extension (not built)")
@pytest.mark.parametrize("where", ["weight", "gradient"])
def test_few_channel_convolution_gives_caffes_nan_for_infinities_at_the_padding(where):
    """Caffe multiplies the zero padding by the weights and by the output gradient: an infinite
    weight makes the edge outputs NaN, an infinite output gradient the weight gradient NaN."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 6, 7, generator=g, dtype=torch.float64)
    w = torch.randn(4, 4, 3, 3, generator=g, dtype=torch.float64)
    if where == "weight":
        w[1, 2, 0, 0] = math.inf
    dy = torch.randn(1, 4, 6, 7, generator=g, dtype=torch.float64)
    if where == "gradient":
        dy[0, 3, 0, 0] = math.inf
    ours = [t.float().requires_grad_() for t in (x, w)]
    ref = [t.clone().requires_grad_() for t in (x, w)]
    got = train_ops.conv2d(ours[0], ours[1], None, (1, 1), (1, 1), (1, 1), 1, (1, 4, 6, 7))
    want = F.conv2d(F.pad(ref[0], (1, 1, 1, 1)), ref[1])  # Caffe: im2col of the zero-padded input
    assert "SmallConv" in type(got.grad_fn).__name__ or where == "weight"
    assert torch.equal(got.isnan(), want.isnan())
    grads = list(zip(torch.autograd.grad(got, ours, dy.float()), torch.autograd.grad(want, ref, dy)))
    for a, e in grads:
        assert torch.equal(a.isnan(), e.isnan()) and torch.equal(a.isinf(), e.isinf())
    assert bool(want.isnan().any() if where == "weight" else grads[1][1].isnan().any())
