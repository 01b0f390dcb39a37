"""CaffeNet's public API: any input size, batch > 1, and clear errors for bad nets and inputs."""
import pytest
import torch

import fcn_caffe_repro as fcr
from fcn_caffe_repro.errors import NetError, PrototxtError

SIZES = [(1, 1), (7, 3), (32, 32), (101, 57), (224, 300), (500, 500)]


@pytest.fixture(scope="module")
def small_nets():
    torch.manual_seed(0)
    nets = {}
    for name in ("voc-fcn32s", "voc-fcn16s", "voc-fcn8s", "voc-fcn-alexnet"):
        net = fcr.build_net(name, phase="deploy", width_divisor=16, num_classes=5)
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0, 0.1)
        nets[name] = net.eval()
    return nets


@pytest.mark.parametrize("name", ["voc-fcn32s", "voc-fcn16s", "voc-fcn8s", "voc-fcn-alexnet"])
@pytest.mark.parametrize("hw", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_any_size_crops_back_to_the_input(small_nets, name, hw):
    net = small_nets[name]
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        out = net(data=x)
    assert list(out) == ["score"]
    assert out["score"].shape == (2, 5, *hw)
    assert torch.isfinite(out["score"]).all()


def test_batch_items_are_independent(small_nets):
    net = small_nets["voc-fcn8s"]
    x = torch.randn(3, 3, 40, 50)
    with torch.no_grad():
        whole = net(data=x)["score"]
        one = net(data=x[1:2])["score"]
    torch.testing.assert_close(whole[1:2], one, rtol=1e-5, atol=1e-5)


def test_api_of_the_issue(tmp_path):
    net = fcr.build_net("voc-fcn8s", phase="val", width_divisor=16)
    text = net.to_prototxt()
    assert 'type: "SoftmaxWithLoss"' in text and "offset: 31" in text
    path = tmp_path / "net.prototxt"
    path.write_text(fcr.build_net("voc-fcn8s", phase="deploy", width_divisor=16).to_prototxt())
    again = fcr.CaffeNet.from_prototxt(str(path), weights=None, phase="test")
    assert list(again.inputs) == ["data"]
    blobs = again(data=torch.zeros(1, 3, 20, 20), return_blobs=True)
    assert {"conv1_1", "pool5", "upscore2", "score_pool4c", "fuse_pool3", "score"} <= set(blobs)
    assert net.conv1_1.weight.shape == (4, 3, 3, 3)
    assert "conv1_1.weight" in net.state_dict() and "conv1_1.bias" in net.state_dict()


NET_TEXT = '''name: "tiny"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 } }
'''


def test_malformed_prototxt_names_the_line(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text(NET_TEXT.replace("num_output: 2", "num_output 2"))
    with pytest.raises(PrototxtError, match=r"bad.prototxt:4:\d+"):
        fcr.CaffeNet.from_prototxt(path)


def test_unknown_layer_type_names_the_layer():
    with pytest.raises(NetError, match=r"layer 'conv'.*unknown or unsupported layer type 'Convolution3D'"):
        fcr.CaffeNet.from_prototxt(NET_TEXT.replace('type: "Convolution"', 'type: "Convolution3D"'))


def test_missing_bottom_names_the_layer():
    with pytest.raises(NetError, match=r"layer 'conv'.*unknown bottom blob 'image'"):
        fcr.CaffeNet.from_prototxt(NET_TEXT.replace('bottom: "data"', 'bottom: "image"'))


def test_wrong_channel_count_names_the_layer():
    net = fcr.CaffeNet.from_prototxt(NET_TEXT)
    with pytest.raises(NetError, match=r"layer 'input'.*4 dims with 3 channels"):
        net(data=torch.zeros(1, 4, 8, 8))
    deploy = fcr.build_net("voc-fcn32s", phase="val", width_divisor=16)  # Python data layer
    with pytest.raises(NetError, match=r"layer 'conv1_1'.*expected \(N, 3, H, W\)"):
        deploy(data=torch.zeros(1, 1, 8, 8), label=torch.zeros(1, 1, 8, 8))


def test_missing_and_unknown_inputs_are_named():
    net = fcr.CaffeNet.from_prototxt(NET_TEXT)
    with pytest.raises(NetError, match=r"missing \['data'\], unknown \['image'\]"):
        net(image=torch.zeros(1, 3, 8, 8))


def test_crop_larger_than_its_input_is_a_clear_error():
    text = NET_TEXT + '''layer { name: "big" type: "Input" top: "ref" input_param { shape { dim: 1 dim: 2 dim: 9 dim: 9 } } }
layer { name: "crop" type: "Crop" bottom: "conv" bottom: "ref" top: "c" }'''
    with pytest.raises(NetError, match=r"layer 'crop'.*exceeds"):
        fcr.CaffeNet.from_prototxt(text)


def test_caffe_pooling_output_size_rules():
    from fcn_caffe_repro.layers import caffe_pool_size
    assert caffe_pool_size(7, 2, 2, 0) == 4   # ceil, not floor
    assert caffe_pool_size(6, 3, 2, 1) == 4
    assert caffe_pool_size(5, 2, 2, 1) == 3   # a last window starting inside the pad is dropped
    assert caffe_pool_size(4, 1, 2, 0) == 3   # no clipping rule without pad (PyTorch would give 2)


def test_pooling_without_pad_keeps_caffes_last_window():
    """kernel 1 stride 2 on 4 pixels: Caffe makes 3 outputs, the last window starts at 4 (empty)."""
    text = NET_TEXT.split('layer { name: "conv"')[0] + \
        'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_size: 1 stride: 2 } }'
    net = fcr.CaffeNet.from_prototxt(text)
    out = net(data=torch.arange(3 * 16.).reshape(1, 3, 4, 4))["p"]
    assert out.shape == (1, 3, 3, 3)
    assert out[0, 0, 0, :2].tolist() == [0.0, 2.0]


SPEC_NET = '''layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: {H} dim: 8 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: {N} kernel_size: {K} }} }}
layer {{ name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param {{ pool: MAX kernel_size: 2 stride: {S} }} }}
'''


@pytest.mark.parametrize("change, error, match", [
    ({"S": 0}, NetError, r"layer 'pool': stride: 0 is out of range .*:4:\d+"),
    ({"N": -2}, NetError, r"layer 'conv': num_output: -2 is out of range .*:3:\d+"),
    ({"K": 0}, NetError, r"layer 'conv': kernel_size: 0 is out of range"),
    ({"H": -8}, NetError, r"layer 'data': input 'data' shape \(1, 3, -8, 8\) has a negative axis"),
    ({"N": 2147483647}, NetError, r"layer 'conv': parameter blob 'weight' .* more than INT_MAX"),
    ({"N": 99999999999999999999999}, PrototxtError, r":3:\d+: 'num_output' must be an integer"),
    ({"K": "3 } } layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip' "
           "inner_product_param { num_output: 2 axis: 4"}, NetError, r"layer 'ip': axis 4 out of range"),
])
def test_bad_specs_are_refused_before_any_allocation(change, error, match):
    """Each field is checked against Caffe's range at build time (a wrong check crashes in torch,
    divides by zero, or asks for 231 GB)."""
    args = {"H": 8, "N": 4, "K": 3, "S": 2, **change}
    with pytest.raises(error, match=match):
        fcr.CaffeNet(fcr.NetSpec.from_prototxt(SPEC_NET.format(**args)))


def test_input_dtype_other_than_the_nets_is_a_net_error():
    net = fcr.CaffeNet(fcr.NetSpec.from_prototxt(SPEC_NET.format(H=8, N=4, K=3, S=2)))
    with pytest.raises(NetError, match=r"layer 'data': input 'data' is torch.float64.*torch.float32"):
        net(data=torch.zeros(1, 3, 8, 8, dtype=torch.float64))
    assert net.double()(data=torch.zeros(1, 3, 8, 8, dtype=torch.float64))["pool"].dtype == torch.float64


def test_a_top_produced_by_two_layers_is_refused_but_in_place_is_not():
    """Caffe's Net::AppendTop: "produced by multiple sources", unless top i is bottom i."""
    two = SPEC_NET.format(H=8, N=4, K=3, S=2) + \
        'layer { name: "other" type: "ReLU" bottom: "data" top: "conv" }\n'
    with pytest.raises(NetError, match=r"layer 'other': top blob 'conv' produced by multiple sources .*:5:"):
        fcr.CaffeNet(fcr.NetSpec.from_prototxt(two))
    in_place = SPEC_NET.format(H=8, N=4, K=3, S=2) + 'layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }\n'
    assert "relu" in dict(fcr.CaffeNet(fcr.NetSpec.from_prototxt(in_place)).layer_modules())
    phased = SPEC_NET.format(H=8, N=4, K=3, S=2) + \
        'layer { name: "t" type: "ReLU" bottom: "data" top: "x" include { phase: TRAIN } }\n' \
        'layer { name: "v" type: "ReLU" bottom: "data" top: "x" include { phase: TEST } }\n'
    assert "v" in dict(fcr.CaffeNet(fcr.NetSpec.from_prototxt(phased), phase="test").layer_modules())


def test_unknown_fields_are_errors_with_an_explicit_opt_out(tmp_path):
    """protobuf's text parser rejects a field its message lacks (a typo'd kernal_size beside
    kernel_size was silently ignored); unknown_fields="warn" names each and ignores it."""
    path = tmp_path / "typo.prototxt"
    path.write_text(SPEC_NET.format(H=8, N=4, K=3, S=2).replace("kernel_size: 3", "kernel_size: 3\n  kernal_size: 5"))
    with pytest.raises(PrototxtError, match=r"typo.prototxt:4:3: unknown field 'kernal_size' in ConvolutionParameter"):
        fcr.CaffeNet.from_prototxt(path)
    path.write_text(path.read_text().replace('top: "pool"', 'top: "pool" fork_field: 1'))
    with pytest.warns(UserWarning) as record:
        net = fcr.CaffeNet.from_prototxt(path, unknown_fields="warn")
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2 and "typo.prototxt:4:3: unknown field 'kernal_size'" in messages[0]
    assert "typo.prototxt:5:" in messages[1] and "'fork_field' in LayerParameter" in messages[1]
    assert net.layer("conv").kernel == (3, 3) and "kernal_size" not in net.to_prototxt()


def test_forward_returns_the_blobs_named_besides_the_outputs():
    net = fcr.build_net("voc-fcn32s", phase="deploy", num_classes=3, width_divisor=16)
    x = torch.randn(1, 3, 40, 52, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        every = net(data=x, return_blobs=True)
        some = net(data=x, return_blobs=["fc7", "pool4"])
    assert set(some) == {"score", "fc7", "pool4"}
    assert all(torch.equal(some[k], every[k]) for k in some)
