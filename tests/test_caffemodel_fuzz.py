"""Broken .caffemodel files: every input either reads or raises one CaffemodelError, never anything else."""

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcn_caffe_repro.caffe import caffemodel, wire
from fcn_caffe_repro.caffe.wire import I32, I64
from fcn_caffe_repro.errors import CaffemodelError

REF = Path(__file__).parent / "fixtures" / "caffe-ref"
FUZZ = settings(derandomize=True, deadline=1000, max_examples=1200, database=None)


def msg(number, *parts):
    body = b"".join(parts)
    return wire.encode_len_header(number, len(body)) + body


def written_model(tmp_dir):
    path = tmp_dir / "small.caffemodel"
    caffemodel.write(path, {"conv": ("Convolution", [np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2),
                                                     np.array([0.5, -1], np.float32)]),
                            "dbl": ("Scale", [np.array([1.0, 2.0, 3.0])])}, name="small")
    return path.read_bytes()


def v1_model():
    blob = (b"".join(wire.encode_varint_field(k, v) for k, v in ((1, 1), (2, 1), (3, 2), (4, 2)))
            + b"".join(wire.encode_tag(5, I32) + struct.pack("<f", v) for v in range(4)))
    return (wire.encode_string(1, "v1") + msg(2, wire.encode_string(4, "fc"), wire.encode_varint_field(5, 14),
                                              msg(6, blob), msg(6, blob))
            + msg(2, wire.encode_string(4, "relu"), wire.encode_varint_field(5, 18)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models")
    return {"written": written_model(tmp), "v1": v1_model(),
            "caffe": (REF / "layers" / "conv_basic" / "weights.caffemodel").read_bytes()}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "x.caffemodel"


def read_or_error(path, data):
    """Read data from a file; return the layers or the CaffemodelError (anything else fails the test)."""
    path.write_bytes(data)
    try:
        layers = caffemodel.read_typed(path)
    except CaffemodelError as exc:
        assert exc.file == str(path) and exc.reason
        assert exc.offset is None or 0 <= exc.offset <= len(data)
        return exc
    total = sum(b.size * b.itemsize for _, blobs in layers.values() for b in blobs)
    assert total <= len(data)  # nothing is invented: every element came from the file
    return layers


def top_level_layers(data):
    """(end offset, layer name) of each top-level layer field of a valid file."""
    r = wire.WireReader(memoryview(data))
    out = []
    for f in r.fields(0, len(data)):
        if f.number in (2, 100):
            name_field = 1 if f.number == 100 else 4
            names = [r.string(g, "name") for g in r.fields(f.start, f.stop) if g.number == name_field]
            out.append((f.stop, names[-1]))
    return out


@pytest.mark.parametrize("which", ["written", "v1", "caffe"])
def test_every_truncation_point_raises_or_reads_whole_layers(models, scratch, which):
    data = models[which]
    full = read_or_error(scratch, data)
    ends = top_level_layers(data)
    for cut in range(len(data)):
        got = read_or_error(scratch, data[:cut])
        complete = [name for end, name in ends if end <= cut]
        if cut in {end for end, _ in ends}:  # a cut between layers is a valid, shorter file
            assert list(got) == [n for n in complete if n in full]
            for name in got:
                for a, b in zip(got[name][1], full[name][1], strict=True):
                    np.testing.assert_array_equal(a, b)
        else:
            assert isinstance(got, CaffemodelError), f"cut at {cut} was accepted"


@FUZZ
@given(which=st.sampled_from(["written", "v1", "caffe"]),
       edits=st.lists(st.tuples(st.sampled_from(["replace", "insert", "delete"]),
                                st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4))
def test_random_mutations_read_or_raise(models, scratch, which, edits):
    data = bytearray(models[which])
    for op, where, byte in edits:
        at = int(where * len(data))
        if op == "replace" and data:
            data[at] = byte
        elif op == "insert":
            data.insert(at, byte)
        elif data:
            del data[at]
    read_or_error(scratch, bytes(data))


# One BlobProto built from random fields, with what Caffe would make of it computed independently.
blob_fields = st.one_of(
    st.tuples(st.just("shape"), st.lists(st.integers(-1, 3), max_size=3), st.booleans()),
    st.tuples(st.just("legacy"), st.integers(1, 4), st.integers(-1, 3)),
    st.tuples(st.just("data"), st.lists(st.floats(width=32, allow_nan=False), max_size=6), st.booleans()),
    st.tuples(st.just("double"), st.lists(st.floats(allow_nan=False), max_size=6), st.booleans()),
    st.tuples(st.just("unknown"), st.integers(10, 40), st.sampled_from([0, 1, 2, 5])),
)


def encode_blob_field(field):
    kind, a, b = field
    if kind == "shape":
        dims = wire.encode_packed_varints(1, a) if b else b"".join(wire.encode_varint_field(1, d) for d in a)
        return msg(7, dims)
    if kind == "legacy":
        return wire.encode_varint_field(a, b)
    if kind in ("data", "double"):
        number, fmt, tag = (5, "<f", I32) if kind == "data" else (8, "<d", I64)
        if b:
            return msg(number, b"".join(struct.pack(fmt, v) for v in a))
        return b"".join(wire.encode_tag(number, tag) + struct.pack(fmt, v) for v in a)
    return {0: wire.encode_varint_field(a, 7), 1: wire.encode_tag(a, I64) + bytes(8),
            2: msg(a, b"\x01\x02"), 5: wire.encode_tag(a, I32) + bytes(4)}[b]


def expected_blob(fields):
    """Blob::FromProto on the merged message, or None where Caffe would refuse it."""
    legacy, dims, floats, doubles = {}, [], [], []
    for kind, a, b in fields:
        if kind == "shape":
            dims += a
        elif kind == "legacy":
            legacy[a] = b
        elif kind == "data":
            floats += a
        elif kind == "double":
            doubles += a
    shape = [legacy.get(k, 0) for k in (1, 2, 3, 4)] if legacy else dims
    values = np.array(doubles, np.float64) if doubles else np.array(floats, np.float32)
    if any(d < 0 for d in shape) or values.size != int(np.prod(shape, dtype=np.int64)):
        return None
    return values.reshape(shape)


@FUZZ
@given(fields=st.lists(blob_fields, max_size=6))
def test_random_blob_messages_follow_caffe(scratch, fields):
    blob = b"".join(encode_blob_field(f) for f in fields)
    got = read_or_error(scratch, msg(100, wire.encode_string(1, "b"), msg(7, blob)))
    want = expected_blob(fields)
    if want is None:
        assert isinstance(got, CaffemodelError) and got.layer == "b"
    else:
        assert not isinstance(got, CaffemodelError), got
        (array,) = got["b"][1]
        assert array.dtype == want.dtype and array.shape == want.shape
        np.testing.assert_array_equal(array, want)


# --- explicit broken files -------------------------------------------------------------------------

@pytest.mark.parametrize("data, message, offset", [
    (b"", "empty file", 0),
    (b"\x80" * 11, "varint longer than 10 bytes", 0),
    (wire.encode_string(1, "n") + b"\xa2\x06" + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes", 5),
    (wire.encode_string(1, "n") + b"\xa2\x06\x10" + b"\x00" * 4, "runs 12 bytes past the end", 3),
    (wire.encode_string(1, "n") + b"\xa2\x06", "truncated varint", 5),
    (msg(100, wire.encode_tag(5, I32) + b"\x00\x00"), "runs 2 bytes past the end", 3),
    (b"\x0b\x0c", "groups", 0),
    (b"\x0e", "invalid wire type 6", 0),
    (b"\x02\x00", "invalid field number 0", 0),
])
def test_broken_framing_names_the_offset(scratch, data, message, offset):
    got = read_or_error(scratch, data)
    assert isinstance(got, CaffemodelError) and message in got.reason and got.offset == offset


def test_a_text_prototxt_is_recognised(scratch):
    got = read_or_error(scratch, (REF / "nets" / "voc-fcn8s" / "net.prototxt").read_bytes())
    assert isinstance(got, CaffemodelError) and "looks like text" in got.reason
