"""Protobuf text format as Caffe writes it: parse to a `Message` tree and print back.

The parser knows no schema: scalars come back as `str` (quoted strings), `int`, `float` or
`Enum` (a bare identifier such as MAX, TRAIN, true). Typed access with defaults and checks
goes through `Message.get_int` / `get_float` / `get_bool` / `get_enum` / `get_str`, which name
the file, line and column of a bad value. The reader is iterative, one regex match per field,
with messages nested at most MAX_DEPTH deep; memory stays a small multiple of the text's size.

`_Parser` below is the specification. `loads` first asks the C extension `_prototxt_fast`
(built by setup.py) for the same tree, many times faster; it answers None on any error or
anything it does not handle alike, and then `_Parser` parses, so errors are `_Parser`'s. Where
the extension is not built, `_Parser` alone parses (`FAST_PATH` says which).
"""
import gc
import math
import re

from ..atomic import open_regular
from ..errors import PrototxtError

try:
    from . import _prototxt_fast
except ImportError:  # not built (a source tree without `pip install -e .`): the Python parser alone
    _prototxt_fast = None

FAST_PATH = _prototxt_fast is not None

# Fields whose values are enums in caffe.proto: a Python str given for them prints bare.
ENUM_FIELDS = frozenset({
    "pool", "operation", "norm_region", "phase", "normalization", "engine", "variance_norm",
    "round_mode", "backend", "solver_mode", "snapshot_format", "solver_type", "dim_check_mode",
    "regularization_type_enum",
})


class Enum(str):
    """A bare identifier in the text format (enum value or bool); prints without quotes."""

    def __repr__(self):
        return f"Enum({str.__repr__(self)})"


