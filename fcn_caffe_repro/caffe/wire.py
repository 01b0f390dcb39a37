"""Protobuf wire format primitives over a memoryview: decode fields with bounds checks, encode headers.

Only what a .caffemodel needs: varints, tags, length-delimited slices and fixed 32/64-bit
fields. Groups (wire types 3 and 4) are deprecated and never used by Caffe, so they are
errors. Every decoding error is a CaffemodelError carrying the absolute byte offset.
"""

from typing import Iterator, NamedTuple

from ..errors import CaffemodelError

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
WIRE_NAMES = {VARINT: "varint", I64: "64-bit", LEN: "length-delimited", I32: "32-bit"}
MAX_VARINT_BYTES = 10
_U64 = (1 << 64) - 1


class Field(NamedTuple):
    """One decoded field: its number and wire type, where its tag starts, and its payload.

    For VARINT, `value` is the unsigned 64-bit value and start..stop are its bytes; for LEN,
    I32 and I64, start..stop is the payload slice and `value` is None.
    """

    number: int
    wire_type: int
    offset: int
    start: int
    stop: int
    value: "int | None"


class WireReader:
    """Decodes fields from a buffer; offsets are absolute positions in that buffer (the file)."""

    def __init__(self, buf, file=None):
        self.buf = memoryview(buf)
        self.file = file

    def error(self, message, offset, layer=None):
        return CaffemodelError(message, file=self.file, offset=offset, layer=layer)

    def varint(self, pos, end, layer=None):
        """Decode a varint at pos (not past end): (unsigned value, position after it)."""
        buf, start, result, shift = self.buf, pos, 0, 0
        while True:
            if pos >= end:
                raise self.error("truncated varint", start, layer)
            if pos - start >= MAX_VARINT_BYTES:
                raise self.error(f"varint longer than {MAX_VARINT_BYTES} bytes", start, layer)
            byte = buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result & _U64, pos
            shift += 7

    def field_at(self, pos, end, layer=None) -> Field:
        """Decode the one field whose tag starts at pos, checking it ends by `end`."""
        offset = pos
        key, pos = self.varint(pos, end, layer)
        number, wire_type = key >> 3, key & 7
        if number == 0 or number > 0x1FFFFFFF:
            raise self.error(f"invalid field number {number}", offset, layer)
        if wire_type == VARINT:
            value, stop = self.varint(pos, end, layer)
            return Field(number, wire_type, offset, pos, stop, value)
        if wire_type == LEN:
            length, pos = self.varint(pos, end, layer)
            stop = pos + length
        elif wire_type == I32:
            stop = pos + 4
        elif wire_type == I64:
            stop = pos + 8
        elif wire_type in (SGROUP, EGROUP):
            raise self.error(f"field {number}: groups (wire type {wire_type}) are not supported", offset, layer)
        else:
            raise self.error(f"field {number}: invalid wire type {wire_type}", offset, layer)
        if stop > end:
            raise self.error(f"field {number} runs {stop - end} bytes past the end of its message "
                             "(truncated?)", offset, layer)
        return Field(number, wire_type, offset, pos, stop, None)

    def fields(self, start, end, layer=None) -> Iterator[Field]:
        """Yield every field of the message occupying buf[start:end]."""
        pos = start
        while pos < end:
            field = self.field_at(pos, end, layer)
            yield field
            pos = field.stop

    def expect(self, field: Field, wire_type, what, layer=None):
        """Raise unless a known field arrived with the wire type its declaration requires."""
        if field.wire_type != wire_type:
            raise self.error(f"{what} (field {field.number}) has wire type "
                             f"{WIRE_NAMES.get(field.wire_type, field.wire_type)}, expected "
                             f"{WIRE_NAMES[wire_type]}", field.offset, layer)

    def varints(self, start, end, layer=None):
        """Decode a packed run of varints occupying buf[start:end]."""
        values, pos = [], start
        while pos < end:
            value, pos = self.varint(pos, end, layer)
            values.append(value)
        return values

    def string(self, field: Field, what, layer=None):
        try:
            return str(self.buf[field.start:field.stop], "utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(f"{what} is not valid UTF-8 ({exc.reason})", field.start + exc.start, layer) from None


def as_int64(value):
    """Reinterpret an unsigned 64-bit varint as a signed int64 (protobuf int64)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def as_int32(value):
    """Reinterpret a varint as protobuf int32: the low 32 bits, signed."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def encode_varint(value):
    """Encode an integer as a varint; negative values take ten bytes as int64 does."""
    value &= _U64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_tag(number, wire_type):
    return encode_varint((number << 3) | wire_type)


def encode_len_header(number, length):
    """Tag and length prefix of a length-delimited field whose payload is `length` bytes."""
    return encode_tag(number, LEN) + encode_varint(length)


def encode_string(number, text):
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return encode_len_header(number, len(data)) + data


def encode_varint_field(number, value):
    return encode_tag(number, VARINT) + encode_varint(value)


def encode_packed_varints(number, values):
    payload = b"".join(encode_varint(v) for v in values)
    return encode_len_header(number, len(payload)) + payload
