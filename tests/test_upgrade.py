"""Legacy Caffe nets (V0/V1 text, net-level inputs) upgrade to the V2 net Caffe would load."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fcn_caffe_repro.caffe import prototxt
from fcn_caffe_repro.caffe.spec import NetSpec
from fcn_caffe_repro.caffe.proto import V1_TYPES
from fcn_caffe_repro.caffe.upgrade import upgrade_net
from fcn_caffe_repro.errors import PrototxtError

ROOT = Path(__file__).resolve().parents[1]
VGG = ROOT / "tests/fixtures/caffe-ref/v1-vgg16-transplant/vgg16"
V2_NETS = sorted(p for p in (ROOT / "tests/fixtures/reference/prototxt").glob("*/*.prototxt")
                 if p.name != "solver.prototxt")


def up(text):
    return upgrade_net(prototxt.loads(text))


def layers(msg):
    return msg.getall("layer")


# --- the V1 VGG16 deploy net ------------------------------------------------------------------
def test_v1_vgg16_equals_its_v2_net_layer_for_layer():
    v1, v2 = NetSpec.from_prototxt(str(VGG / "net_v1.prototxt")), NetSpec.from_prototxt(str(VGG / "net.prototxt"))
    assert [l.name for l in v1.layers] == [l.name for l in v2.layers]
    for a, b in zip(v1.layers, v2.layers):
        assert a.msg == b.msg, f"layer {b.name}:\n{prototxt.dumps(a.msg)}\n!=\n{prototxt.dumps(b.msg)}"
    assert v1.name == v2.name == "VGG_ILSVRC_16_layers"
    assert v1 == v2


def test_v1_vgg16_prints_as_caffe_upgrade_tool_does():
    """Same text as the V2 file, byte for byte: Caffe's field order (Input layer first)."""
    upgraded = prototxt.dumps(upgrade_net(prototxt.load(VGG / "net_v1.prototxt")))
    assert upgraded == (VGG / "net.prototxt").read_text()


def test_round_trip_upgrade_print_parse():
    spec = NetSpec.from_prototxt(str(VGG / "net_v1.prototxt"))
    again = NetSpec.from_prototxt(spec.to_prototxt())
    assert again == spec and [l.msg for l in again.layers] == [l.msg for l in spec.layers]


