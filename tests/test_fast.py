"""The fast inference mode (fast/): Caffe parity, the fast path actually taken, weights changed
after optimize(), training through it, and clear errors for paths that cannot be had."""
import importlib
import os
import re
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import CAFFE_REF, needs_cuda, rel_err
import fcn_caffe_repro as fcr
from fcn_caffe_repro import border, fast, ops, torch_private
from fcn_caffe_repro.errors import NetError

NETS = sorted(p.name for p in (CAFFE_REF / "nets").iterdir() if p.is_dir())
GROUPED = {"voc-fcn-alexnet"}  # grouped convolutions: no "gemm" path
LOSS_TOL, BLOB_TOL = 1e-4, 1e-5


def load(name):
    folder = CAFFE_REF / "nets" / name
    net = fcr.CaffeNet.from_prototxt(folder / "net.prototxt", weights=folder / "weights.caffemodel")
    ref = np.load(folder / "blobs.npz")
    return net, ref, {k: torch.from_numpy(ref[k]) for k in net.inputs}


def assert_matches_caffe(net, ref, blobs):
    for k in ref.files:
        if k in blobs:
            tol = LOSS_TOL if k in net.loss_weights else BLOB_TOL
            assert rel_err(blobs[k].numpy(), ref[k]) <= tol, k
    assert all(out in blobs for out in net.outputs)


@pytest.mark.parametrize("name, conv", [(n, c) for n in NETS for c in ("auto", "gemm", "torch")
                                         if not (c == "gemm" and n in GROUPED)])  # gemm + groups: raises, tested below
def test_fast_mode_matches_caffe(name, conv):
    net, ref, inputs = load(name)
    net.optimize(conv=conv)
    with torch.no_grad():
        blobs = net(return_blobs=True, **inputs)
    assert_matches_caffe(net, ref, blobs)
    ran = {path for c in fast.calls(net).values() for path in c}
    lrn = {"nhwc-sum"} if name == "voc-fcn-alexnet" else set()
    assert ran == {"mkldnn" if conv == "auto" else conv} | lrn, ran  # caffe-ref widths: no fc-like layer


def test_every_convolution_and_relu_is_one_fast_step():
    net, _, _ = load("voc-fcn8s")
    net.optimize()
    paths = dict(fast.describe(net))
    convs = [n for n, m in net.layer_modules() if type(m).__name__ == "Convolution"]
    relus = [n for n, m in net.layer_modules() if type(m).__name__ == "ReLU"]
    assert len(relus) == 15 and all(any(s.startswith(f"{c}+") or s == c for s in paths) for c in convs)
    assert not any(n in paths for n in relus), "every ReLU is fused into its convolution"
    assert paths["conv1_1+relu1_1"] == "conv+relu/mkldnn" and paths["score_fr"] == "conv/mkldnn"
    assert paths["upscore2+fuse_pool4"] == "deconv_crop_sum/ext/depthwise"
    assert paths["upscore_pool4+fuse_pool3"] == "deconv_crop_sum/ext/dense"  # the fixture's dense kernel
    assert paths["upscore8+score"] == "deconv_crop/ext/depthwise"


def test_fc_like_layers_take_the_gemm_path():
    """At a quarter of the width fc6 reduces over 7x7x128 = 6272 inputs: fc-like, so GEMM."""
    net = fcr.build_net("voc-fcn32s", phase="deploy", width_divisor=4)
    net.optimize()
    paths = dict(fast.describe(net))
    assert paths["fc6+relu6"] == "conv+relu/gemm"
    assert paths["fc7+relu7"] == paths["conv5_3+relu5_3"] == "conv+relu/mkldnn"
    plain = fcr.build_net("voc-fcn32s", phase="deploy", width_divisor=4)
    with torch.no_grad():
        for p in plain.parameters():
            p.normal_(0, (2.0 / p[0].numel()) ** 0.5 if p.dim() == 4 else 0.1)
        net.load_state_dict(plain.state_dict())
        x = torch.randn(1, 3, 64, 64) * 50
        want, got = plain(data=x)["score"], net(data=x)["score"]
    assert fast.calls(net)["fc6+relu6"] == {"gemm": 1}
    assert rel_err(got.numpy(), want.numpy()) <= BLOB_TOL


