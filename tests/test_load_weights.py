"""Loading .caffemodel weights into nets: strictness, reshaping, never half-loading; the converter."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import CAFFE_REF
import fcn_caffe_repro as fcr
from fcn_caffe_repro.errors import CaffemodelError

NET = CAFFE_REF / "nets" / "voc-fcn32s"


def fresh():
    return fcr.CaffeNet.from_prototxt(NET / "net.prototxt")


def snapshot(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def assert_unchanged(net, before):
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed: the net was half-loaded"


def test_build_net_with_weights_equals_from_prototxt():
    a = fcr.build_net("voc-fcn32s", phase="val", width_divisor=16, num_classes=5, weights=NET / "weights.caffemodel")
    b = fcr.CaffeNet.from_prototxt(NET / "net.prototxt", weights=str(NET / "weights.caffemodel"))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_save_then_load_round_trips(tmp_path):
    net = fresh()
    net.load_caffemodel(NET / "weights.caffemodel")
    net.save_caffemodel(tmp_path / "out.caffemodel")
    again = fresh()
    again.load_caffemodel(tmp_path / "out.caffemodel")
    for k, v in net.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    original = fcr.caffemodel.read(NET / "weights.caffemodel")
    written = fcr.caffemodel.read(tmp_path / "out.caffemodel")
    assert list(original) == list(written)
    for name in original:
        for a, b in zip(original[name], written[name]):
            np.testing.assert_array_equal(a, b)


def test_strict_lists_every_missing_and_unexpected_layer():
    blobs = dict(fcr.caffemodel.read(NET / "weights.caffemodel"))
    blobs.pop("conv1_1")
    blobs.pop("score_fr")
    blobs["extra"] = [np.zeros(3, np.float32)]
    net = fresh()
    before = snapshot(net)
    with pytest.raises(CaffemodelError, match=r"\['conv1_1', 'score_fr'\].*\['extra'\]"):
        net.load_caffemodel(blobs, strict=True)
    assert_unchanged(net, before)
    missing, unexpected = net.load_caffemodel(blobs, strict=False)
    assert missing == ["conv1_1", "score_fr"] and unexpected == ["extra"]
    assert torch.equal(net.conv1_2.weight, torch.from_numpy(blobs["conv1_2"][0]))


@pytest.mark.parametrize("damage, message", [
    (lambda b: b.__setitem__("fc6", [b["fc6"][0][:, :1]] + b["fc6"][1:]), r"layer 'fc6'.*shape"),
    (lambda b: b.__setitem__("conv1_1", [np.ascontiguousarray(np.swapaxes(b["conv1_1"][0], 0, 1))] + b["conv1_1"][1:]),
     r"layer 'conv1_1'.*blob 0 has shape \(3, 4, 3, 3\); the net expects \(4, 3, 3, 3\)"),
    (lambda b: b.__setitem__("fc7", b["fc7"][:1]), r"layer 'fc7'.*1 blobs in the file, the net's layer has 2"),
])
def test_mismatch_is_an_error_and_leaves_the_net_unchanged(damage, message):
    blobs = dict(fcr.caffemodel.read(NET / "weights.caffemodel"))
    damage(blobs)
    net = fresh()
    before = snapshot(net)
    with pytest.raises(CaffemodelError, match=message):
        net.load_caffemodel(blobs)
    assert_unchanged(net, before)


def test_truncated_file_leaves_the_net_unchanged(tmp_path):
    data = (NET / "weights.caffemodel").read_bytes()
    bad = tmp_path / "cut.caffemodel"
    bad.write_bytes(data[: len(data) * 2 // 3])
    net = fresh()
    before = snapshot(net)
    with pytest.raises(CaffemodelError, match=r"cut.caffemodel.*byte \d+"):
        net.load_caffemodel(bad)
    assert_unchanged(net, before)


def test_converter_cli(tmp_path):
    out = tmp_path / "fcn32s.pt"
    r = subprocess.run([sys.executable, "tools/convert_caffemodel.py", str(NET / "weights.caffemodel"),
                        "--prototxt", str(NET / "net.prototxt"), "-o", str(out)],
                       capture_output=True, text=True, cwd=CAFFE_REF.parents[2])
    assert r.returncode == 0, r.stderr
    assert "| fc6 | weight | 256x32x7x7 |" in r.stdout and "verified" in r.stdout
    state = torch.load(out)
    ref = fcr.caffemodel.read(NET / "weights.caffemodel")
    assert torch.equal(state["fc6.weight"].flatten(), torch.from_numpy(ref["fc6"][0]).flatten())
    r = subprocess.run([sys.executable, "tools/convert_caffemodel.py", str(NET / "net.prototxt"),
                        "--prototxt", str(NET / "net.prototxt"), "-o", str(tmp_path / "x.pt")],
                       capture_output=True, text=True, cwd=CAFFE_REF.parents[2])
    assert r.returncode == 1 and "error:" in r.stderr and not (tmp_path / "x.pt").exists()


def test_legacy_4d_blob_loads_into_its_padded_shape():
    """Caffe's ShapeEquals: a V1 blob (1, 1, N, K) fits an (N, K) parameter, (N, 1, 1, K) does not."""
    blobs = dict(fcr.caffemodel.read(NET / "weights.caffemodel"))
    bias = blobs["conv1_1"][1]
    net = fresh()
    net.load_caffemodel({"conv1_1": [blobs["conv1_1"][0], bias.reshape(1, 1, 1, -1)]}, strict=False)
    assert torch.equal(net.conv1_1.bias, torch.from_numpy(bias))
    with pytest.raises(CaffemodelError, match="conv1_1"):
        net.load_caffemodel({"conv1_1": [blobs["conv1_1"][0], bias.reshape(-1, 1, 1, 1)]}, strict=False)


def test_converter_refuses_to_overwrite_its_input(tmp_path):
    """-o naming the input, or a hard link to it, is refused before any work; the input is intact."""
    import os

    model = tmp_path / "m.caffemodel"
    model.write_bytes((NET / "weights.caffemodel").read_bytes())
    os.link(model, tmp_path / "link.caffemodel")
    before = model.read_bytes()
    for out in (model, tmp_path / "link.caffemodel", tmp_path / "." / "m.caffemodel", NET / "net.prototxt"):
        r = subprocess.run([sys.executable, "tools/convert_caffemodel.py", str(model),
                            "--prototxt", str(NET / "net.prototxt"), "-o", str(out)],
                           capture_output=True, text=True, cwd=CAFFE_REF.parents[2])
        assert r.returncode == 1 and "the output is the input" in r.stderr, r.stderr
    assert model.read_bytes() == before
    assert (NET / "net.prototxt").read_text().startswith(("name", "layer", "#", "input"))