@pytest.mark.parametrize("path", V2_NETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_v2_nets_pass_through_unchanged(path):
    msg = prototxt.load(path)
    before = prototxt.dumps(msg)
    assert upgrade_net(msg) is msg
    assert prototxt.dumps(msg) == before


def test_upgrade_does_not_modify_its_input():
    msg = prototxt.load(VGG / "net_v1.prototxt")
    before = prototxt.dumps(msg)
    upgrade_net(msg)
    assert prototxt.dumps(msg) == before


# --- types -------------------------------------------------------------------------------------
@pytest.mark.parametrize("enum,name", [("CONVOLUTION", "Convolution"), ("INNER_PRODUCT", "InnerProduct"),
                                       ("SOFTMAX_LOSS", "SoftmaxWithLoss"), ("DECONVOLUTION", "Deconvolution"),
                                       ("TANH", "TanH"), ("ABSVAL", "AbsVal"), ("IM2COL", "Im2col"),
                                       ("HDF5_DATA", "HDF5Data"), ("ELTWISE", "Eltwise")])
def test_v1_enum_types(enum, name):
    assert layers(up(f"layers {{ name: 'x' type: {enum} }}"))[0].get("type") == name
    number = V1_TYPES[enum][0]
    assert layers(up(f"layers {{ name: 'x' type: {number} }}"))[0].get("type") == name


def test_v1_type_table_is_complete_and_one_to_one():
    assert len(V1_TYPES) == 40  # every value of V1LayerParameter.LayerType in caffe.proto
    assert len({n for n, _ in V1_TYPES.values()}) == len({t for _, t in V1_TYPES.values()}) == 40


@pytest.mark.parametrize("text,line,col,words", [
    ("name: 'n'\nlayers {\n  name: 'conv9'\n  type: CONVOLUTON\n}\n", 4, 3, ["conv9", "CONVOLUTON"]),
    ("layers {\n  name: 'c'\n   type: 99\n}\n", 3, 4, ["'c'", "99"]),
    ("layers { name: 'q' type: \"Convolution\" }", 1, 20, ["'q'", "enum"]),
    ("layer { name: 'a' type: 'ReLU' }\n\n  layers { name: 'b' type: RELU }\n", 3, 3, ["mixes", "1:1"]),
    ("layers { name: 'a' type: RELU\n kernel_size: 3 }", 2, 2, ["kernel_size"]),
    ("input: 'data'\ninput_dim: 1\ninput_dim: 3\ninput_dim: 5\nlayer { name: 'r' type: 'ReLU' }", 4, 1,
     ["four per input"]),
    ("input: 'a'\ninput: 'b'\ninput_shape { dim: 1 }\nlayer { name: 'r' type: 'ReLU' }", 3, 1,
     ["one shape per input"]),
    ("layers { name: 'a' type: RELU blob_share_mode: LOOSE }", 1, 31, ["blob_share_mode"]),
    ("layers {\n layer { name: 'c' type: 'convolve' } }", 2, 20, ["'c'", "convolve"]),
    ("name: 'n'\nlayers: 4\n", 2, 1, ["'layers' must be a message"]),
])
def test_errors_name_line_and_column(text, line, col, words):
    with pytest.raises(PrototxtError) as info:
        up(text)
    assert (info.value.line, info.value.col) == (line, col), str(info.value)
    for word in words:
        assert word in str(info.value)


def test_error_names_the_file(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text("layers {\n  name: 'fc9'\n  type: FULLY_CONNECTED\n}\n")
    with pytest.raises(PrototxtError, match=r"bad\.prototxt:3:3: .*'fc9'.*FULLY_CONNECTED"):
        NetSpec.from_prototxt(str(path))


# --- per-layer V1 fields -----------------------------------------------------------------------
def test_blobs_lr_weight_decay_names_and_share_mode_become_param_specs():
    text = """input: 'x' input_dim: 1 input_dim: 2 input_dim: 1 input_dim: 1
              layers { name: 'fc' type: INNER_PRODUCT bottom: 'x' top: 'fc'
                 param: 'w' param: 'b' blob_share_mode: PERMISSIVE
                 blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
                 inner_product_param { num_output: 3 } loss_weight: 0.5
                 include { phase: TRAIN } }"""
    layer = layers(up(text))[1]
    want = prototxt.loads("""name: 'fc' type: 'InnerProduct' bottom: 'x' top: 'fc' loss_weight: 0.5
        param { name: 'w' share_mode: PERMISSIVE lr_mult: 1 decay_mult: 1 }
        param { name: 'b' lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 3 } include { phase: TRAIN }""")
    assert layer == want, prototxt.dumps(layer)
    assert NetSpec.from_message(prototxt.loads(text)).layer("fc").lr_mults() == [(1.0, 1.0), (2.0, 0.0)]


def test_uneven_blobs_lr_and_weight_decay():
    """The i-th of each list goes to the i-th ParamSpec, as UpgradeV1LayerParameter."""
    layer = layers(up("layers { name: 'c' type: CONVOLUTION blobs_lr: 0 blob_share_mode: 1 "
                      "weight_decay: 2 weight_decay: 3 }"))[0]
    specs = [dict(s.fields) for s in layer.getall("param")]
    assert specs == [{"share_mode": "PERMISSIVE", "lr_mult": 0, "decay_mult": 2}, {"decay_mult": 3}]


def test_v1_data_layer_moves_transformation_fields():
    layer = layers(up("layers { name: 'd' type: DATA top: 'data' data_param { source: 's' scale: 0.5 "
                      "mean_file: 'm' crop_size: 7 mirror: true batch_size: 2 } transform_param { scale: 9 } }"))[0]
    assert layer.msg("data_param") == prototxt.loads("source: 's' batch_size: 2")
    assert layer.msg("transform_param") == prototxt.loads("scale: 0.5 mean_file: 'm' crop_size: 7 mirror: true")


# --- net-level inputs ------------------------------------------------------------------------
@pytest.mark.parametrize("head", [
    "input: 'a' input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 9 "
    "input: 'b' input_dim: 1 input_dim: 1 input_dim: 8 input_dim: 9",
    "input: 'a' input_shape { dim: 1 dim: 3 dim: 8 dim: 9 } input: 'b' input_shape { dim: 1 dim: 1 dim: 8 dim: 9 }",
    "input: 'a' input: 'b' input_shape { dim: 1 dim: 3 dim: 8 dim: 9 } input_shape { dim: 1 dim: 1 dim: 8 dim: 9 } "
    "input_dim: 5",  # shapes win over dims, as in Caffe
])
@pytest.mark.parametrize("body", ["layer { name: 'c' type: 'Concat' bottom: 'a' bottom: 'b' top: 'c' }",
                                  "layers { name: 'c' type: CONCAT bottom: 'a' bottom: 'b' top: 'c' }"])
def test_legacy_inputs_become_a_leading_input_layer(head, body):
    net = up(f"name: 'n' force_backward: true {head} {body}")
    assert net.keys() == ["name", "force_backward", "layer"]
    first, concat = layers(net)
    assert first == prototxt.loads("name: 'input' type: 'Input' top: 'a' top: 'b' input_param { "
                                   "shape { dim: 1 dim: 3 dim: 8 dim: 9 } shape { dim: 1 dim: 1 dim: 8 dim: 9 } }")
    assert concat.get("type") == "Concat"
    spec = NetSpec.from_message(prototxt.loads(f"{head} {body}"))
    assert [l.name for l in spec.layers] == ["input", "c"]


def test_bare_input_is_stripped():
    """A legacy `input` without shape (old caffemodels) is simply removed, as in Caffe."""
    net = up("name: 'n' input: 'data' layer { name: 'r' type: 'ReLU' }")
    assert net == prototxt.loads("name: 'n' layer { name: 'r' type: 'ReLU' }")


# --- V0 and BatchNorm ---------------------------------------------------------------------------
def test_v0_net_with_padding_layer():
    net = up("""name: 'old' input: 'data' input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 9
      layers { layer { name: 'pad1' type: 'padding' pad: 2 } bottom: 'data' top: 'pad1' }
      layers { layer { name: 'conv1' type: 'conv' num_output: 4 kernelsize: 3 stride: 2 biasterm: false
                       blobs_lr: 1 blobs_lr: 2 weight_filler { type: 'gaussian' std: 0.01 } }
               bottom: 'pad1' top: 'conv1' }
      layers { layer { name: 'pool1' type: 'pool' pool: AVE kernelsize: 3 stride: 2 } bottom: 'conv1' top: 'pool1' }
      layers { layer { name: 'd' type: 'data' source: 'db' batchsize: 5 meanfile: 'm' cropsize: 7 } top: 'x' }""")
    want = prototxt.loads("""name: 'old'
      layer { name: 'input' type: 'Input' top: 'data' input_param { shape { dim: 1 dim: 3 dim: 9 dim: 9 } } }
      layer { name: 'conv1' type: 'Convolution' bottom: 'data' top: 'conv1' param { lr_mult: 1 } param { lr_mult: 2 }
              convolution_param { num_output: 4 bias_term: false pad: 2 kernel_size: 3 stride: 2
                                  weight_filler { type: 'gaussian' std: 0.01 } } }
      layer { name: 'pool1' type: 'Pooling' bottom: 'conv1' top: 'pool1'
              pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
      layer { name: 'd' type: 'Data' top: 'x' data_param { source: 'db' batch_size: 5 }
              transform_param { mean_file: 'm' crop_size: 7 } }""")
    assert net == want, prototxt.dumps(net)


def test_v0_field_foreign_to_its_type_warns_and_is_dropped():
    with pytest.warns(UserWarning, match="num_output"):
        net = up("input: 'x' layers { layer { name: 'r' type: 'relu' num_output: 3 } bottom: 'x' top: 'x' }")
    assert layers(net)[0] == prototxt.loads("name: 'r' type: 'ReLU' bottom: 'x' top: 'x'")


def test_old_batchnorm_params_are_frozen():
    text = "layer { name: 'bn' type: 'BatchNorm' param { lr_mult: 1 } param { lr_mult: 1 decay_mult: 3 } param {} }"
    bn = layers(up(text))[0]
    assert [(p.get("lr_mult"), p.get("decay_mult")) for p in bn.getall("param")] == [(0.0, 0.0)] * 3
    two = prototxt.loads(text.replace("param {} ", ""))
    assert upgrade_net(two) is two


# --- the command-line tool --------------------------------------------------------------------
def test_cli_writes_v2_text_that_parses_back_equal(tmp_path):
    out = tmp_path / "net.prototxt"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, str(ROOT / "tools/upgrade_prototxt.py"), str(VGG / "net_v1.prototxt"),
                    str(out)], check=True, env=env, capture_output=True, text=True)
    assert "layers" not in prototxt.load(out).keys()
    assert NetSpec.from_prototxt(str(out)) == NetSpec.from_prototxt(str(VGG / "net.prototxt"))


def test_cli_reports_a_bad_file(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layers { name: 'x' type: NOPE }\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, str(ROOT / "tools/upgrade_prototxt.py"), str(bad),
                          str(tmp_path / "out.prototxt")], env=env, capture_output=True, text=True)
    assert run.returncode != 0 and "bad.prototxt:1:20" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out.prototxt").exists()