def test_fast_mode_takes_the_fast_ops(monkeypatch):
    """No plain convolution runs; oneDNN's fused conv gets the prepacked (mkldnn-layout) weights in
    channels_last, and the skip paths go through the fused op."""
    net, ref, inputs = load("voc-fcn16s")
    net.optimize()
    seen, fused = [], []
    real_conv, real_fused = torch.ops.mkldnn._convolution_pointwise, torch.ops.fcn_caffe_repro.deconv_crop_sum

    def spy_conv(x, w, *args):
        seen.append((x.is_contiguous(memory_format=torch.channels_last), w.is_mkldnn, args[-3]))
        return real_conv(x, w, *args)

    def no_plain(*a, **k):
        raise AssertionError("a plain F.conv2d ran in the fast mode")

    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", spy_conv, raising=False)
    monkeypatch.setattr(ops.torch.ops.fcn_caffe_repro, "deconv_crop_sum",
                        lambda *a: fused.append(a) or real_fused(*a), raising=False)
    monkeypatch.setattr(F, "conv2d", no_plain)
    with torch.no_grad():
        blobs = net(return_blobs=True, **inputs)
    assert len(seen) == 17 and all(cl and packed for cl, packed, _ in seen)
    assert sum(attr == "relu" for _, _, attr in seen) == 15  # every ReLU in oneDNN's epilogue
    assert len(fused) == 2
    assert_matches_caffe(net, ref, blobs)


def test_blobs_are_freed_after_their_last_reader():
    net, _, inputs = load("voc-fcn8s")
    net.optimize()
    steps = {s.name: s for s in border.inner_steps(net.plan)}
    refs, alive_at_end = {}, {}

    def keep(name):
        return lambda module, args, out: refs.__setitem__(name, weakref.ref(out[0]))

    for name in ("conv1_1+relu1_1", "conv1_2+relu1_2", "fc7+relu7"):
        steps[name].module.register_forward_hook(keep(name))
    steps["upscore8+score"].module.register_forward_pre_hook(
        lambda module, args: alive_at_end.update({k: r() is not None for k, r in refs.items()}))
    with torch.no_grad():
        net(**inputs)
    assert alive_at_end == {"conv1_1+relu1_1": False, "conv1_2+relu1_2": False, "fc7+relu7": False}


def test_reused_buffers_never_overwrite_what_a_caller_holds(monkeypatch):
    monkeypatch.setattr(fast.BufferPool, "MIN_BYTES", 0)  # caffe-ref activations are small: pool them all
    net, ref, inputs = load("voc-fcn8s")
    net.optimize()
    other = dict(inputs, data=inputs["data"] * -0.5)
    with torch.no_grad():
        first = net(return_blobs=True, **inputs)
        kept = {k: v.clone() for k, v in first.items()}
        for _ in range(2):
            second = net(return_blobs=True, **other)
            net(**other)
        assert all(torch.equal(first[k], kept[k]) for k in kept), "a held blob was overwritten"
        assert not torch.equal(second["fc7"], first["fc7"])
        reused = fast.buffer_stats(net)["reused"]
        del first, second
        again = [net(return_blobs=True, **inputs) for _ in range(2)]
    stats = fast.buffer_stats(net)
    assert stats["reused"] > reused and len(stats["buffers"]) == 2
    assert all(torch.equal(again[0][k], again[1][k]) and torch.equal(again[0][k], kept[k]) for k in kept)
    assert_matches_caffe(net, ref, again[1])
    fast.release_buffers(net)
    assert fast.buffer_stats(net)["buffers"] == []


def test_weights_changed_after_optimize_are_used():
    net, ref, inputs = load("voc-fcn32s")
    net.optimize()
    step = next(s.module for s in border.inner_steps(net.plan) if s.name == "conv1_1+relu1_1")
    assert step.repacks == 1
    other = {name: [b.detach().numpy() * 1.5 for b in blobs] for name, blobs in net.params_by_layer().items()}
    net.load_caffemodel(other)
    plain = fcr.CaffeNet.from_prototxt(CAFFE_REF / "nets" / "voc-fcn32s" / "net.prototxt")
    plain.load_caffemodel(other)
    with torch.no_grad():
        got, want = net(return_blobs=True, **inputs), plain(return_blobs=True, **inputs)
    assert step.repacks == 2
    for k in ("conv1_1", "fc7", "score"):
        assert rel_err(got[k].numpy(), want[k].numpy()) <= BLOB_TOL, k
    # writes through .data bypass PyTorch's version counter: repack() is the documented remedy
    with torch.no_grad():
        net.conv1_1.weight.data.mul_(-1)
        plain.conv1_1.weight.mul_(-1)
        fast.repack(net)
        assert rel_err(net(**inputs)["loss"].numpy(), plain(**inputs)["loss"].numpy()) <= LOSS_TOL