class Message:
    """An ordered multi-map of fields, as protobuf text gives them; remembers where it began.

    A parsed message keeps only a reference to the text and its offset in it: the positions of its
    fields (line, col) are computed when first asked for (errors, the legacy upgrade), so a large
    file costs a small multiple of its size."""

    __slots__ = ("fields", "file", "_line", "_col", "_pos", "_src", "_off")

    def __init__(self, fields=None, file=None, line=None, col=None):
        self.fields = list(fields or [])
        self.file, self._line, self._col = file, line, col
        self._pos, self._src, self._off = None, None, -1

    @property
    def line(self):
        return self._where()[0]

    @line.setter
    def line(self, value):
        self._line = value

    @property
    def col(self):
        return self._where()[1]

    @col.setter
    def col(self, value):
        self._col = value

    def _where(self):
        if self._line is None and self._src is not None:
            self._line, self._col = self._src.linecol(self._off) if self._off >= 0 else (1, 1)
        return self._line, self._col

    @property
    def positions(self):
        """{index in fields: (line, col) of that field's key}."""
        if self._pos is None:
            self._pos = _positions_of(self) if self._src is not None else {}
        return self._pos

    @positions.setter
    def positions(self, value):
        self._pos = value

    # --- building --------------------------------------------------------------------------
    @classmethod
    def from_py(cls, value=None, **kwargs):
        """Build from Python: dicts become messages, lists repeat a field, bools and the
        strings of ENUM_FIELDS become enums."""
        msg = cls()
        for key, v in {**(value or {}), **kwargs}.items():
            for item in (v if isinstance(v, (list, tuple)) else [v]):
                msg.add(key, _py_value(key, item))
        return msg

    def add(self, key, value):
        self.positions  # noqa: B018  (fixed before the fields change)
        self.fields.append((key, value))
        return value

    def set(self, key, value):
        """Replace every occurrence of key by one value (keeps the first position)."""
        self.positions  # noqa: B018  (fixed before the fields change)
        idx = next((i for i, (k, _) in enumerate(self.fields) if k == key), None)
        self.remove(key)
        self.fields.insert(len(self.fields) if idx is None else idx, (key, value))

    def remove(self, key):
        keep = [(i, kv) for i, kv in enumerate(self.fields) if kv[0] != key]
        self.positions = {new: self.positions[old] for new, (old, _) in enumerate(keep)
                          if old in self.positions}
        self.fields = [kv for _, kv in keep]

    def copy(self):
        """Deep copy."""
        out = Message([(k, v.copy() if isinstance(v, Message) else v) for k, v in self.fields],
                      self.file, self._line, self._col)
        out._src, out._off = self._src, self._off
        out._pos = None if self._pos is None else dict(self._pos)
        return out

    # --- reading ---------------------------------------------------------------------------
    def keys(self):
        return list(dict.fromkeys(k for k, _ in self.fields))

    def getall(self, key):
        return [v for k, v in self.fields if k == key]

    def has(self, key):
        return any(k == key for k, _ in self.fields)

    def get(self, key, default=None):
        """The last value of key (protobuf: a later non-repeated field wins)."""
        for k, v in reversed(self.fields):
            if k == key:
                return v
        return default

    def msg(self, key):
        """The sub-message key, or an empty one when absent."""
        value = self.get(key)
        if value is None:
            return Message(file=self.file, line=self.line, col=self.col)
        if not isinstance(value, Message):
            raise self.error(f"'{key}' must be a message, got {value!r}", key)
        return value

    def where(self, key=None):
        """(line, col) of the last occurrence of key, else of this message."""
        if key is not None:
            for i in range(len(self.fields) - 1, -1, -1):
                if self.fields[i][0] == key and i in self.positions:
                    return self.positions[i]
        return self.line, self.col

    def error(self, message, key=None):
        line, col = self.where(key)
        return PrototxtError(message, self.file, line, col)

    def get_int(self, key, default=None):
        return self._typed(key, default, "an integer", _as_int)

    def get_float(self, key, default=None):
        return self._typed(key, default, "a number", _as_float)

    def get_bool(self, key, default=None):
        return self._typed(key, default, "true or false", _as_bool)

    def get_str(self, key, default=None):
        return self._typed(key, default, "a string", lambda v: v if isinstance(v, str) else None)

    def get_enum(self, key, names, default=None):
        """An enum by name or by number (its index in names)."""
        def conv(v):
            if isinstance(v, str) and v in names:
                return str(v)
            if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(names):
                return names[v]
            return None
        return self._typed(key, default, "one of " + "/".join(names), conv)

    def getall_int(self, key):
        return [self._convert(key, v, "an integer", _as_int) for v in self.getall(key)]

    def getall_float(self, key):
        return [self._convert(key, v, "a number", _as_float) for v in self.getall(key)]

    def _typed(self, key, default, what, conv):
        value = self.get(key)
        return default if value is None else self._convert(key, value, what, conv)

    def _convert(self, key, value, what, conv):
        out = None if isinstance(value, Message) else conv(value)
        if out is None:
            raise self.error(f"'{key}' must be {what}, got {value!r}", key)
        return out

    # --- comparing -------------------------------------------------------------------------
    def canonical(self):
        """Protobuf equality: field order across keys does not matter, order within a key does."""
        groups = {}
        for k, v in self.fields:
            groups.setdefault(k, []).append(v.canonical() if isinstance(v, Message) else _canon(v))
        return tuple(sorted((k, tuple(vs)) for k, vs in groups.items()))

    def __eq__(self, other):
        return isinstance(other, Message) and self.canonical() == other.canonical()

    __hash__ = None

    def __repr__(self):
        return f"Message({self.fields!r})"

    def __str__(self):
        return dumps(self)


def _py_value(key, v):
    if isinstance(v, Message):
        return v
    if isinstance(v, dict):
        return Message.from_py(v)
    if isinstance(v, bool):
        return Enum("true" if v else "false")
    if isinstance(v, str) and key in ENUM_FIELDS and not isinstance(v, Enum):
        return Enum(v)
    return v


def _canon(v):
    if isinstance(v, bool):
        return ("enum", "true" if v else "false")
    if isinstance(v, Enum):
        return ("enum", str(v))
    if isinstance(v, str):
        return ("str", v)
    if isinstance(v, float) and math.isnan(v):
        return ("num", "nan")
    return ("num", float(v))


_INT_RANGE = (-(1 << 63), 1 << 64)  # protobuf's widest integers, int64 and uint64


def _as_int(v):
    if isinstance(v, bool) or isinstance(v, str):
        return None
    if isinstance(v, float):
        v = int(v) if v.is_integer() else None
    return v if v is not None and _INT_RANGE[0] <= v < _INT_RANGE[1] else None


