"""The fusion pass: fused nets equal Caffe's blobs, take the fused op, and track weight changes."""
import numpy as np
import pytest
import torch

from conftest import CAFFE_REF, rel_err
import fcn_caffe_repro as fcr
from fcn_caffe_repro import ops

NETS = sorted(p.name for p in (CAFFE_REF / "nets").iterdir() if p.is_dir())
FUSED = {"voc-fcn32s": 1, "voc-fcn16s": 2, "voc-fcn8s": 3, "voc-fcn8s-atonce": 3, "voc-fcn-alexnet": 1,
         "pascalcontext-fcn8s": 3, "nyud-fcn32s-color-hha": 1, "siftflow-fcn8s": 6}


def load(name):
    folder = CAFFE_REF / "nets" / name
    net = fcr.CaffeNet.from_prototxt(folder / "net.prototxt", weights=folder / "weights.caffemodel")
    ref = np.load(folder / "blobs.npz")
    return net, ref, {k: torch.from_numpy(ref[k]) for k in net.inputs}


@pytest.mark.parametrize("name", NETS)
def test_fused_net_matches_caffe(name, monkeypatch):
    assert ops.extension_available(), "the C++ extension must be built (pip install --no-build-isolation -e .)"
    net, ref, inputs = load(name)
    net.fuse()
    calls = []
    real = torch.ops.fcn_caffe_repro.deconv_crop_sum
    monkeypatch.setattr(ops.torch.ops.fcn_caffe_repro, "deconv_crop_sum",
                        lambda *a: calls.append(a) or real(*a), raising=False)
    with torch.no_grad():
        blobs = net(return_blobs=True, **inputs)
    assert len(calls) == FUSED[name], "every upsampling path must run through the fused op"
    fused_steps = [s for s in net.plan if "+" in s.name]
    assert len(fused_steps) == FUSED[name]
    for k in ref.files:
        if k in blobs:
            assert rel_err(blobs[k].numpy(), ref[k]) <= (1e-4 if k in net.loss_weights else 1e-5), k
    for out in net.outputs:
        assert out in blobs


def test_dense_deconvolution_takes_the_general_path():
    net, _, _ = load("voc-fcn8s")
    net.fuse()
    kinds = {s.name: s.module.is_depthwise for s in net.plan if "+" in s.name}
    assert kinds == {"upscore2+fuse_pool4": True, "upscore_pool4+fuse_pool3": False, "upscore8+score": True}


def test_diagonality_is_rechecked_when_weights_change():
    net, _, inputs = load("voc-fcn32s")
    net.fuse()
    step = next(s for s in net.plan if "+" in s.name)
    assert step.module.is_depthwise
    with torch.no_grad():
        net.upscore.weight[0, 1].fill_(0.5)
        expected = fcr.CaffeNet.from_prototxt(CAFFE_REF / "nets" / "voc-fcn32s" / "net.prototxt")
        expected.load_state_dict(net.state_dict())
        want = expected(**inputs)["loss"]
        got = net(**inputs)["loss"]
    assert not step.module.is_depthwise
    assert rel_err(got.numpy(), want.numpy()) <= 1e-5


@pytest.mark.parametrize("train_deconv", [False, True])
def test_fused_backward_equals_unfused(train_deconv):
    """With lr_mult 0 (FCN's) the deconvolution gets no gradient and runs depthwise; made trainable,
    it must get the full C x C gradient, so the pass takes the general kernel."""
    net, _, inputs = load("voc-fcn16s")
    plain = fcr.CaffeNet.from_prototxt(CAFFE_REF / "nets" / "voc-fcn16s" / "net.prototxt")
    plain.load_state_dict(net.state_dict())
    net.fuse()
    assert not net.upscore2.weight.requires_grad
    for n in (net, plain):
        n.upscore2.weight.requires_grad_(train_deconv)
        n.objective(n(**inputs)).backward()
    for (k, a), (_, b) in zip(net.named_parameters(), plain.named_parameters()):
        assert (a.grad is None) == (b.grad is None), k
        if a.grad is not None:
            assert rel_err(a.grad.numpy(), b.grad.numpy()) <= 1e-5, k
    assert (net.upscore2.weight.grad is not None) == train_deconv


def test_unfuse_restores_every_blob():
    net, ref, inputs = load("voc-fcn8s")
    net.fuse().fuse(False)
    with torch.no_grad():
        assert set(ref.files) <= set(net(return_blobs=True, **inputs))


def test_torch_impl_is_the_same_pass():
    net, ref, inputs = load("voc-fcn8s")
    net.fuse(impl="torch")
    with torch.no_grad():
        blobs = net(return_blobs=True, **inputs)
    assert rel_err(blobs["score"].numpy(), ref["score"]) <= 1e-5


def test_fused_net_runs_an_empty_batch_as_the_unfused_one():
    net, _, inputs = load("voc-fcn8s")
    empty = {k: v[:0] for k, v in inputs.items()}
    with torch.no_grad():
        plain = net(return_blobs=True, **empty)
        net.fuse()
        fused = net(return_blobs=True, **empty)
    assert fused["score"].shape == plain["score"].shape == (0, 5, 50, 64)
    assert torch.equal(fused["loss"].isnan(), plain["loss"].isnan())
