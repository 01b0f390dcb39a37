"""Crop offsets come out of the graph (coord_map), and misaligned crops are clear errors."""
import pytest

from conftest import REFERENCE
from fcn_caffe_repro import nets
from fcn_caffe_repro.caffe.coord_map import crop_params_in_spec
from fcn_caffe_repro.caffe.spec import L, NetBuilder, NetSpec, crop
from fcn_caffe_repro.errors import NetError

ORIGINALS = REFERENCE / "prototxt"
# The offsets the paper's nets use (pad 100 on conv1_1 / conv1, Caffe's deconvolution geometry).
OFFSETS = {
    "voc-fcn32s": {"score": 19},
    "voc-fcn16s": {"score_pool4c": 5, "score": 27},
    "voc-fcn8s": {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
    "voc-fcn8s-atonce": {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
    "voc-fcn-alexnet": {"score": 18},
    "pascalcontext-fcn16s": {"score_pool4c": 5, "score": 27},
    "nyud-fcn32s-color-hha": {"score": 19},
    "siftflow-fcn8s": {"score_pool4_semc": 5, "score_pool3_semc": 9, "score_sem": 31,
                       "score_pool4_geoc": 5, "score_pool3_geoc": 9, "score_geo": 31},
}


def _crops(spec):
    return {l.name: (l.params.get_int("axis"), l.params.getall_int("offset"))
            for l in spec.layers if l.type == "Crop"}


@pytest.mark.parametrize("name", sorted(OFFSETS))
def test_built_nets_get_the_papers_offsets(name):
    for phase in ("train", "val", "deploy"):
        crops = _crops(nets.net_spec(name, phase))
        assert crops == {layer: (2, [off]) for layer, off in OFFSETS[name].items()}


@pytest.mark.parametrize("name", sorted(OFFSETS))
def test_coord_map_on_original_prototxts(name):
    spec = NetSpec.from_prototxt(str(ORIGINALS / name / nets.phase_files(name)["val"]) + ".prototxt")
    found = {l.name: crop_params_in_spec(spec, l) for l in spec.layers if l.type == "Crop"}
    assert found == {layer: (2, [off]) for layer, off in OFFSETS[name].items()}
    assert found == _crops(spec)  # what the release wrote


def test_coord_map_agrees_with_every_original_crop():
    checked = 0
    for path in ORIGINALS.glob("*/*.prototxt"):
        if path.stem == "solver":
            continue
        spec = NetSpec.from_prototxt(str(path))
        for l in spec.layers:
            if l.type == "Crop":
                assert crop_params_in_spec(spec, l) == _crops(spec)[l.name], f"{path}: {l.name}"
                checked += 1
    assert checked > 60


def test_offsets_follow_the_graph_not_a_table():
    """Changing conv1_1's padding moves every offset as coord_map says (pad 100 -> 96: -4/-4/-4)."""
    n = NetBuilder()
    n.data = L.Input(shape=dict(dim=[1, 3, 64, 64]))
    n.conv = L.Convolution(n.data, kernel_size=3, pad=96, num_output=2)
    n.pool = L.Pooling(n.conv, pool="MAX", kernel_size=2, stride=2)
    n.up = L.Deconvolution(n.pool, convolution_param=dict(num_output=2, kernel_size=4, stride=2,
                                                          bias_term=False))
    n.score = crop(n.up, n.data)
    # conv: x_in = x - 95; pool: x_in = 2x + 1/2; deconv: x_in = (x - 3/2) / 2 -> offset 95 + 1 = 96
    assert _crops(n.to_spec()) == {"score": (2, [96])}


def _graph():
    n = NetBuilder()
    n.data = L.Input(shape=dict(dim=[1, 1, 16, 16]))
    n.strided = L.Convolution(n.data, kernel_size=3, stride=2, num_output=1)
    n.padded = L.Convolution(n.data, kernel_size=1, pad=5, num_output=1)
    n.even = L.Convolution(n.data, kernel_size=2, num_output=1)
    n.other = L.Input(shape=dict(dim=[1, 1, 16, 16]))
    return n


def test_padded_top_crops_by_its_padding():
    n = _graph()
    n.c = crop(n.padded, n.data)
    assert _crops(n.to_spec())["c"] == (2, [5])


@pytest.mark.parametrize("src,dst,message", [
    ("strided", "data", "scale mismatch"),       # stride-2 top against a stride-1 top
    ("data", "strided", "scale mismatch"),
    ("data", "padded", "negative offset"),       # the smaller top cannot be cropped to the larger
    ("data", "even", "non-integer offset"),      # a 2x2 kernel shifts by half a pixel
    ("data", "other", "could not relate"),       # no common ancestor
])
def test_misaligned_crop_is_a_clear_error(src, dst, message):
    n = _graph()
    with pytest.raises(NetError, match=message):
        crop(n[src], n[dst])


def test_misaligned_crop_in_a_prototxt_names_the_layer():
    text = """
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
    layer { name: "down" type: "Pooling" bottom: "data" top: "down"
            pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    layer { name: "bad_crop" type: "Crop" bottom: "down" bottom: "data" top: "out"
            crop_param { axis: 2 offset: 0 } }
    """
    spec = NetSpec.from_prototxt(text)
    with pytest.raises(NetError, match=r"bad_crop.*scale mismatch"):
        crop_params_in_spec(spec, spec.layer("bad_crop"))