def _as_float(v):
    if isinstance(v, bool) or isinstance(v, str):
        return None
    return float(v)


def _as_bool(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, Enum) and v in ("true", "True", "t"):
        return True
    if isinstance(v, Enum) and v in ("false", "False", "f"):
        return False
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    return None


# --- parser -----------------------------------------------------------------------------------
MAX_DEPTH = 100  # nesting of messages; Caffe's deepest is 4 (net > layer > param > filler)

_SKIP = r"(?:[ \t\r\n\f\v]++|\#[^\n]*+)*+"  # possessive: a comment is never cut short to match
_STRING = r""""[^"\\\n]*+(?:\\.[^"\\\n]*+)*+"|'[^'\\\n]*+(?:\\.[^'\\\n]*+)*+'"""  # unrolled: no per-character state
_NUMBER = r"[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[fF]?(?![A-Za-z_0-9])"
_IDENT = r"[A-Za-z_][A-Za-z_0-9]*"
_FIELD = re.compile(  # one field (name, and a scalar value when it has one), a closing bracket, or the end
    _SKIP + rf"(?:(?P<key>{_IDENT}){_SKIP}(?P<colon>:)?{_SKIP}(?:(?P<open>[{{<])|(?P<list>\[)"
    rf"|(?:(?P<string>{_STRING})(?P<more>(?:{_SKIP}(?:{_STRING}))++)?|(?P<number>{_NUMBER})|(?P<ident>[-+]?{_IDENT}))"
    rf"(?:{_SKIP}(?P<sep>[;,]))?)?|(?P<close>[}}>])(?:{_SKIP}(?P<csep>[;,]))?|(?P<eof>\Z))")
_VALUE = re.compile(_SKIP + rf"(?:(?P<string>{_STRING})|(?P<number>{_NUMBER})|(?P<ident>[-+]?{_IDENT}))")
_NEXT_STRING = re.compile(_SKIP + rf"(?P<string>{_STRING})")
_PUNCT = re.compile(_SKIP + r"(?P<p>[\[\],;])")
_ESCAPE_RUN = re.compile(r"[^\\]+|\\(?:x[0-9a-fA-F]{1,2}|X[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", re.S)
_SKIP_RE = re.compile(_SKIP)
_TOKEN = re.compile(rf"{_STRING}|{_NUMBER}|[-+]?{_IDENT}|[{{}}<>:;,\[\]]")


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
            "\\": "\\", "'": "'", '"': '"', "?": "?"}


class _Source:
    """The parsed text, kept so that positions can be given after parsing (only errors and the
    legacy upgrade ask): line and column from a character offset."""

    __slots__ = ("text", "file", "_mark")

    def __init__(self, text, file):
        self.text, self.file, self._mark = text, file, (0, 1)

    def linecol(self, off):
        """(line, col) of offset `off`, counting from the last offset asked (asks come mostly in order)."""
        mark, line = self._mark
        if off >= mark:
            line += self.text.count("\n", mark, off)
        else:
            line -= self.text.count("\n", off, mark)
        self._mark = (off, line)
        return line, off - (self.text.rfind("\n", 0, off) + 1) + 1

    def error(self, message, off):
        line, col = self.linecol(off)
        return PrototxtError(message, self.file, line, col)


def _unquote(tok, src, off):
    """Caffe's strings are bytes: literal characters give their UTF-8, escapes give raw bytes."""
    body = tok[1:-1]
    if "\\" not in body:
        return body
    out = bytearray()
    for m in _ESCAPE_RUN.finditer(body):
        piece = m.group()
        if piece[0] != "\\":
            out += piece.encode("utf-8")
        elif piece[1] in _ESCAPES:
            out += _ESCAPES[piece[1]].encode()
        elif piece[1] in "xX":
            if len(piece) == 2:
                raise src.error("bad \\x escape in string", off + 1 + m.start())
            out.append(int(piece[2:], 16))
        elif piece[1] in "01234567":
            out.append(int(piece[1:], 8) & 0xFF)
        else:
            raise src.error(f"unknown escape \\{piece[1]} in string", off + 1 + m.start())
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return out.decode("latin-1")


