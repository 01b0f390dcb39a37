"""weight_formats.py: .caffemodel, .safetensors and .pt give the same net, told apart by content;
a file that does not fit loads nothing and names the first differing key and shape."""
import shutil

import numpy as np
import pytest
import torch

import fcn_caffe_repro as fcr
from conftest import CAFFE_REF
from fcn_caffe_repro import weight_formats as wf
from fcn_caffe_repro.cli import main as fcn

NET = CAFFE_REF / "nets" / "voc-fcn8s"


def tiny(num_classes=5, weights=None):
    return fcr.build_net("voc-fcn8s", phase="deploy", num_classes=num_classes, width_divisor=16, weights=weights)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The caffe-ref net's weights in all three formats, and under misleading suffixes."""
    d = tmp_path_factory.mktemp("formats")
    net = tiny(weights=NET / "weights.caffemodel")
    shutil.copy(NET / "weights.caffemodel", d / "w.caffemodel")
    wf.write_state(d / "w.safetensors", net.state_dict())
    wf.write_state(d / "w.pt", net.state_dict())
    shutil.copy(d / "w.safetensors", d / "really_safetensors.caffemodel")
    shutil.copy(d / "w.pt", d / "really_torch.safetensors")
    shutil.copy(d / "w.caffemodel", d / "really_caffemodel.pt")
    return d


def test_formats_detected_from_content_not_suffix(files):
    assert [wf.detect(files / n) for n in ("w.caffemodel", "w.safetensors", "w.pt")] == list(wf.FORMATS)
    assert wf.detect(files / "really_safetensors.caffemodel") == wf.SAFETENSORS
    assert wf.detect(files / "really_torch.safetensors") == wf.TORCH
    assert wf.detect(files / "really_caffemodel.pt") == wf.CAFFEMODEL


def test_every_format_gives_identical_blobs(files):
    x = torch.randn(1, 3, 67, 53) * 50
    runs = {}
    for name in ("w.caffemodel", "w.safetensors", "w.pt", "really_safetensors.caffemodel", "really_torch.safetensors",
                 "really_caffemodel.pt"):
        with torch.no_grad():
            runs[name] = tiny(weights=files / name)(data=x, return_blobs=True)
    first = runs.pop("w.caffemodel")
    for name, blobs in runs.items():
        assert blobs.keys() == first.keys()
        for k in first:
            assert torch.equal(blobs[k], first[k]), (name, k)
    via_prototxt = fcr.CaffeNet.from_prototxt(NET / "net.prototxt", weights=files / "w.safetensors")
    assert torch.equal(via_prototxt.conv1_1.weight, tiny(weights=files / "w.caffemodel").conv1_1.weight)


def test_wrong_file_loads_nothing_and_names_the_key(files, tmp_path):
    other = tiny(num_classes=7)
    for p in other.parameters():
        p.data.normal_()
    wf.write_state(tmp_path / "seven.safetensors", other.state_dict())
    wf.write_state(tmp_path / "seven.pt", other.state_dict())
    net = tiny()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for name in ("seven.safetensors", "seven.pt"):
        with pytest.raises(wf.WeightsError, match=r"key 'score_fr.weight': the file has shape \(7, 256, 1, 1\), "
                                                  r"the net expects \(5, 256, 1, 1\)"):
            net.load_weights(tmp_path / name)
    state = dict(before)
    state["extra.weight"] = torch.zeros(2)
    wf.write_state(tmp_path / "extra.safetensors", state)
    with pytest.raises(wf.WeightsError, match=r"key 'extra.weight': shape \(2,\) in the file is not a parameter"):
        net.load_weights(tmp_path / "extra.safetensors")
    del state["extra.weight"], state["upscore8.weight"]
    wf.write_state(tmp_path / "missing.pt", state)
    with pytest.raises(wf.WeightsError, match=r"key 'upscore8.weight': the net's parameter of shape"):
        net.load_weights(tmp_path / "missing.pt")
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_torch_files_that_are_not_state_dicts_are_refused(tmp_path):
    torch.save({"conv1_1.weight": [1, 2]}, tmp_path / "list.pt")
    torch.save({"model": {"a": torch.zeros(1)}, "epoch": 3}, tmp_path / "checkpoint.pt")
    for name in ("list.pt", "checkpoint.pt"):
        with pytest.raises(wf.WeightsError, match=name):
            tiny().load_weights(tmp_path / name)


