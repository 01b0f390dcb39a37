"""export.py and real clients: onnxruntime and OpenCV's dnn run the exported ONNX file, OpenCV's
Caffe importer reads a prototxt + caffemodel written by this package, and all of them agree with
our outputs within 1e-5 of max on the caffe-ref nets (width / 16)."""
import numpy as np
import pytest
import torch

import fcn_caffe_repro as fcr
from conftest import CAFFE_REF, rel_err
from fcn_caffe_repro import export
from fcn_caffe_repro.bench import opencv
from fcn_caffe_repro.cli import main as fcn

ort = pytest.importorskip("onnxruntime")  # the [test] extra; CI installs it, so these run there
cv2 = pytest.importorskip("cv2")  # opencv-python-headless<5, also in [test]

TOL = 1e-5
CLASSES = {"voc-fcn32s": 5, "voc-fcn8s": 5, "voc-fcn-alexnet": 5, "siftflow-fcn8s": 5, "nyud-fcn32s-color-hha": 5,
           "pascalcontext-fcn8s": 6, "voc-fcn8s-atonce": 5, "voc-fcn16s": 5}


def caffe_ref_net(name):
    """The registry's deploy net at the caffe-ref widths, with the caffe-ref weights (Caffe's own file)."""
    return fcr.build_net(name, phase="deploy", num_classes=CLASSES[name], width_divisor=16,
                         weights=CAFFE_REF / "nets" / name / "weights.caffemodel").eval()


def inputs_at(net, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, s[1], h, w, generator=g) * 50 for s in net.inputs.values()]


@pytest.mark.parametrize("name, sizes", [
    ("voc-fcn8s", [(64, 64), (97, 51), (131, 200)]),
    ("voc-fcn-alexnet", [(80, 80), (113, 67)]),
    ("siftflow-fcn8s", [(64, 64), (75, 90)]),       # two outputs
    ("nyud-fcn32s-color-hha", [(48, 64), (90, 71)]),  # two inputs
])
def test_onnx_dynamic_matches_ours_at_several_sizes(name, sizes, tmp_path):
    net = caffe_ref_net(name)
    path = tmp_path / f"{name}.onnx"
    export.to_onnx(net, path, inputs_at(net, *sizes[0]), dynamic=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(net.inputs)
    assert [o.name for o in session.get_outputs()] == net.outputs
    for h, w in sizes:
        xs = inputs_at(net, h, w, seed=h)
        theirs = session.run(None, {n: x.numpy() for n, x in zip(net.inputs, xs)})
        with torch.no_grad():
            ours = net(**dict(zip(net.inputs, xs)))
        for out, t in zip(net.outputs, theirs):
            assert t.shape == (1, ours[out].shape[1], h, w)
            assert rel_err(t, ours[out]) <= TOL, (name, h, w, out)


def test_fused_net_is_lowered_for_export(tmp_path):
    net = caffe_ref_net("voc-fcn8s").fuse()
    x = inputs_at(net, 72, 88)
    with torch.no_grad():
        fused = net(data=x[0])["score"]
    export.to_onnx(net, tmp_path / "f.onnx", x)
    theirs = ort.InferenceSession(str(tmp_path / "f.onnx")).run(None, {"data": x[0].numpy()})[0]
    assert rel_err(theirs, fused) <= TOL


def test_opencv_reads_the_onnx_file(tmp_path):
    net = caffe_ref_net("voc-fcn8s")
    x = inputs_at(net, 96, 80)
    export.to_onnx(net, tmp_path / "f.onnx", x)
    cv_net = cv2.dnn.readNetFromONNX(str(tmp_path / "f.onnx"))
    cv_net.setInput(x[0].numpy())
    with torch.no_grad():
        ours = net(data=x[0])["score"]
    assert rel_err(cv_net.forward(), ours) <= TOL


def test_torch_export_program_matches_ours(tmp_path):
    net = caffe_ref_net("siftflow-fcn8s")
    x = inputs_at(net, 64, 72)
    export.to_torch_export(net, tmp_path / "s.pt2", x)
    program = torch.export.load(tmp_path / "s.pt2")
    with torch.no_grad():
        ours = net(data=x[0])
    theirs = program.module()(x[0])
    for out, t in zip(net.outputs, theirs):
        assert torch.equal(t, ours[out]), out
    with pytest.raises(export.ExportError, match="--format onnx --dynamic"):
        export.to_torch_export(net, tmp_path / "d.pt2", x, dynamic=True)


def test_export_command_checks_with_onnxruntime(tmp_path, capsys):
    w = str(CAFFE_REF / "nets/voc-fcn-alexnet/weights.caffemodel")
    assert fcn.main(["export", "--net", "voc-fcn-alexnet", "--num-classes", "5", "--width-divisor", "16", "--weights",
                     w, "--dynamic", "-o", str(tmp_path / "a.onnx")]) == 0
    out = capsys.readouterr().out
    assert "free height and width" in out and "onnxruntime vs ours" in out
    with pytest.raises(SystemExit) as e:
        fcn.main(["export", "--net", "voc-fcn-alexnet", "--dynamic", "--height", "64"])
    assert e.value.code == 2


@pytest.mark.parametrize("name", ["voc-fcn32s", "voc-fcn8s", "voc-fcn8s-atonce", "voc-fcn-alexnet",
                                  "pascalcontext-fcn8s", "siftflow-fcn8s"])
def test_opencv_caffe_importer_reads_our_caffemodel(name, tmp_path):
    """OpenCV's Caffe importer (its own protobuf reader) on our writer's V2 caffemodel and our
    deploy prototxt: the same scores as ours and as Caffe's blobs.npz."""
    if opencv.problem():
        pytest.skip(opencv.problem())
    net = caffe_ref_net(name)
    net.save_caffemodel(tmp_path / "w.caffemodel")
    (tmp_path / "deploy.prototxt").write_text(net.to_prototxt())
    blobs = np.load(CAFFE_REF / "nets" / name / "blobs.npz")
    cv_net = cv2.dnn.readNetFromCaffe(str(tmp_path / "deploy.prototxt"), str(tmp_path / "w.caffemodel"))
    for top in net.inputs:
        cv_net.setInput(np.ascontiguousarray(blobs[top][:1]), top)
    theirs = cv_net.forward(net.outputs)
    with torch.no_grad():
        ours = net(**{top: torch.from_numpy(blobs[top][:1]) for top in net.inputs})
    for out, t in zip(net.outputs, theirs):
        assert rel_err(t, ours[out]) <= TOL, (name, out)
        assert rel_err(t, blobs[out][:1]) <= TOL, (name, out, "against Caffe")