def _number(tok):
    if "x" in tok or "X" in tok:  # 0x1F, -0x1F (the regex admits no other x)
        return int(tok, 16)
    t = tok.rstrip("fF")
    if t.isdigit() or (t[:1] in "+-" and t[1:].isdigit()):
        return int(t)
    return float(t)


class _Parser:
    """Iterative (an explicit stack, MAX_DEPTH deep at most), one regex match per field name and
    one per value; records no positions (Message computes them on demand) unless `record`."""

    def __init__(self, src, record=False):
        self.src, self.text, self.record = src, src.text, record
        self.keys, self.enums = {}, {}  # each field name and enum value held once

    def fail(self, what, pos):
        """The error at the first token from `pos`: what was expected and what was found."""
        at = _SKIP_RE.match(self.text, pos).end()
        if at >= len(self.text):
            raise self.src.error(f"expected {what}, found end of file", at)
        m = _TOKEN.match(self.text, at)
        if m is None:
            raise self.src.error(f"unexpected character {self.text[at]!r}", at)
        raise self.src.error(f"expected {what}, found {m.group()!r}", at)

    def parse(self, pos=0, close=None):
        """The message whose body starts at `pos` (closed by `close`, or by the end of the text)."""
        text, keys, strings, src, record = self.text, self.keys, {}, self.src, self.record
        match, number_of = _FIELD.match, _number
        root = _parsed(src, pos if close is not None else -1)
        msg, stack, positions = root, [], {}
        fields = msg.fields
        append = fields.append
        while True:
            m = match(text, pos)
            if m is None:
                self.fail("a field name", pos)
            key, colon, opened, listed, string, more, number, ident, _, closed, _, eof = m.groups()
            if key is not None and colon is not None:  # a scalar field, the common case
                key = keys.setdefault(key, key)
                if record and not stack:
                    positions[len(fields)] = m.start("key")
                if string is not None:
                    value = string[1:-1] if "\\" not in string else _unquote(string, src, m.start("string"))
                    if more is not None:  # string by string: a comment between them may hold quotes
                        at, stop = m.start("more"), m.end("more")
                        while at < stop:
                            n = _NEXT_STRING.match(text, at)
                            value += _unquote(n.group("string"), src, n.start("string"))
                            at = n.end()
                    held = strings.get(value)
                    if held is None:
                        if len(strings) > 4096:  # a window of recent values, not every value
                            strings.clear()
                        held = strings[value] = value
                    append((key, held))
                elif number is not None:
                    append((key, number_of(number)))
                elif ident is not None:
                    append((key, self._ident(key, ident, m.start("ident"))))
                elif listed is not None:
                    pos = self._list(msg, key, m.start("key"), m.end(), positions if record and not stack else None)
                    sep = _PUNCT.match(text, pos)
                    if sep is not None and sep.group("p") in ";,":
                        pos = sep.end()
                    continue
                elif opened is None:
                    self.fail(f"a value for '{key}'", m.end())
                if opened is None:
                    pos = m.end()
                    continue
            if key is None:
                if (eof is not None) != (close is None) or (closed is not None and closed != close):
                    self.fail("a field name" if eof is None else f"'{close}' to close the message", pos)
                if not stack:
                    if record:
                        root._pos = {i: src.linecol(off) for i, off in positions.items()}
                    return root, m.end()
                msg.fields = fields[:]  # no room left for appends
                msg, close = stack.pop()
                fields, pos = msg.fields, m.end()
                append = fields.append
                continue
            if opened is None:
                self.fail(f"':' or '{{' after field name '{key}'", m.end("key"))
            key = keys.setdefault(key, key)
            if record and not stack:
                positions[len(fields)] = m.start("key")
            if len(stack) >= MAX_DEPTH:
                raise src.error(f"messages nested deeper than {MAX_DEPTH}", m.start("key"))
            child = _parsed(src, m.start("key"))
            append((key, child))
            stack.append((msg, close))
            msg, close, pos = child, "}" if opened == "{" else ">", m.end()
            fields = msg.fields
            append = fields.append

    def _list(self, msg, key, key_off, pos, positions):
        """`key: [v1, v2, ...]`: a repeated field written at once."""
        first = True
        while True:
            p = _PUNCT.match(self.text, pos)
            if p is not None and p.group("p") == "]":
                return p.end()
            if not first:
                if p is None or p.group("p") != ",":
                    self.fail("',' or ']'", pos)
                pos = p.end()
            value, pos = self._scalar(key, pos)
            if positions is not None:
                positions[len(msg.fields)] = key_off
            msg.fields.append((key, value))
            first = False

    def _scalar(self, key, pos):
        m = _VALUE.match(self.text, pos)
        if m is None:
            self.fail(f"a value for '{key}'", pos)
        kind, tok = m.lastgroup, m.group(m.lastgroup)
        if kind == "string":
            value, end = _unquote(tok, self.src, m.start("string")), m.end()
            while (n := _NEXT_STRING.match(self.text, end)) is not None:
                value += _unquote(n.group("string"), self.src, n.start("string"))
                end = n.end()
            return value, end
        if kind == "number":
            return _number(tok), m.end()
        return self._ident(key, tok, m.start("ident")), m.end()

    def _ident(self, key, tok, off):
        """An enum value, true/false, or inf/nan (with a sign, only these)."""
        low = tok.lower().lstrip("+")
        if low in ("inf", "infinity", "-inf", "-infinity", "nan", "-nan"):
            return float(low.replace("infinity", "inf"))
        if tok[0] in "+-":
            raise self.src.error(f"expected a value for '{key}', found {tok!r}", off)
        enum = self.enums.get(tok)
        if enum is None:
            enum = self.enums[tok] = Enum(tok)
        return enum


