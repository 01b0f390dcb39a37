"""The fast mode's Winograd F(2x2, 3x3) path (fast/winograd.py, csrc/cpu/winograd.cpp): the same
convolution as a float64 direct sum within float32 rounding, Caffe's blobs when every 3x3 layer
takes it, the direct convolution wherever a value is not finite, and taken by "auto" only for wide
float32 layers."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fcn_caffe_repro as fcr
from conftest import CAFFE_REF, rel_err
from fcn_caffe_repro import fast
from fcn_caffe_repro.errors import NetError
from fcn_caffe_repro.fast import winograd
from test_fast import BLOB_TOL, NETS, assert_matches_caffe, load

pytestmark = pytest.mark.skipif(not fcr.ops.extension_available(), reason="the C++ extension is not built")


class _Conv:
    """The attributes of a Convolution layer the backend reads."""

    def __init__(self, weight):
        self.weight, self.layer_name = weight, "conv"
        self.kernel, self.stride, self.dilation, self.group = (3, 3), (1, 1), (1, 1), 1
        self.channels = weight.shape[1]


def _reference(x, w, b, pad, slope):
    y = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=pad)
    if slope is not None:
        y = torch.where(y > 0, y, y * slope)
    # the largest sum of |products| that reaches an output: the scale of its rounding error
    scale = F.conv2d(x.double().abs(), w.double().abs(), padding=pad).max() + (0 if b is None else b.abs().max())
    return y, float(scale)


@pytest.mark.parametrize("n, c, k, h, w, pad, slope", [
    (1, 5, 7, 9, 11, (1, 1), 0.0),   # odd output: the last tiles half outside
    (2, 16, 8, 6, 5, (0, 0), None),  # two images, no padding
    (1, 8, 12, 7, 8, (2, 1), 0.1),   # leaky ReLU, pads that differ per side
    (1, 3, 4, 3, 3, (0, 0), None),   # one output pixel
    (1, 4, 4, 1, 2, (1, 1), 0.0),    # a map smaller than the window
])
def test_same_convolution_as_a_float64_sum(n, c, k, h, w, pad, slope):
    g = torch.Generator().manual_seed(n * 1000 + c * 10 + k)
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(k, c, 3, 3, generator=g), torch.randn(k, generator=g)
    conv = _Conv(weight)
    want, scale = _reference(x, weight, bias, pad, slope)
    got = winograd.conv2d(conv, x, winograd.transform_weight(conv), bias, slope, pad)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert float((got.double() - want).abs().max()) <= 1e-5 * scale
    # a workspace sized for another layer, then for this one: the same values bit for bit
    ws = winograd.Workspace()
    winograd.conv2d(conv, torch.randn(1, c, 2 * h + 3, w + 4, generator=g), winograd.transform_weight(conv), bias,
                    slope, pad, ws)
    assert torch.equal(winograd.conv2d(conv, x.contiguous(), winograd.transform_weight(conv), bias, slope, pad, ws),
                       got)


@pytest.mark.parametrize("bad", ["input", "weight"])
def test_a_value_that_is_not_finite_is_reported(bad):
    g = torch.Generator().manual_seed(7)
    x, weight = torch.randn(1, 4, 6, 6, generator=g), torch.randn(4, 4, 3, 3, generator=g)
    if bad == "input":
        x[0, 1, 2, 3] = float("inf")
    else:
        weight[2, 1, 0, 0] = float("nan")
    conv = _Conv(weight)
    assert winograd.conv2d(conv, x, winograd.transform_weight(conv), None, 0.0, (1, 1)) is None


@pytest.fixture
def every_3x3_layer(monkeypatch):
    """auto takes Winograd for every 3x3 stride-1 layer, whatever its width."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)


@pytest.mark.parametrize("name", NETS)
def test_caffe_nets_match_caffe_with_every_3x3_layer_on_winograd(name, every_3x3_layer):
    net, ref, inputs = load(name)
    net.optimize()
    with torch.no_grad():
        blobs = net(return_blobs=True, **inputs)
    assert_matches_caffe(net, ref, blobs)
    ran = {path for c in fast.calls(net).values() for path in c}
    threes = [m for _, m in net.layer_modules() if type(m).__name__ == "Convolution" and winograd.applies(m)]
    assert ("winograd" in ran) == bool(threes), ran


