"""Read and write binary .caffemodel files (NetParameter) without Caffe or protobuf.

Reading streams over a private memory map of the file: only the NetParameter, LayerParameter and
BlobProto framing is walked in Python (a few thousand fields for VGG); packed float data becomes
`np.frombuffer` views of the map, so reading a 540 MB net copies nothing. The map is
copy-on-write (`mmap.ACCESS_COPY`), so the arrays are writable, writes never reach the file,
and the map stays alive for as long as any array refers to it (array.base -> memoryview -> mmap).
Arrays are copied only where the encoding forces it: unpacked (one tag per element) data, data
split over several runs, and big-endian hosts. Views may be unaligned (data sits at whatever
byte offset the varint headers leave); numpy and torch.from_numpy handle that on x86/ARM64.
Replacing the file (as `write` does, by rename) is safe; truncating it in place while arrays are
alive is not (SIGBUS), as for any memory map.

Semantics follow Caffe (src/caffe/proto/caffe.proto, blob.cpp, net.cpp, upgrade_proto.cpp):
- V2 `NetParameter.layer` (100) and V1 `NetParameter.layers` (2, enum types mapped to the V2 type
  names as UpgradeV1LayerType does). A file with both is refused, as UpgradeV1Net refuses it
  (LOG(FATAL) "inconsistent NetParameter"); V0 layers (V1LayerParameter.layer) are refused too.
- Blob shape as Blob::FromProto: if any of num/channels/height/width is present the shape is the
  4-D (num, channels, height, width) with absent ones at their proto default 0, else shape.dim.
  Non-negative dims, at most 32 axes, at most INT_MAX elements, as Blob::Reshape checks.
- double_data, when present, is the data (as Blob::FromProto); the element count must match.
- Protobuf merging: a later scalar wins; repeated fields (packed or not, in several runs)
  concatenate; a message field given twice is merged, so two `shape` fields concatenate their
  dims (what Caffe's C++ parser does). Unknown fields are skipped by wire type; a field this
  module interprets arriving with the wrong wire type is an error.
- Layers with the same name: the later one's blobs win, as Net::CopyTrainedLayersFrom copies
  every source layer into the first target of that name.
"""

import mmap
import os
import sys

import numpy as np

from ..atomic import atomic_write, open_regular
from ..errors import CaffemodelError
from . import wire
from .proto import V2_TYPE_BY_NUMBER
from .wire import I32, I64, LEN, VARINT, WireReader

# Field numbers (caffe.proto).
NET_NAME, NET_LAYERS_V1, NET_LAYER = 1, 2, 100
LAYER_NAME, LAYER_TYPE, LAYER_BLOBS = 1, 2, 7
V1_V0LAYER, V1_NAME, V1_TYPE, V1_BLOBS = 1, 4, 5, 6
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_DIFF, BLOB_SHAPE, BLOB_DOUBLE_DATA, BLOB_DOUBLE_DIFF = 5, 6, 7, 8, 9
SHAPE_DIM = 1

MAX_BLOB_AXES = 32  # Caffe's kMaxBlobAxes
INT_MAX = 2**31 - 1
_F32, _F64 = np.dtype("<f4"), np.dtype("<f8")
_LEGACY = (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH)


def read(path) -> "dict[str, list[np.ndarray]]":
    """Layer name -> its blobs (float32, or float64 for double_data), in file order.

    Layers without blobs are left out. See the module docstring for the memory-map lifetime.
    """
    return {name: blobs for name, (_, blobs) in read_typed(path).items()}


def read_typed(path) -> "dict[str, tuple[str, list[np.ndarray]]]":
    """Like `read`, with each layer's type: name -> (type, blobs); V1 enum types come as V2 names."""
    with open_regular(path, lambda msg: CaffemodelError(msg, file=str(path))) as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise CaffemodelError("empty file, not a caffemodel", file=str(path), offset=0)
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    buf = memoryview(mapped)
    try:
        return _Parser(buf, str(path)).net()
    except CaffemodelError as exc:
        if _looks_like_text(buf[:512]):
            raise CaffemodelError(exc.reason + " (the file looks like text, e.g. a prototxt, "
                                  "not a binary caffemodel)", exc.file, exc.offset, exc.layer) from None
        raise


def _looks_like_text(head):
    head = bytes(head)
    printable = sum(32 <= b < 127 or b in b"\t\n\r" for b in head)
    return len(head) > 0 and printable >= 0.95 * len(head)