def _parsed(src, off):
    msg = Message()
    msg._src, msg._off, msg.file = src, off, src.file
    return msg


def _positions_of(msg):
    """Positions of a parsed message's fields, by parsing its text again with recording on."""
    src, off = msg._src, msg._off
    parser = _Parser(src, record=True)
    if off < 0:
        again, _ = parser.parse(0, None)
    else:
        m = _FIELD.match(src.text, off)
        close = "}" if m.group("open") == "{" else ">"
        again, _ = parser.parse(m.end(), close)
    return again._pos if len(again.fields) == len(msg.fields) else {}


def loads(text, file=None):
    """Parse protobuf text into a Message; errors name file:line:column."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise PrototxtError(f"not UTF-8 text (byte {e.start})", file) from None
    enabled = gc.isenabled()
    gc.disable()  # the tree has no cycles; collections while it grows would revisit it again and again
    try:
        src = _Source(text, file)
        msg = _parse_fast(text, src)
        if msg is None:  # an error, or something the C reader leaves to the specification
            msg, _ = _Parser(src).parse()
    finally:
        if enabled:
            gc.enable()
    return msg


def _parse_fast(text, src):
    """The tree `_Parser(src).parse()` gives, from the C extension, or None (not built, or the
    text is one `_Parser` must parse)."""
    if _prototxt_fast is None:
        return None
    return _prototxt_fast.parse(text, src, src.file, Message, Enum, MAX_DEPTH)


def load(path):
    """Parse a protobuf text file."""
    with open_regular(path, lambda msg: PrototxtError(msg, str(path))) as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PrototxtError(f"not UTF-8 text (byte {e.start})", str(path)) from None
    del data  # the text alone is kept
    return loads(text, file=str(path))


# --- printer ----------------------------------------------------------------------------------
_QUOTED = {"\\": "\\\\", '"': '\\"', "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _quote(s):
    out = []
    for ch in s:
        if ch in _QUOTED:
            out.append(_QUOTED[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def format_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Enum):
        return str(v)
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    return str(v)


def dumps(msg, indent=0):
    """Print a Message as protobuf text, two spaces per level, as Caffe does."""
    pad = "  " * indent
    lines = []
    for key, value in msg.fields:
        if isinstance(value, Message):
            lines.append(f"{pad}{key} {{")
            body = dumps(value, indent + 1)
            if body:
                lines.append(body.rstrip("\n"))
            lines.append(f"{pad}}}")
        else:
            lines.append(f"{pad}{key}: {format_scalar(value)}")
    return "\n".join(lines) + ("\n" if lines else "")