def test_inf_in_the_image_gives_the_plain_paths_values(every_3x3_layer):
    """An inf pixel: each 3x3 layer's top has NaN and inf where the plain path's has them (its
    direct sums), the other values within float32 rounding. (From fc6 on, oneDNN's ReLU post-op
    maps NaN to 0, as in the fast mode without Winograd.)"""
    plain = fcr.build_net("voc-fcn32s", phase="deploy", width_divisor=16, num_classes=6)
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in plain.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
    net = fcr.build_net("voc-fcn32s", phase="deploy", width_divisor=16, num_classes=6)
    net.load_state_dict(plain.state_dict())
    net.optimize()
    x = torch.randn(1, 3, 40, 40, generator=g) * 50
    x[0, 0, 20, 20] = float("inf")
    with torch.no_grad():
        want, got = plain(data=x, return_blobs=True), net(data=x, return_blobs=True)
    threes = [n for n, p in fast.describe(net) if p.endswith("/winograd")]
    assert len(threes) == 13
    for step in threes:
        top = step.split("+")[0]
        w, o = want[top], got[top]
        assert torch.equal(w.isnan(), o.isnan()) and torch.equal(w.isinf(), o.isinf()), top
        assert w.isnan().any() or w.isinf().any(), top
        finite = w.isfinite()
        assert rel_err(o[finite].numpy(), w[finite].numpy()) <= BLOB_TOL, top


def test_auto_takes_winograd_for_wide_float32_layers_only():
    """At a quarter of VGG's width conv4_2 has 128 inputs and conv5 too: none is wide enough; at
    half its width conv4_2 to conv5_3 have 256 and take it, conv1 to conv4_1 not; the bfloat16
    plan and NCHW activations take oneDNN everywhere."""
    net = fcr.build_net("voc-fcn32s", phase="deploy", width_divisor=2)
    paths = dict(fast.describe(net.optimize()))
    wide = {n for n, p in paths.items() if p.endswith("/winograd")}
    assert wide == {"conv4_2+relu4_2", "conv4_3+relu4_3", "conv5_1+relu5_1", "conv5_2+relu5_2", "conv5_3+relu5_3"}
    for kw in (dict(dtype=torch.bfloat16), dict(memory_format="contiguous")):
        if kw.get("dtype") == torch.bfloat16 and not fast.precision.native_bf16():
            continue
        paths = dict(fast.describe(net.optimize(**kw)))
        assert not any(p.endswith("/winograd") for p in paths.values()), kw
    quarter = fcr.build_net("voc-fcn32s", phase="deploy", width_divisor=4)
    assert not any(p.endswith("/winograd") for p in dict(fast.describe(quarter.optimize())).values())


def test_released_workspace_is_made_again():
    net = fcr.build_net("voc-fcn32s", phase="deploy", width_divisor=2).optimize()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 50
    with torch.no_grad():
        first = net(data=x)["score"]
        fast.release_buffers(net)
        assert np.array_equal(net(data=x)["score"].numpy(), first.numpy())


def test_the_benchmark_measures_every_3x3_layer_of_fcn8s():
    from fcn_caffe_repro.bench import winograd as bench

    rows = bench.measure(size=48, rounds=1, width_divisor=16)
    assert [r["layer"] for r in rows] == [f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
                                          for i in range(1, n + 1)]
    assert all(r["onednn_s"] > 0 and r["winograd_s"] > 0 for r in rows)
    assert all(r["winograd_err"] <= 1e-5 and r["onednn_err"] <= 1e-5 for r in rows)
    assert {r["auto"] for r in rows} == {"mkldnn"}  # 32 channels at most at width / 16
    assert "| conv5_3 | 32 → 32 |" in bench.markdown(rows)


def test_a_workspace_made_under_inference_mode_is_not_written_outside_it():
    net = fcr.build_net("voc-fcn32s", phase="deploy", width_divisor=2).optimize()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 50
    with torch.inference_mode():
        first = net(data=x)["score"].clone()
    with torch.no_grad():
        assert torch.equal(net(data=x)["score"], first)


def test_a_dtype_the_winograd_path_cannot_run_is_one_clear_error(every_3x3_layer):
    prototxt = CAFFE_REF / "nets" / "voc-fcn32s" / "net.prototxt"
    with pytest.raises(NetError, match="float32") as e:
        fcr.CaffeNet.from_prototxt(prototxt).double().optimize()
    assert e.value.layer == "conv1_1"
    net, _, inputs = load("voc-fcn32s")
    net.optimize()
    assert dict(fast.describe(net))["conv1_1+relu1_1"] == "conv+relu/winograd"
    net.double()  # after optimize: the next forward must refuse, not run a stale float32 copy
    with torch.no_grad(), pytest.raises(NetError, match="Winograd path of this step runs float32") as e:
        net(**{k: v.double() for k, v in inputs.items()})
    assert e.value.layer == "conv1_1"
