"""Surgery against what the reference surgery did in real Caffe (caffe-ref/fcn32s-transplant)."""
import numpy as np
import pytest
import torch

from conftest import CAFFE_REF, rel_err
import fcn_caffe_repro as fcr
from fcn_caffe_repro.errors import CaffemodelError, NetError

T = CAFFE_REF / "fcn32s-transplant"
VGG = CAFFE_REF / "v1-vgg16-transplant" / "vgg16"


@pytest.mark.parametrize("source_kind", ["path", "dict", "net"])
def test_transplant_and_interp_equal_caffes(source_kind):
    net = fcr.CaffeNet.from_prototxt(T / "net.prototxt")
    source = {"path": VGG / "weights_v1.caffemodel",
              "dict": fcr.caffemodel.read(VGG / "weights_v1.caffemodel"),
              "net": fcr.CaffeNet.from_prototxt(VGG / "net.prototxt", weights=VGG / "weights_v1.caffemodel")}[source_kind]
    lines = fcr.surgery.transplant(net, source, log=None)
    fcr.surgery.interp(net, ["upscore"])
    assert lines == (T / "transplant.log").read_text().splitlines()
    expected = fcr.caffemodel.read(T / "weights_after_transplant.caffemodel")
    ours = net.params_by_layer()
    assert set(ours) == set(expected)
    for name, arrays in expected.items():
        for a, p in zip(arrays, ours[name]):
            np.testing.assert_array_equal(p.detach().numpy().reshape(a.shape), a, err_msg=name)


def test_transplanted_net_reproduces_caffes_forward():
    net = fcr.CaffeNet.from_prototxt(T / "net.prototxt")
    fcr.surgery.staged_init(net, VGG / "weights_v1.caffemodel", log=None)
    ref = np.load(T / "blobs.npz")
    with torch.no_grad():
        blobs = net(return_blobs=True, **{k: torch.from_numpy(ref[k]) for k in net.inputs})
    for k in ref.files:
        assert rel_err(blobs[k].numpy(), ref[k]) <= (1e-4 if k in net.loss_weights else 1e-5), k
    assert (net.score_fr.weight == 0).all(), "score layers keep Caffe's default zero filler"


def test_staged_16s_from_32s_copies_and_interpolates():
    n32 = fcr.build_net("voc-fcn32s", phase="val", width_divisor=16)
    with torch.no_grad():
        for p in n32.parameters():
            p.normal_()
    n16 = fcr.build_net("voc-fcn16s", phase="val", width_divisor=16)
    lines = fcr.surgery.staged_init(n16, n32, log=None)
    assert "dropping upscore" in lines
    torch.testing.assert_close(n16.score_fr.weight, n32.score_fr.weight, rtol=0, atol=0)
    assert (n16.score_pool4.weight == 0).all()
    w = n16.upscore2.weight
    assert n16.upscore2.is_diagonal() and w[0, 0].sum() > 0


def test_interp_kernel_and_errors():
    net = fcr.build_net("voc-fcn32s", phase="deploy", width_divisor=16)
    fcr.surgery.interp(net, ["upscore"])
    k = net.upscore.weight[1, 1]
    assert k.shape == (64, 64) and torch.allclose(k, k.t()) and abs(float(k.max()) - (1 - 0.5 / 32) ** 2) < 1e-6
    with pytest.raises(NetError, match="square"):
        bad = fcr.CaffeNet.from_prototxt('''layer { name: "i" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "up" type: "Deconvolution" bottom: "x" top: "y" convolution_param { num_output: 2 kernel_h: 4 kernel_w: 3 } }''')
        fcr.surgery.interp(bad, ["up"])


def test_size_mismatch_is_an_error_and_nothing_is_written():
    net = fcr.CaffeNet.from_prototxt(T / "net.prototxt")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    source = fcr.caffemodel.read(VGG / "weights_v1.caffemodel")
    source["fc7"] = [np.zeros(5, np.float32), source["fc7"][1]]
    with pytest.raises(CaffemodelError, match="fc7"):
        fcr.surgery.transplant(net, source, log=None)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
