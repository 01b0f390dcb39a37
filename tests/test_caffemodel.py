"""caffemodel read/write against the files real Caffe wrote, hand-built wire encodings and round trips."""

import gc
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from fcn_caffe_repro.caffe import caffemodel, wire
from fcn_caffe_repro.caffe.wire import I32, I64
from fcn_caffe_repro.errors import CaffemodelError

REF = Path(__file__).parent / "fixtures" / "caffe-ref"
ALL_MODELS = sorted(REF.rglob("*.caffemodel"))
V2_MODELS = [p for p in ALL_MODELS if "weights_v1" not in p.name]
V1_MODEL = REF / "v1-vgg16-transplant" / "vgg16" / "weights_v1.caffemodel"
LAYER_CASES = sorted(p.parent for p in (REF / "layers").glob("*/weights.caffemodel"))
NETS = sorted(p.parent for p in (REF / "nets").glob("*/weights.caffemodel"))


# --- hand-built wire encodings -------------------------------------------------------------------

def msg(number, *parts):
    body = b"".join(parts)
    return wire.encode_len_header(number, len(body)) + body


def vint(number, value):
    return wire.encode_varint_field(number, value)


def packed_f32(number, values):
    return msg(number, np.asarray(values, "<f4").tobytes())


def unpacked_f32(number, values):
    return b"".join(wire.encode_tag(number, I32) + struct.pack("<f", v) for v in values)


def unpacked_f64(number, values):
    return b"".join(wire.encode_tag(number, I64) + struct.pack("<d", v) for v in values)


def shape(*dims):
    return msg(7, wire.encode_packed_varints(1, dims))


def layer(name, *blobs, ltype="X"):
    return msg(100, wire.encode_string(1, name), wire.encode_string(2, ltype), *[msg(7, b) for b in blobs])


def load(tmp_path, data, name="hand.caffemodel"):
    path = tmp_path / name
    path.write_bytes(data)
    return caffemodel.read_typed(path)


# --- the fixtures Caffe wrote --------------------------------------------------------------------

@pytest.mark.parametrize("path", ALL_MODELS, ids=lambda p: str(p.relative_to(REF)))
def test_every_fixture_reads_as_zero_copy_views(path):
    layers = caffemodel.read(path)
    for name, blobs in layers.items():
        assert isinstance(name, str) and blobs
        for blob in blobs:
            assert blob.dtype == np.float32 and np.isfinite(blob).all()
            assert not blob.flags.owndata and blob.flags.writeable  # a view of the private map
    if not layers:
        return
    name, (first, *_) = next(iter(layers.items()))
    expected = first.copy()
    del layers
    gc.collect()  # the map outlives read() and every other reference to it
    np.testing.assert_array_equal(first, expected)
    first[...] = 0  # copy-on-write: the file is untouched
    np.testing.assert_array_equal(caffemodel.read(path)[name][0], expected)


@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda p: p.name)
def test_layer_case_blobs_equal_caffe_params(case):
    ref = np.load(case / "blobs.npz")
    params = [ref[k] for k in ("param0", "param1") if k in ref]
    layers = caffemodel.read_typed(case / "weights.caffemodel")
    if not params:
        assert layers == {}
        return
    assert list(layers) == [case.name]
    _, blobs = layers[case.name]
    assert len(blobs) == len(params)
    for blob, param in zip(blobs, params):
        assert blob.dtype == param.dtype and blob.shape == param.shape
        np.testing.assert_array_equal(blob, param)


def prototxt_layers(text):
    """Loose regex view of a V2 prototxt: name -> (type, bottoms, num_output, group, bias_term)."""
    out = {}
    for block in re.split(r"\n(?=layer \{)", text):
        name = re.search(r'^\s*name:\s*"([^"]+)"', block, re.M)
        if not block.startswith("layer") or not name:
            continue
        num = re.search(r"num_output:\s*(\d+)", block)
        group = re.search(r"group:\s*(\d+)", block)
        out[name.group(1)] = (re.search(r'type:\s*"([^"]+)"', block).group(1),
                              re.findall(r'bottom:\s*"([^"]+)"', block),
                              int(num.group(1)) if num else None,
                              int(group.group(1)) if group else 1,
                              "bias_term: false" not in block)
    return out


