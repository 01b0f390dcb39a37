"""Every one-layer case Caffe computed (tests/fixtures/caffe-ref/layers): forward and backward."""
import json

import numpy as np
import pytest
import torch

from conftest import CAFFE_REF, rel_err
from fcn_caffe_repro.net import CaffeNet

CASES = sorted(json.loads((CAFFE_REF / "layers" / "index.json").read_text()))
TOL = {torch.float32: 1e-5, torch.float64: 1e-5}


def run_case(case, dtype):
    folder = CAFFE_REF / "layers" / case
    ref = np.load(folder / "blobs.npz")
    net = CaffeNet.from_prototxt(folder / "net.prototxt").to(dtype)
    layer_name, module = net.layer_modules()[-1]
    params = module.blobs()
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(torch.from_numpy(ref[f"param{i}"]))
    inputs = {k: torch.tensor(ref[k], dtype=dtype, requires_grad=k != "label") for k in net.inputs}
    out = net(**inputs)["out"]
    out.backward(torch.tensor(ref["out_diff"], dtype=dtype))
    return ref, out, inputs, params


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES)
def test_layer_matches_caffe(case, dtype):
    ref, out, inputs, params = run_case(case, dtype)
    is_loss = ref["out"].ndim == 0
    tol = 1e-4 if is_loss else TOL[dtype]
    assert rel_err(out.detach().numpy(), ref["out"]) <= tol, "forward"
    for name, x in inputs.items():
        if f"{name}_diff" in ref.files and name != "label":
            grad = x.grad if x.grad is not None else torch.zeros_like(x)  # Crop's reference bottom
            assert rel_err(grad.numpy(), ref[f"{name}_diff"]) <= TOL[dtype], f"{name}_diff"
    for i, p in enumerate(params):
        assert rel_err(p.grad.numpy(), ref[f"param{i}_diff"]) <= TOL[dtype], f"param{i}_diff"


def test_every_case_is_covered():
    """The index and the folders agree, and every case exercises at least a forward and a backward."""
    folders = sorted(p.name for p in (CAFFE_REF / "layers").iterdir() if p.is_dir())
    assert folders == CASES and len(CASES) >= 29


def test_loss_clip_is_exercised():
    """With logits far apart some probabilities underflow: the loss must be finite (FLT_MIN clip)
    and equal Caffe's, while the gradient stays the unclipped softmax - onehot."""
    ref, out, inputs, _ = run_case("loss_underflow_clip", torch.float64)
    x = inputs["x"].detach()
    prob = torch.softmax(x, 1)
    assert (prob < np.finfo(np.float32).tiny).any(), "the fixture should underflow"
    assert torch.isfinite(out)
    assert rel_err(out.detach().numpy(), ref["out"]) <= 1e-4


def test_eltwise_max_ties_follow_caffe():
    """Ties on odd columns: Caffe's strict comparison sends forward value and gradient to bottom 1."""
    ref, out, inputs, _ = run_case("eltwise_max", torch.float64)
    x, y = ref["x"], ref["y"]
    ties = x == y
    assert ties.any(), "fixture has ties"
    gx, gy = inputs["x"].grad.numpy(), inputs["y"].grad.numpy()
    assert np.all(gx[ties] == 0) and np.allclose(gy[ties], ref["out_diff"][ties])