@pytest.mark.parametrize("name", ["voc-fcn16s", "voc-fcn-alexnet"])
def test_training_runs_the_autograd_path_with_plain_gradients(name):
    net, _, inputs = load(name)
    plain = fcr.CaffeNet.from_prototxt(CAFFE_REF / "nets" / name / "net.prototxt")
    plain.load_state_dict(net.state_dict())
    net.optimize()
    for n in (net, plain):
        n.objective(n(**inputs)).backward()
    lrn = {"nhwc-sum"} if name == "voc-fcn-alexnet" else set()  # plain torch ops: autograd runs through
    assert {p for c in fast.calls(net).values() for p in c} == {"autograd"} | lrn
    for (k, a), (_, b) in zip(net.named_parameters(), plain.named_parameters()):
        assert (a.grad is None) == (b.grad is None), k
        if a.grad is not None:
            assert rel_err(a.grad.numpy(), b.grad.numpy()) <= 1e-5, k


def test_inference_only_mode_refuses_autograd():
    net, _, inputs = load("voc-fcn32s")
    net.optimize(train="error")
    with pytest.raises(NetError, match="inference-only.*torch.no_grad"):
        net(**inputs)
    with torch.no_grad():
        net(**inputs)


@pytest.mark.parametrize("kw, match", [
    (dict(conv="cudnn"), "conv must be one of"),
    (dict(skip="fast"), "skip must be one of"),
    (dict(memory_format="nhwc"), "memory_format must be one of"),
    (dict(train="maybe"), "train must be one of"),
])
def test_unknown_choices_raise(kw, match):
    net, _, _ = load("voc-fcn32s")
    with pytest.raises(NetError, match=match):
        net.optimize(**kw)


def test_unavailable_paths_raise(monkeypatch):
    net, _, inputs = load("voc-fcn-alexnet")
    with pytest.raises(NetError, match="conv='gemm' needs group 1") as e:
        net.optimize(conv="gemm")
    assert e.value.layer == "conv2"
    monkeypatch.setattr(fast.onednn, "available", lambda: False)
    with pytest.raises(NetError, match="oneDNN .* not available"):
        net.optimize()
    net.optimize(conv="torch")  # asks for nothing oneDNN gives
    monkeypatch.setattr(ops, "extension_available", lambda: False)
    with pytest.raises(NetError, match="extension .* not built"):
        net.optimize(conv="torch")
    net.optimize(conv="torch", skip="torch")
    with torch.no_grad():
        net(**inputs)


def test_dtype_the_prepacked_path_cannot_run_raises():
    net, _, inputs = load("voc-fcn32s")
    with pytest.raises(NetError, match="float32"):
        fcr.CaffeNet.from_prototxt(CAFFE_REF / "nets" / "voc-fcn32s" / "net.prototxt").double().optimize()
    net.optimize()
    net.double()  # after optimize: the next forward must refuse, not run a stale float32 copy
    with torch.no_grad(), pytest.raises(NetError, match="float32") as e:
        net(**{k: v.double() for k, v in inputs.items()})
    assert e.value.layer == "conv1_1"


def test_enabled_false_restores_every_blob():
    net, ref, inputs = load("voc-fcn8s")
    net.optimize().optimize(enabled=False)
    assert fast.calls(net) == {}
    with torch.no_grad():
        assert set(ref.files) <= set(net(return_blobs=True, **inputs))


@pytest.fixture
def torch_without_reorder(monkeypatch):
    """torch_private reloaded on a torch that lacks the oneDNN weight reorder; reloaded back after."""
    monkeypatch.delattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
    importlib.reload(torch_private)
    yield
    monkeypatch.undo()
    importlib.reload(torch_private)
    assert not torch_private.MISSING


def test_missing_private_api_is_one_clear_error(torch_without_reorder):
    net, ref, inputs = load("voc-fcn8s")
    assert torch_private.MISSING == {torch_private.REORDER_WEIGHT}
    with pytest.raises(NetError, match=re.escape(f"optimize(conv='auto') needs private PyTorch APIs that torch "
                                                  f"{torch.__version__} does not have: "
                                                  f"torch._C._nn.mkldnn_reorder_conv2d_weight; pass conv='torch'")):
        net.optimize()
    with torch.no_grad():
        assert_matches_caffe(net, ref, net(return_blobs=True, **inputs))  # the plain path runs
        net.fuse()
        assert_matches_caffe(net, ref, net(return_blobs=True, **inputs))
        net.optimize(conv="torch")  # asks for nothing private
        assert_matches_caffe(net, ref, net(return_blobs=True, **inputs))