class _Parser:
    """Walks NetParameter -> layers -> BlobProto; element data is never touched element by element."""

    def __init__(self, buf, file):
        self.buf, self.file = buf, file
        self.r = WireReader(buf, file)

    def error(self, message, offset, layer=None):
        return CaffemodelError(message, file=self.file, offset=offset, layer=layer)

    def net(self):
        r, layers, first = self.r, {}, {}
        for f in r.fields(0, len(self.buf)):
            if f.number == NET_NAME:
                r.expect(f, LEN, "NetParameter.name")
            elif f.number in (NET_LAYER, NET_LAYERS_V1):
                kind = "layer" if f.number == NET_LAYER else "layers"
                r.expect(f, LEN, f"NetParameter.{kind}")
                first.setdefault(kind, f.offset)
                if len(first) == 2:
                    raise self.error("the file has both V2 'layer' and V1 'layers' entries; Caffe refuses "
                                     "such a NetParameter (UpgradeV1Net)", f.offset)
                name, ltype, blobs = (self.layer if kind == "layer" else self.layer_v1)(f.start, f.stop)
                if blobs:
                    layers[name] = (ltype, blobs)
        if not first:
            raise self.error("no layers: not a caffemodel (NetParameter without 'layer' or 'layers')", 0)
        return layers

    def layer(self, start, stop):
        """LayerParameter: (name, type, blobs)."""
        return self._layer(start, stop, "LayerParameter", (LAYER_NAME, LAYER_TYPE, LAYER_BLOBS), LEN,
                           lambda f: self.r.string(f, "layer type"))

    def layer_v1(self, start, stop):
        """V1LayerParameter: (name, V2 type name, blobs)."""
        return self._layer(start, stop, "V1LayerParameter", (V1_NAME, V1_TYPE, V1_BLOBS), VARINT,
                           lambda f: V2_TYPE_BY_NUMBER.get(wire.as_int32(f.value), ""))

    def _layer(self, start, stop, message, numbers, type_wire, read_type):
        """(name, type, blobs) of a layer message whose name, type and blobs fields have `numbers`;
        the fields are gathered first so that errors can name the layer."""
        r, name, ltype, blob_fields = self.r, "", "", []
        name_number, type_number, blobs_number = numbers
        for f in r.fields(start, stop):
            if f.number == name_number:
                r.expect(f, LEN, f"{message}.name")
                name = r.string(f, "layer name")
            elif f.number == type_number:
                r.expect(f, type_wire, f"{message}.type")
                ltype = read_type(f)
            elif f.number == blobs_number:
                blob_fields.append(f)
            elif message == "V1LayerParameter" and f.number == V1_V0LAYER:
                raise self.error("V0 layer definition (V1LayerParameter.layer) is not supported; "
                                 "upgrade the file with Caffe's upgrade_net_proto_binary", f.offset)
        for f in blob_fields:
            r.expect(f, LEN, f"{message}.blobs", layer=name)
        return name, ltype, [self.blob(f, name) for f in blob_fields]

    def blob(self, blob_field, layer):
        """BlobProto -> array shaped as Blob::FromProto would shape it."""
        r, buf = self.r, self.buf
        start, end = blob_field.start, blob_field.stop
        legacy, dims, floats, doubles = {}, None, [], []
        pos = start
        while pos < end:
            f = r.field_at(pos, end, layer)
            n = f.number
            if n == BLOB_DATA or n == BLOB_DOUBLE_DATA:
                width, fixed, chunks = (4, I32, floats) if n == BLOB_DATA else (8, I64, doubles)
                dtype = _F32 if n == BLOB_DATA else _F64
                what = "BlobProto.data" if n == BLOB_DATA else "BlobProto.double_data"
                if f.wire_type == LEN:
                    if (f.stop - f.start) % width:
                        raise self.error(f"packed {what} is {f.stop - f.start} bytes, not a multiple of {width}",
                                         f.offset, layer)
                    chunks.append(np.frombuffer(buf, dtype, (f.stop - f.start) // width, f.start))
                elif f.wire_type == fixed:
                    values, pos = self._unpacked_run(pos, end, f, dtype)
                    chunks.append(values)
                    continue
                else:
                    r.expect(f, LEN, what, layer)
            elif n == BLOB_SHAPE:
                r.expect(f, LEN, "BlobProto.shape", layer)
                dims = (dims or []) + self.blob_shape(f, layer)  # a repeated message field merges
            elif n in _LEGACY:
                r.expect(f, VARINT, "BlobProto num/channels/height/width", layer)
                legacy[n] = wire.as_int32(f.value)
            elif n == BLOB_DIFF or n == BLOB_DOUBLE_DIFF:
                if f.wire_type not in (LEN, I32 if n == BLOB_DIFF else I64):
                    r.expect(f, LEN, "BlobProto.diff" if n == BLOB_DIFF else "BlobProto.double_diff", layer)
            pos = f.stop
        if legacy:
            shape = [legacy.get(k, 0) for k in _LEGACY]
        else:
            shape = dims or []
        doubles = [c for c in doubles if c.size]  # an empty packed run adds no elements
        return self._shaped(doubles or [c for c in floats if c.size], shape, blob_field.offset, layer)

    def blob_shape(self, shape_field, layer):
        r, dims = self.r, []
        for f in r.fields(shape_field.start, shape_field.stop, layer):
            if f.number != SHAPE_DIM:
                continue
            if f.wire_type == LEN:
                dims += [wire.as_int64(v) for v in r.varints(f.start, f.stop, layer)]
            else:
                r.expect(f, VARINT, "BlobShape.dim", layer)
                dims.append(wire.as_int64(f.value))
        return dims

    def _unpacked_run(self, pos, end, f, dtype):
        """Elements of an unpacked repeated fixed-width field starting with field f at pos.

        Consecutive single-byte tags (the canonical encoding) are gathered with one strided numpy
        view; anything else (an over-long tag) is taken one element at a time.
        """
        stride = 1 + dtype.itemsize
        tag = self.buf[pos]
        if f.start != pos + 1:
            return np.frombuffer(self.buf, dtype, 1, f.start).copy(), f.stop
        records = np.frombuffer(self.buf, np.uint8, ((end - pos) // stride) * stride, pos).reshape(-1, stride)
        count, step = 0, 64
        while count < len(records):
            block = records[count:count + step, 0] != tag
            if block.any():
                count += int(block.argmax())
                break
            count += len(block)
            step *= 2
        values = np.ascontiguousarray(records[:count, 1:]).view(dtype).reshape(-1)
        return values, pos + count * stride

    def _shaped(self, chunks, shape, offset, layer):
        if len(shape) > MAX_BLOB_AXES:
            raise self.error(f"blob has {len(shape)} axes, more than Caffe's {MAX_BLOB_AXES}", offset, layer)
        count = 1
        for d in shape:
            if d < 0:
                raise self.error(f"blob shape {tuple(shape)} has a negative dimension", offset, layer)
            if count and d > INT_MAX // count:
                raise self.error(f"blob shape {tuple(shape)} exceeds Caffe's {INT_MAX} elements", offset, layer)
            count *= d
        if not chunks:
            data = np.empty(0, _F32)
        elif len(chunks) == 1:
            data = chunks[0]
        else:
            data = np.concatenate(chunks)
        if data.size != count:
            raise self.error(f"blob data has {data.size} elements but its shape {tuple(shape)} needs {count}",
                             offset, layer)
        if sys.byteorder != "little":
            data = data.astype(data.dtype.newbyteorder("="))
        try:
            return data.reshape(shape)
        except ValueError as exc:
            raise self.error(f"blob shape {tuple(shape)} cannot be represented: {exc}", offset, layer) from None


def write(path, layers, name="", *, progress=None):
    """Write a V2 NetParameter (atomically: a temporary file in the same folder, then os.replace).

    `layers` maps layer name -> [arrays] or -> (type, [arrays]). float32 blobs go to `data`,
    float64 to `double_data`, both packed, with a BlobShape of packed int64 dims; fields are in
    field-number order, as Caffe's Net::ToProto serialises them. `progress(nbytes)`, if given,
    is called as data is written. Array bytes go to the file directly, never per element.
    """
    path = os.fspath(path)
    pieces, total = _encode(path, layers, name)
    with atomic_write(path) as f:
        for piece in pieces:
            for i in range(0, len(piece), 1 << 24):
                f.write(piece[i:i + (1 << 24)])
                if progress is not None:
                    progress(min(len(piece) - i, 1 << 24))
    return total


def _encode(path, layers, net_name):
    """Validate everything and lay out the file as byte pieces (headers, raw array bytes)."""
    pieces = [wire.encode_string(NET_NAME, net_name)]
    for lname, value in layers.items():
        if isinstance(value, tuple) and len(value) == 2 and (value[0] is None or isinstance(value[0], str)):
            ltype, blobs = value
        else:
            ltype, blobs = None, value
        if not isinstance(lname, str):
            raise CaffemodelError(f"layer name {lname!r} is not a string", file=path)
        head = wire.encode_string(LAYER_NAME, lname)
        if ltype is not None:
            head += wire.encode_string(LAYER_TYPE, ltype)
        body = [head]
        for i, blob in enumerate(blobs):
            blob_pieces = _encode_blob(path, lname, i, blob)
            body += [wire.encode_len_header(LAYER_BLOBS, sum(len(p) for p in blob_pieces)), *blob_pieces]
        pieces += [wire.encode_len_header(NET_LAYER, sum(len(p) for p in body)), *body]
    return pieces, sum(len(p) for p in pieces)


def _encode_blob(path, layer, index, blob):
    if hasattr(blob, "detach"):  # a torch tensor, without importing torch here
        blob = blob.detach().cpu().numpy()
    arr = np.asarray(blob)
    if arr.dtype.kind != "f" or arr.dtype.itemsize not in (4, 8):
        raise CaffemodelError(f"blob {index} has dtype {arr.dtype}; Caffe blobs hold float32 or float64",
                              file=path, layer=layer)
    raw = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
    shape = []
    if arr.ndim:
        dims = wire.encode_packed_varints(SHAPE_DIM, arr.shape)
        shape = [wire.encode_len_header(BLOB_SHAPE, len(dims)) + dims]
    if not raw.size:
        return shape
    if arr.dtype.itemsize == 4:
        return [wire.encode_len_header(BLOB_DATA, raw.size), raw, *shape]
    return [*shape, wire.encode_len_header(BLOB_DOUBLE_DATA, raw.size), raw]
