"""Legacy files as users have them: the V1 VGG16 text net with its V1 caffemodel, in one call."""
import numpy as np
import pytest
import torch

from conftest import CAFFE_REF, rel_err
import fcn_caffe_repro as fcr

VGG = CAFFE_REF / "v1-vgg16-transplant" / "vgg16"


@pytest.mark.parametrize("prototxt", ["net_v1.prototxt", "net.prototxt"])
def test_v1_vgg16_reproduces_caffe_blobs(prototxt):
    net = fcr.CaffeNet.from_prototxt(VGG / prototxt, weights=VGG / "weights_v1.caffemodel")
    ref = np.load(VGG / "blobs.npz")
    assert list(net.inputs) == ["data"]
    with torch.no_grad():
        blobs = net(return_blobs=True, data=torch.from_numpy(ref["data"]))
    errors = {k: rel_err(blobs[k].numpy(), ref[k]) for k in ref.files}
    assert max(errors.values()) <= 1e-5, errors
    # legacy 4-D blob shapes (fc weight 1x1xMxN, bias 1x1x1xN) were reshaped, not refused
    assert net.layer("fc6").weight.dim() == 2 and net.layer("fc8").bias.shape == (1000,)


def test_v1_and_v2_text_give_the_same_net():
    v1 = fcr.NetSpec.from_prototxt(VGG / "net_v1.prototxt")
    v2 = fcr.NetSpec.from_prototxt(VGG / "net.prototxt")
    assert v1 == v2
    assert [l.type for l in v1.layers][:3] == ["Input", "Convolution", "ReLU"]