def test_damaged_safetensors_are_refused(files, tmp_path):
    raw = (files / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[:len(raw) // 2])
    (tmp_path / "header.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{" + raw[9:])
    for name, message in (("cut.safetensors", "data offsets"), ("header.safetensors", "header length")):
        with pytest.raises(wf.WeightsError, match=message):
            wf.read_safetensors(tmp_path / name)


def test_safetensors_interoperate_with_the_library(files, tmp_path):
    st = pytest.importorskip("safetensors.numpy")  # in the [test] extra; CI installs it
    ours = wf.read_safetensors(files / "w.safetensors")
    theirs = st.load_file(str(files / "w.safetensors"))
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    mixed = {"a": np.arange(6, dtype=np.float64).reshape(2, 3), "b": np.arange(4, dtype=np.int64),
             "c": np.ones((1,), np.float16)}
    st.save_file(mixed, str(tmp_path / "lib.safetensors"))
    back = wf.read_safetensors(tmp_path / "lib.safetensors")
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in mixed.items())


def test_transplant_source_in_any_format(files):
    a, b = tiny(), tiny()
    fcr.surgery.transplant(a, files / "w.caffemodel", log=None)
    fcr.surgery.transplant(b, files / "w.safetensors", log=None)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_convert_writes_safetensors_by_default_and_reads_every_format(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    proto = str(NET / "net.prototxt")
    assert fcn.main(["convert", str(files / "w.caffemodel"), "--prototxt", proto]) == 0
    assert wf.detect(tmp_path / "w.safetensors") == wf.SAFETENSORS
    assert fcn.main(["convert", str(tmp_path / "w.safetensors"), "--prototxt", proto, "-o", "again.pt"]) == 0
    assert wf.detect(tmp_path / "again.pt") == wf.TORCH
    a, b = wf.read_state(tmp_path / "w.safetensors"), wf.read_state(tmp_path / "again.pt")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert "verified" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".caffemodel", ".safetensors", ".pt"])
def test_one_shape_rule_for_every_format(suffix, tmp_path):
    """Caffe's ShapeEquals in every format: a legacy 4-D (1, 1, 1, N) bias loads into (N,); the
    same values as (N, 1, 1, 1), or a transposed weight, load nothing."""
    ref = tiny(weights=NET / "weights.caffemodel")
    state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    w, b = state["conv1_1.weight"], state["conv1_1.bias"]

    def write(path, conv1_1):
        if suffix == ".caffemodel":
            layers = {n: (m.spec.type, [x.detach().numpy() for x in m.blobs()])
                      for n, m in ref._modules_by_layer.items() if m.blobs()}
            layers["conv1_1"] = ("Convolution", [t.numpy() for t in conv1_1])
            fcr.caffemodel.write(path, layers)
        else:
            wf.write_state(path, {**state, "conv1_1.weight": conv1_1[0], "conv1_1.bias": conv1_1[1]})
        return path

    net = tiny()
    net.load_caffemodel(write(tmp_path / f"legacy{suffix}", [w, b.reshape(1, 1, 1, -1)]))
    assert torch.equal(net.conv1_1.bias, b) and torch.equal(net.conv1_1.weight, w)
    for name, bad in (("column", [w, b.reshape(-1, 1, 1, 1)]), ("transposed", [w.transpose(0, 1).contiguous(), b])):
        fresh = tiny()
        before = fresh.conv1_1.weight.detach().clone()
        with pytest.raises(fcr.CaffeError, match=r"conv1_1.*expects"):
            fresh.load_caffemodel(write(tmp_path / f"{name}{suffix}", bad))
        assert torch.equal(fresh.conv1_1.weight, before)
