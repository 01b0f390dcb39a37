"""Protobuf text format as Caffe writes it: parse to a `Message` tree and print back.

The parser knows no schema: scalars come back as `str` (quoted strings), `int`, `float` or
`Enum` (a bare identifier such as MAX, TRAIN, true). Typed access with defaults and checks
goes through `Message.get_int` / `get_float` / `get_bool` / `get_enum` / `get_str`, which name
the file, line and column of a bad value.
"""
import math
import re

from ..atomic import open_regular
from ..errors import PrototxtError

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
    """An ordered multi-map of fields, as protobuf text gives them; remembers where it began."""

    __slots__ = ("fields", "file", "line", "col", "positions")

    def __init__(self, fields=None, file=None, line=None, col=None):
        self.fields = list(fields or [])
        self.file, self.line, self.col = file, line, col
        self.positions = {}  # index in fields -> (line, col) of that field's key

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
        self.fields.append((key, value))
        return value

    def set(self, key, value):
        """Replace every occurrence of key by one value (keeps the first position)."""
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
                      self.file, self.line, self.col)
        out.positions = dict(self.positions)
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


# --- tokenizer --------------------------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\f\v]+|\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[fF]?(?![A-Za-z_0-9]))
  | (?P<ident>[-+]?[A-Za-z_][A-Za-z_0-9]*)
  | (?P<punct>[{}<>:;,\[\]])
""", re.VERBOSE)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
            "\\": "\\", "'": "'", '"': '"', "?": "?"}


def _tokens(text, file):
    line, line_start, pos = 1, 0, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise PrototxtError(f"unexpected character {text[pos]!r}", file, line, pos - line_start + 1)
        kind = m.lastgroup
        col = pos - line_start + 1
        if kind == "ws":
            if m.group() == "\n":
                line += 1
                line_start = m.end()
        elif kind != "comment":
            yield kind, m.group(), line, col
        pos = m.end()
    yield "eof", "", line, pos - line_start + 1


def _unquote(tok, file, line, col):
    """Caffe's strings are bytes: literal characters give their UTF-8, escapes give raw bytes."""
    body, out, i = tok[1:-1], bytearray(), 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out += _ESCAPES[nxt].encode()
            i += 2
        elif nxt in "xX":
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:])
            if not m:
                raise PrototxtError("bad \\x escape in string", file, line, col + i + 1)
            out.append(int(m.group(), 16))
            i += 2 + len(m.group())
        elif nxt in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i + 1:])
            out.append(int(m.group(), 8) & 0xFF)
            i += 1 + len(m.group())
        else:
            raise PrototxtError(f"unknown escape \\{nxt} in string", file, line, col + i + 1)
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return out.decode("latin-1")


def _number(tok):
    t = tok.rstrip("fF") if not tok.lower().startswith(("0x", "-0x", "+0x")) else tok
    if re.fullmatch(r"[-+]?0[xX][0-9a-fA-F]+", t):
        return int(t, 16)
    if re.fullmatch(r"[-+]?\d+", t):
        return int(t)
    return float(t)


class _Parser:
    def __init__(self, text, file):
        self.file = file
        self.toks = _tokens(text, file)
        self.advance()

    def advance(self):
        self.kind, self.tok, self.line, self.col = next(self.toks)

    def fail(self, what):
        found = "end of file" if self.kind == "eof" else repr(self.tok)
        raise PrototxtError(f"expected {what}, found {found}", self.file, self.line, self.col)

    def message(self, close):
        msg = Message(file=self.file, line=self.line, col=self.col)
        while not (self.kind == "punct" and self.tok == close) and not (close is None and self.kind == "eof"):
            if self.kind == "eof":
                self.fail(f"'{close}' to close the message")
            if self.kind != "ident" or self.tok[0] in "+-":
                self.fail("a field name")
            key, line, col = self.tok, self.line, self.col
            self.advance()
            colon = self.kind == "punct" and self.tok == ":"
            if colon:
                self.advance()
            if self.kind == "punct" and self.tok in "{<":
                end = "}" if self.tok == "{" else ">"
                self.advance()
                value = self.message(end)
                value.line, value.col = line, col
                self.advance()
                msg.positions[len(msg.fields)] = (line, col)
                msg.add(key, value)
            elif not colon:
                self.fail(f"':' or '{{' after field name '{key}'")
            elif self.kind == "punct" and self.tok == "[":
                self.advance()
                while not (self.kind == "punct" and self.tok == "]"):
                    msg.positions[len(msg.fields)] = (line, col)
                    msg.add(key, self.scalar(key))
                    if self.kind == "punct" and self.tok == ",":
                        self.advance()
                    elif not (self.kind == "punct" and self.tok == "]"):
                        self.fail("',' or ']'")
                self.advance()
            else:
                msg.positions[len(msg.fields)] = (line, col)
                msg.add(key, self.scalar(key))
            if self.kind == "punct" and self.tok in ";,":
                self.advance()
        return msg

    def scalar(self, key):
        kind, tok = self.kind, self.tok
        if kind == "string":
            parts = []
            while self.kind == "string":
                parts.append(_unquote(self.tok, self.file, self.line, self.col))
                self.advance()
            return "".join(parts)
        if kind == "number":
            self.advance()
            return _number(tok)
        if kind == "ident":
            self.advance()
            low = tok.lower().lstrip("+")
            if low in ("inf", "infinity", "-inf", "-infinity", "nan", "-nan"):
                return float(low.replace("infinity", "inf"))
            if tok[0] in "+-":
                raise PrototxtError(f"expected a value for '{key}', found {tok!r}", self.file, self.line, self.col)
            return Enum(tok)
        self.fail(f"a value for '{key}'")


def loads(text, file=None):
    """Parse protobuf text into a Message; errors name file:line:column."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PrototxtError(f"not UTF-8 text (byte {e.start})", file) from None
    return _Parser(text, file).message(None)


def load(path):
    """Parse a protobuf text file."""
    with open_regular(path, lambda msg: PrototxtError(msg, str(path))) as f:
        return loads(f.read(), file=str(path))


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
