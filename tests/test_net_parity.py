"""Whole-net parity with real Caffe: every blob of every caffe-ref net, float32 and float64, and
float32 on a CUDA GPU where there is one."""
import numpy as np
import pytest
import torch

from conftest import CAFFE_REF, needs_cuda, rel_err
import fcn_caffe_repro as fcr

NETS = sorted(p.name for p in (CAFFE_REF / "nets").iterdir() if p.is_dir())
LOSS_TOL, BLOB_TOL = 1e-4, 1e-5


def forward(name, dtype, device="cpu", **kw):
    """The net on `device` in `dtype`, Caffe's blobs, and ours (on the CPU)."""
    folder = CAFFE_REF / "nets" / name
    net = fcr.CaffeNet.from_prototxt(folder / "net.prototxt", weights=folder / "weights.caffemodel", **kw)
    net = net.to(device, dtype)
    ref = np.load(folder / "blobs.npz")
    with torch.no_grad():
        blobs = net(return_blobs=True, **{k: torch.from_numpy(ref[k]).to(device, dtype) for k in net.inputs})
    return net, ref, {k: v.cpu() for k, v in blobs.items()}


def is_loss(net, blob):
    return blob in net.loss_weights


@pytest.mark.parametrize("dtype,device", [(torch.float32, "cpu"), (torch.float64, "cpu"),
                                          pytest.param(torch.float32, "cuda", marks=needs_cuda)],
                         ids=["f32", "f64", "cuda-f32"])
@pytest.mark.parametrize("name", NETS)
def test_every_blob_matches_caffe(name, dtype, device, request):
    if device == "cuda":
        request.getfixturevalue("cuda_ieee_float32")
    net, ref, blobs = forward(name, dtype, device)
    assert set(ref.files) <= set(blobs), f"blobs Caffe has and we lack: {set(ref.files) - set(blobs)}"
    errors = {k: rel_err(blobs[k].numpy(), ref[k]) for k in ref.files}
    bad = {k: e for k, e in errors.items() if e > (LOSS_TOL if is_loss(net, k) else BLOB_TOL)}
    assert not bad, f"blobs off Caffe's: {bad}"
    assert len(net.loss_weights) >= 1 and all(k in ref.files for k in net.loss_weights)


@pytest.mark.parametrize("name", NETS)
def test_float64_agrees_with_float32(name):
    _, ref, b32 = forward(name, torch.float32)
    _, _, b64 = forward(name, torch.float64)
    for k in ref.files:
        assert rel_err(b32[k].numpy(), b64[k].numpy()) <= 1e-5, k


def test_outputs_are_the_unconsumed_blobs():
    net, ref, _ = forward("siftflow-fcn8s", torch.float32)
    assert sorted(net.outputs) == ["loss", "loss_geo"]
    with torch.no_grad():
        outs = net(**{k: torch.from_numpy(ref[k]) for k in net.inputs})
    assert sorted(outs) == ["loss", "loss_geo"]


def test_in_place_blob_holds_last_writer():
    """relu6 runs in place on fc6: blob 'fc6' must hold the ReLU output, as Caffe's blob does."""
    _, ref, blobs = forward("voc-fcn32s", torch.float32)
    assert (blobs["fc6"] >= 0).all() and (ref["fc6"] >= 0).all()
    assert rel_err(blobs["fc6"].numpy(), ref["fc6"]) <= BLOB_TOL