@pytest.mark.parametrize("net", NETS, ids=lambda p: p.name)
def test_net_blob_shapes_fit_prototxt_and_activations(net):
    spec = prototxt_layers((net / "net.prototxt").read_text())
    acts = np.load(net / "blobs.npz")
    layers = caffemodel.read_typed(net / "weights.caffemodel")
    learnable = {n for n, (t, *_) in spec.items() if t in ("Convolution", "Deconvolution", "Scale", "InnerProduct")}
    assert set(layers) == learnable
    checked = 0
    for name, (ltype, blobs) in layers.items():
        stype, bottoms, num_output, group, bias = spec[name]
        assert ltype == stype
        if ltype not in ("Convolution", "Deconvolution"):
            continue
        weight, channels = blobs[0], acts[bottoms[0]].shape[1]
        assert weight.ndim == 4 and len(blobs) == 1 + bias
        if ltype == "Convolution":
            assert weight.shape[:2] == (num_output, channels // group)
        else:
            assert weight.shape[:2] == (channels, num_output // group)
        if bias:
            assert blobs[1].shape == (num_output,)
        checked += 1
    assert checked >= 8


def test_v1_file_has_legacy_shapes_and_feeds_the_transplant():
    v1 = caffemodel.read_typed(V1_MODEL)
    assert {t for t, _ in v1.values()} == {"Convolution", "InnerProduct"}
    for name, (ltype, (weight, bias)) in v1.items():
        assert bias.shape == (1, 1, 1, weight.shape[0] if ltype == "Convolution" else weight.shape[2])
        if ltype == "InnerProduct":
            assert weight.shape[:2] == (1, 1)
        else:
            assert weight.ndim == 4 and weight.shape[0] > 1
    assert v1["fc8"][1][0].shape[2] == 1000
    # Caffe's surgery.transplant copied these same values into fcn32s (fc6/fc7 by flat copy).
    after = caffemodel.read(REF / "fcn32s-transplant" / "weights_after_transplant.caffemodel")
    for name, (_, blobs) in v1.items():
        if name == "fc8":
            assert name not in after
            continue
        for src, dst in zip(blobs, after[name]):
            np.testing.assert_array_equal(src.reshape(-1), dst.reshape(-1))


# --- round trips -----------------------------------------------------------------------------------

def test_round_trip_float32_and_float64(tmp_path):
    rng = np.random.default_rng(0)
    layers = {
        "conv": ("Convolution", [rng.standard_normal((4, 3, 3, 3), np.float32), rng.standard_normal(4, np.float32)]),
        "dbl": ("Scale", [rng.standard_normal((2, 5)), np.array([1.5, -2.0])]),
        "odd": ("", [np.float32(3.25) * np.ones((), np.float32), np.zeros((0, 3), np.float32),
                     rng.standard_normal((1, 2, 1, 3, 2), np.float32), np.asfortranarray(np.ones((3, 2)))]),
        "untyped": [np.arange(6, dtype=">f4").reshape(2, 3)],  # big-endian input is written little-endian
    }
    path = tmp_path / "rt.caffemodel"
    caffemodel.write(path, layers, name="net")
    back = caffemodel.read_typed(path)
    assert list(back) == list(layers)
    assert back["untyped"][0] == ""  # no type written
    for name, value in layers.items():
        blobs = value[1] if isinstance(value, tuple) else value
        assert len(back[name][1]) == len(blobs)
        for got, want in zip(back[name][1], blobs):
            assert got.dtype == want.dtype.newbyteorder("=") and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
    assert back["conv"][0] == "Convolution"


def test_write_accepts_torch_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    weight = torch.randn(3, 2, requires_grad=True)
    caffemodel.write(tmp_path / "t.caffemodel", {"ip": [weight, torch.zeros(3, dtype=torch.float64)]})
    back = caffemodel.read(tmp_path / "t.caffemodel")["ip"]
    np.testing.assert_array_equal(back[0], weight.detach().numpy())
    assert back[1].dtype == np.float64


def stripped(data):
    """A Caffe file with every field but the net name and layer name/type/blobs removed."""
    r = wire.WireReader(memoryview(data))
    out = b""
    for f in r.fields(0, len(data)):
        if f.number == 1:
            out += data[f.offset:f.stop]
        elif f.number == 100:
            kept = [data[g.offset:g.stop] for g in r.fields(f.start, f.stop) if g.number in (1, 2, 7)]
            if any(g.number == 7 for g in r.fields(f.start, f.stop)):
                out += msg(100, *kept)
    return out


@pytest.mark.parametrize("path", V2_MODELS, ids=lambda p: str(p.relative_to(REF)))
def test_rewriting_a_caffe_file_reproduces_its_bytes(path, tmp_path):
    data = path.read_bytes()
    r = wire.WireReader(memoryview(data))
    net_name = [r.string(f, "name") for f in r.fields(0, len(data)) if f.number == 1][-1]
    out = tmp_path / "re.caffemodel"
    caffemodel.write(out, caffemodel.read_typed(path), name=net_name)
    assert out.read_bytes() == stripped(data)


def test_rewriting_the_v1_file_reads_back_equal(tmp_path):
    v1 = caffemodel.read_typed(V1_MODEL)
    caffemodel.write(tmp_path / "v2.caffemodel", v1)
    back = caffemodel.read_typed(tmp_path / "v2.caffemodel")
    assert list(back) == list(v1)
    for name, (ltype, blobs) in v1.items():
        assert back[name][0] == ltype
        for got, want in zip(back[name][1], blobs, strict=True):
            assert got.shape == want.shape
            np.testing.assert_array_equal(got, want)


def test_write_is_atomic_and_validates_first(tmp_path):
    path = tmp_path / "m.caffemodel"
    caffemodel.write(path, {"a": [np.ones(2, np.float32)]})
    before = path.read_bytes()
    with pytest.raises(CaffemodelError, match="layer 'b'.*int64"):
        caffemodel.write(path, {"a": [np.ones(2, np.float32)], "b": [np.ones(2, np.int64)]})

    def fail(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        caffemodel.write(path, {"a": [np.zeros(2, np.float32)]}, progress=fail)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.caffemodel"]


# --- hand-built encodings: what Caffe's protobuf parser accepts -------------------------------------

def test_unpacked_float_data_in_runs_with_an_overlong_tag(tmp_path):
    values = np.arange(300, dtype=np.float32) / 7
    blob = (shape(3, 100) + unpacked_f32(5, values[:150]) + vint(99, 1)  # unknown field interrupts the run
            + b"\xad\x00" + struct.pack("<f", values[150])  # tag of field 5 as an over-long varint
            + unpacked_f32(5, values[151:]))
    got = load(tmp_path, wire.encode_string(1, "n") + layer("ip", blob))["ip"][1][0]
    assert got.shape == (3, 100) and got.dtype == np.float32
    np.testing.assert_array_equal(got.reshape(-1), values)


def test_double_data_packed_unpacked_and_preferred_over_data(tmp_path):
    values = np.linspace(-1, 1, 6)
    packed = shape(2, 3) + msg(8, values[:2].tobytes()) + unpacked_f64(8, values[2:])
    both = shape(2) + packed_f32(5, [9, 9, 9]) + msg(8, values[:2].tobytes())  # data count ignored
    got = load(tmp_path, layer("d", packed, both))["d"][1]
    assert got[0].dtype == np.float64
    np.testing.assert_array_equal(got[0], values.reshape(2, 3))
    np.testing.assert_array_equal(got[1], values[:2])


def test_repeated_fields_concatenate_and_scalars_take_the_last(tmp_path):
    blobs = [
        shape(2) + shape(3) + packed_f32(5, np.arange(6)),  # a message field given twice is merged
        msg(7, vint(1, 2), wire.encode_packed_varints(1, [3])) + packed_f32(5, np.arange(4))
        + packed_f32(5, np.arange(4, 6)),  # unpacked and packed dims; data in two packed runs
        vint(1, 5) + vint(1, 1) + vint(2, 1) + vint(3, 2) + vint(4, 3) + packed_f32(5, np.arange(6)),
    ]
    renamed = msg(100, wire.encode_string(1, "x"), wire.encode_string(1, "second"), wire.encode_string(2, "A"),
                  wire.encode_string(2, "B"), msg(7, shape(1) + packed_f32(5, [1])))
    data = layer("first", *blobs) + renamed
    got = load(tmp_path, data)
    assert [b.shape for b in got["first"][1]] == [(2, 3), (2, 3), (1, 1, 2, 3)]
    for b in got["first"][1]:
        np.testing.assert_array_equal(b.reshape(-1), np.arange(6))
    assert got["second"][0] == "B" and "x" not in got


def test_unknown_fields_of_every_wire_type_are_skipped(tmp_path):
    unknown = (vint(60, 2**63) + wire.encode_tag(61, I64) + b"\x00" * 8 + msg(62, b"\xff\xff")
               + wire.encode_tag(63, I32) + b"\x00" * 4)
    blob = unknown + msg(7, unknown + wire.encode_packed_varints(1, [2])) + unknown + packed_f32(5, [1, 2])
    lay = msg(100, unknown, wire.encode_string(1, "u"), unknown, msg(7, blob), unknown, vint(10, 1))
    got = load(tmp_path, unknown + wire.encode_string(1, "net") + lay + unknown + msg(8, b""))
    np.testing.assert_array_equal(got["u"][1][0], [1, 2])


def test_v1_layers_with_enum_types_and_blobs_before_name(tmp_path):
    bias = vint(1, 1) + vint(2, 1) + vint(3, 1) + vint(4, 3) + packed_f32(5, [1, 2, 3])
    weight = vint(1, 1) + vint(2, 1) + vint(3, 3) + vint(4, 2) + unpacked_f32(5, range(6))
    v1 = (msg(2, msg(6, weight), msg(6, bias), wire.encode_string(4, "fc"), vint(5, 14))
          + msg(2, wire.encode_string(4, "relu"), vint(5, 18))
          + msg(2, wire.encode_string(4, "odd"), vint(5, 999), msg(6, shape(1) + packed_f32(5, [7]))))
    got = load(tmp_path, wire.encode_string(1, "old") + v1)
    assert list(got) == ["fc", "odd"]
    assert got["fc"][0] == "InnerProduct" and got["odd"][0] == ""
    assert [b.shape for b in got["fc"][1]] == [(1, 1, 3, 2), (1, 1, 1, 3)]
    np.testing.assert_array_equal(got["fc"][1][0].reshape(-1), np.arange(6))


def test_legacy_dims_default_to_zero_as_in_caffe(tmp_path):
    blob = vint(4, 3) + packed_f32(5, [1, 2, 3])  # only width: Caffe's shape is (0, 0, 0, 3)
    with pytest.raises(CaffemodelError, match=r"3 elements but its shape \(0, 0, 0, 3\)") as err:
        load(tmp_path, layer("w", blob))
    assert err.value.layer == "w" and err.value.offset is not None
    assert load(tmp_path, layer("e", vint(4, 3)))["e"][1][0].shape == (0, 0, 0, 3)


def test_layers_of_the_same_name_later_wins_and_blobless_layers_are_left_out(tmp_path):
    data = (layer("a", shape(1) + packed_f32(5, [1])) + layer("b", shape(1) + packed_f32(5, [2]))
            + layer("a", shape(2) + packed_f32(5, [3, 4])) + layer("relu"))
    got = {name: blobs for name, (_, blobs) in load(tmp_path, data).items()}
    assert list(got) == ["a", "b"]
    np.testing.assert_array_equal(got["a"][0], [3, 4])


def test_blob_errors_name_a_layer_whose_name_comes_after_its_blobs(tmp_path):
    data = msg(100, msg(7, shape(3) + packed_f32(5, [1])), wire.encode_string(1, "late"))
    with pytest.raises(CaffemodelError, match="layer 'late'"):
        load(tmp_path, data)


@pytest.mark.parametrize("data, message", [
    (layer("a", shape(1) + packed_f32(5, [1])) + msg(2, wire.encode_string(4, "b")), "both V2 'layer' and V1"),
    (msg(2, msg(1, wire.encode_string(1, "conv"))), "V0 layer"),
    (wire.encode_string(1, "net"), "no layers"),
    (layer("a", shape(2) + packed_f32(5, [1])), r"1 elements but its shape \(2,\) needs 2"),
    (layer("a", shape(-1)), "negative dimension"),
    (layer("a", shape(*[1] * 33) + packed_f32(5, [1])), "33 axes"),
    (layer("a", shape(65536, 65536)), "exceeds Caffe's"),
    (layer("a", msg(5, b"\x00" * 6)), "not a multiple of 4"),
    (msg(100, vint(1, 3)), r"LayerParameter.name \(field 1\) has wire type varint"),
    (layer("a", wire.encode_tag(5, I64) + b"\x00" * 8), r"BlobProto.data \(field 5\) has wire type 64-bit"),
    (layer("a", vint(7, 1)), "BlobProto.shape"),
    (layer("a", msg(1, b"")), "num/channels/height/width"),
    (layer("a", msg(7, wire.encode_tag(1, I32) + b"\x00" * 4)), "BlobShape.dim"),
    (layer("a", wire.encode_tag(9, I32) + b"\x00" * 4), "double_diff"),
    (msg(100, wire.encode_string(1, b"conv\xff")), "UTF-8"),
])
def test_invalid_content_names_the_problem(tmp_path, data, message):
    with pytest.raises(CaffemodelError, match=message) as err:
        load(tmp_path, data)
    assert err.value.file.endswith("hand.caffemodel") and err.value.offset is not None