# --- the bfloat16 plan (fast/precision.py) ----------------------------------------------------------
BF16_SCORE_TOL = 2 ** -5  # of the largest score: 4 x bfloat16's epsilon 2^-7 (measured: up to 1.6 x)
BF16_AGREEMENT = 0.98  # the fixtures' random weights leave up to a quarter of the pixels within that band
SCORES = {"siftflow-fcn8s": ("score_sem", "score_geo")}


def bf16_against_float32(name, **kw):
    """(float32 blobs, bfloat16 blobs, the bfloat16 net) of a caffe-ref net in the fast mode."""
    net, _, inputs = load(name)
    with torch.no_grad():
        want = net.optimize()(return_blobs=True, **inputs)
        got = net.optimize(dtype=torch.bfloat16, **kw)(return_blobs=True, **inputs)
    return want, got, net


def assert_bf16_scores_close(want, got, name):
    for k in SCORES.get(name, ("score",)):
        w, g = want[k], got[k]
        assert g.dtype == torch.float32, "the scores come back float32"
        assert rel_err(g.numpy(), w.numpy()) <= BF16_SCORE_TOL, k
        # argmax flips only where float32's top-2 margin is within the error band; outside it, never
        top2 = w.topk(2, 1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * BF16_SCORE_TOL * w.abs().max()
        same = w.argmax(1) == g.argmax(1)
        assert same[clear].all() and same.float().mean() >= BF16_AGREEMENT, (k, same.float().mean().item())


@pytest.mark.parametrize("name", NETS)
def test_bfloat16_mode_scores_within_bfloat16_error_of_float32(name):
    want, got, net = bf16_against_float32(name)
    assert_bf16_scores_close(want, got, name)
    dtypes = {n: d for n, _, d in fast.describe(net, dtypes=True)}
    trunk = [s.top[0] for s in border.inner_steps(net.plan)
             if isinstance(s.module, fast.FastConv) and dtypes[s.name] == "bfloat16"]
    assert len(trunk) >= 7 and all(got[t].dtype == torch.bfloat16 for t in trunk)
    # the steps writing the scores (read by the loss only) compute in float32: the scores are not rounded
    writer = {t: s.name for s in border.inner_steps(net.plan) for t in s.top}
    assert all(dtypes[writer[k]] == "float32" for k in SCORES.get(name, ("score",)))


def test_bfloat16_plan_keeps_the_float32_parameters_and_converts_each_weight_once():
    net, _, inputs = load("voc-fcn8s")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.optimize(dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    steps = {s.name: s.module for s in border.inner_steps(net.plan)}
    assert steps["conv1_1+relu1_1"].repacks == 1
    with torch.no_grad():
        for _ in range(2):
            net(**inputs)
    assert steps["conv1_1+relu1_1"].repacks == 1, "converted at optimize(), not per forward"
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert dict(fast.describe(net))["upscore2+fuse_pool4"] == "deconv_crop_sum/ext/depthwise"


def test_bfloat16_weights_changed_after_optimize_are_used():
    net, _, inputs = load("voc-fcn16s")
    net.optimize(dtype=torch.bfloat16)
    other = {name: [b.detach().numpy() * -1.5 for b in blobs] for name, blobs in net.params_by_layer().items()}
    net.load_caffemodel(other)
    plain = fcr.CaffeNet.from_prototxt(CAFFE_REF / "nets" / "voc-fcn16s" / "net.prototxt")
    plain.load_caffemodel(other)
    with torch.no_grad():
        got, want = net(return_blobs=True, **inputs), plain(return_blobs=True, **inputs)
    assert rel_err(got["score"].numpy(), want["score"].numpy()) <= BF16_SCORE_TOL


def test_bfloat16_without_native_support_takes_the_torch_convolution(monkeypatch):
    monkeypatch.setattr(fast.precision, "native_bf16", lambda: False)
    net, _, _ = load("voc-fcn8s")
    with pytest.raises(NetError, match="no bfloat16 convolution on this CPU.*conv='auto'"):
        net.optimize(conv="mkldnn", dtype=torch.bfloat16)
    want, got, net = bf16_against_float32("voc-fcn8s")
    assert {p for c in fast.calls(net).values() for p in c} == {"torch"}
    assert_bf16_scores_close(want, got, "voc-fcn8s")


def test_bfloat16_on_a_cpu_capped_below_native_bfloat16_still_runs():
    """ONEDNN_MAX_CPU_ISA=AVX2: oneDNN as on a CPU without bfloat16 instructions (torch asks it too)."""
    code = ("import sys, torch; sys.path.insert(0, 'tests'); import test_fast as t; "
            "want, got, net = t.bf16_against_float32('voc-fcn8s'); t.assert_bf16_scores_close(want, got, 'voc-fcn8s'); "
            "print(sorted({p for c in t.fast.calls(net).values() for p in c}))")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "['torch']"


def test_bfloat16_mode_is_inference_only_and_other_dtypes_are_refused():
    net, _, inputs = load("voc-fcn32s")
    with pytest.raises(NetError, match=re.escape("dtype must be one of (torch.float32, torch.bfloat16), got torch.float16")):
        net.optimize(dtype=torch.float16)
    net.optimize(dtype=torch.bfloat16)
    with pytest.raises(NetError, match="bfloat16 fast mode .* inference-only"):
        net(**inputs)
    with torch.no_grad():
        assert torch.isfinite(net(**inputs)["loss"])


def test_buffers_made_under_inference_mode_are_not_written_outside_it(monkeypatch):
    monkeypatch.setattr(fast.BufferPool, "MIN_BYTES", 0)
    net, ref, inputs = load("voc-fcn8s")
    net.optimize()
    with torch.inference_mode():
        net(**inputs)
    with torch.no_grad():
        assert_matches_caffe(net, ref, net(return_blobs=True, **inputs))
    assert len(fast.buffer_stats(net)["buffers"]) == 2


@pytest.mark.parametrize("name, kw", [("voc-fcn8s-atonce", dict(conv="gemm")), ("voc-fcn8s-atonce", dict(conv="torch")),
                                      ("voc-fcn8s-atonce", dict(skip=None)), ("voc-fcn-alexnet", dict(skip="torch")),
                                      ("voc-fcn8s", dict(memory_format="contiguous", buffers=0))])
def test_bfloat16_on_every_path(name, kw):
    """Every convolution impl, the unfused and reference upsampling (plain layers: float32 on widened
    inputs), the Scale layers of FCN-8s at once and AlexNet's LRN, in the bfloat16 plan."""
    want, got, net = bf16_against_float32(name, **kw)
    assert_bf16_scores_close(want, got, name)
    ran = {p for c in fast.calls(net).values() for p in c}
    assert ran - {"nhwc-sum"} == {kw.get("conv", "mkldnn")}


def test_for_inference_prepares_each_mode_by_name():
    net, ref, inputs = load("voc-fcn8s")
    dtypes = lambda: {d for _, _, d in fast.describe(net, dtypes=True)}  # noqa: E731
    fast.for_inference(net, "bf16")
    assert "bfloat16" in dtypes()
    fast.for_inference(net, "fast")
    assert dtypes() == {"as given"} and any(p.startswith("conv+relu/") for _, p in fast.describe(net))
    with torch.no_grad():
        assert_matches_caffe(net, ref, net(return_blobs=True, **inputs))
    fast.for_inference(net, "plain")
    assert all(p.startswith("layer/") for _, p in fast.describe(net)) and fast.calls(net) == {}
    with pytest.raises(NetError, match=r"mode must be one of \('fast', 'bf16', 'plain'\), got 'fp16'"):
        fast.for_inference(net, "fp16")


@needs_cuda
def test_for_inference_on_cuda_runs_cudnn_and_refuses_bfloat16():
    net, _, _ = load("voc-fcn8s")
    net.cuda()
    fast.for_inference(net, "fast")
    assert {p.split("/")[1] for _, p in fast.describe(net) if p.startswith("conv")} == {"torch"}  # cuDNN
    with pytest.raises(NetError, match="CPU bfloat16 path"):
        fast.for_inference(net, "bf16")


def test_an_extension_without_the_devices_kernels_gets_the_skips_reference(monkeypatch):
    """A CPU-built extension on a GPU machine has no CUDA kernels: optimize(skip='ext') says so at
    once, and for_inference runs the skips through the fused op's PyTorch reference instead."""
    def no_kernel(*args):
        raise NotImplementedError("Could not run 'fcn_caffe_repro::deconv_crop_sum' with arguments from this backend")

    assert ops.extension_runs_on("cpu")
    monkeypatch.setattr(ops, "_RUNS_ON", {})
    monkeypatch.setattr(ops.torch.ops.fcn_caffe_repro, "deconv_crop_sum", no_kernel)
    net, ref, inputs = load("voc-fcn8s")
    with pytest.raises(NetError, match="no cpu kernels.*FORCE_CUDA=1.*skip='torch'"):
        net.optimize()
    fast.for_inference(net, "fast")
    assert {p for _, p in fast.describe(net) if p.startswith("deconv")} == {"deconv_crop_sum/torch/depthwise",
                                                                           "deconv_crop_sum/torch/dense",
                                                                           "deconv_crop/torch/depthwise"}
    with torch.no_grad():
        assert_matches_caffe(net, ref, net(return_blobs=True, **inputs))
