"""The prototxt reader's C fast path (caffe/_prototxt_fast.c) against its specification, the Python
parser (`prototxt._Parser`): the same tree, value types and Message slots included, wherever it
answers; where it declines, the Python parser's tree or error, unchanged."""
import gc
import math
import os
import subprocess
import sys
import tracemalloc
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fcn_caffe_repro.caffe import prototxt
from fcn_caffe_repro.caffe.prototxt import MAX_DEPTH, Enum, Message
from fcn_caffe_repro.errors import PrototxtError
from test_prototxt_fuzz import PIECES, mutate

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "prototxt").rglob("*.prototxt")) + sorted((ROOT / "tests" / "fixtures").rglob("*.prototxt"))

pytestmark = pytest.mark.skipif(not prototxt.FAST_PATH, reason="caffe/_prototxt_fast is not built "
                                "(test_prototxt.py's test_the_fast_path_is_built_and_used fails)")


def both(text, file="t.prototxt"):
    """(the C tree or None, the Python tree or the exception it raised), from one _Source."""
    src = prototxt._Source(text, file)
    fast = prototxt._parse_fast(text, src)
    try:
        py, _ = prototxt._Parser(src).parse()
    except Exception as e:  # noqa: BLE001  (compared, or re-raised by the caller)
        py = e
    return fast, py


def assert_same_tree(a, b, where="root"):
    """Exactly the same tree: types (int, float, Enum, str, Message), values (nan and the sign of
    zero included), keys, and every Message slot."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__} ({a!r} vs {b!r})"
    if isinstance(a, Message):
        for slot in Message.__slots__:
            if slot != "fields":
                x, y = getattr(a, slot), getattr(b, slot)
                if slot == "_src":  # the same text and file (positions are computed from them)
                    x, y = (type(x), x.text, x.file), (type(y), y.text, y.file)
                assert type(x) is type(y) and x == y, f"{where}.{slot}: {x!r} vs {y!r}"
        assert type(a.fields) is list and len(a.fields) == len(b.fields), f"{where}: {len(a.fields)} vs {len(b.fields)}"
        for i, (fa, fb) in enumerate(zip(a.fields, b.fields)):
            assert type(fa) is tuple and len(fa) == 2 and type(fa[0]) is str and fa[0] == fb[0], \
                f"{where}[{i}]: {fa!r} vs {fb!r}"
            assert_same_tree(fa[1], fb[1], f"{where}.{fa[0]}[{i}]")
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or a == b, f"{where}: {a!r} vs {b!r}"
        assert math.copysign(1, a) == math.copysign(1, b), f"{where}: the sign of {a!r} vs {b!r}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def check(text):
    """The C tree equals the Python tree where the C parser answers; it answers for every text the
    Python parser parses except where \\d met a digit outside ASCII. The C tree or None."""
    fast, py = both(text)
    if fast is not None:
        assert not isinstance(py, Exception), f"C parsed what Python rejects: {py!r}"
        assert_same_tree(fast, py)
    elif not isinstance(py, Exception):
        assert any(not c.isascii() and unicodedata.category(c) == "Nd" for c in text), \
            f"C declined a text that Python parses: {text[:200]!r}"
    return fast


def test_without_the_extension_the_python_parser_parses(monkeypatch):
    text = (FILES[0]).read_text()
    monkeypatch.setattr(prototxt, "_prototxt_fast", None)
    assert prototxt._parse_fast(text, prototxt._Source(text, None)) is None
    assert_same_tree(prototxt.loads(text), prototxt._Parser(prototxt._Source(text, None)).parse()[0])


def test_every_prototxt_of_the_tree():
    assert len(FILES) >= 100
    for path in FILES:
        assert check(path.read_text()) is not None, path


EDGE_CASES = [
    "", "   \n\t", "# only a comment", "a: 1 # a comment at the end", "a: 1\n#", "\ta:\f1\v\r\nb :\n2",
    # strings and escapes
    'a: "x"', "a: 'x'", "a: ''", 'a: "it\'s"', r"a: '\"'", r'a: "\x41\x4a\x4 \X4f"', r'a: "\0\01\012\0123\777"',
    r'a: "\n\t\r\a\b\f\v\\\'\"\?"', r'a: "\xc3\xa9"', r'a: "\xff"', r'a: "é\xff"', r'a: "\xc3" "\xa9"',
    'a: "日本語"', 'a: "😀 x"', r'a: "日本\x41"', r'a: "😀\n"', 'a: "\x00"', 'a: "tab\there"',
    'a: "x" "y"', "a: 'x' \"y\" 'z'", 'a: "x" # c\n "y"', 'a: "x""y"', 's: "v" s: "v" s: "w"',
    # numbers
    "a: 1e5", "a: .5", "a: 5.", "a: 1f", "a: 1.5F", "a: -0", "a: +7", "a: 007", "a: 0x1F", "a: -0X1f",
    "a: +0xff", "a: 1E-3", "a: 5.e3", "a: 5.f", "a: -.5", "a: 1e999", "a: -1e999", "a: 1e-400", "a: -0.0",
    "a: 99999999999999999999999", "a: 123456789012345678", "a: 1234567890123456789", "a: -9223372036854775808",
    "a: 18446744073709551616", "a: 4.9e-324", "a: 0.1", "a: 1.7976931348623157e308",
    # identifiers
    "a: inf", "a: -inf", "a: +inf", "a: Infinity", "a: -INFINITY", "a: nan", "a: -nan", "a: NaN", "a: +NAN",
    "a: true", "a: True", "a: false", "a: MAX", "a: _x1", "a: infx", "a: e5", "pool: MAX pool: MAX pool: AVE",
    # messages, lists, separators
    "a { }", "a < >", "a: { b: 1 }", "a: < b: 1 >", "a { b < c: 1 > }", "a {}; b {},", "a {} b <>;",
    "a: [] b: [1]", 'a: [1, -2.5, "s" "t", MAX, inf, 0x10];', "a: [ ]", "a: [\n1 #c\n,\n2\n]", "a: [1], b: 2",
    "a: 1; b: 2, c: 3", "a: 1 ;", 'a: "x";b:MAX,c:1', "layer { name: 'n' }\n" * 3,
    # text of every width (the C parser reads 1-, 2- and 4-byte strings)
    "# é\na: 1", "# 日本\na: MAX b: 'x'", "# 😀\na: [1, 2] b { c: 'é' }", 'k: "é" k: "é"',
    "a {" * MAX_DEPTH + "}" * MAX_DEPTH, "a <" * (MAX_DEPTH - 1) + "b: 1" + ">" * (MAX_DEPTH - 1),
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_cases_give_the_python_tree(text):
    assert check(text) is not None, "the C parser declined a valid text"


def test_large_tables_and_the_string_window():
    """Thousands of keys and enum values (the tables grow) and more strings than the window holds."""
    text = " ".join(f"k{i}: E{i % 3000} s: \"v{i % 5000}\"" for i in range(12_000))
    fast = check(text)
    assert fast is not None and len(fast.fields) == 24_000


def test_growing_tables_leave_no_dangling_reads():
    """Under Python's debug allocator (freed memory overwritten at once) the keys and enum values
    that make the tables grow come out right: a read through a slot of the table before it grew
    crashes there (CI saw such a segfault only when freed memory happened to be reused)."""
    code = ("from fcn_caffe_repro.caffe import prototxt\n"
            "m = prototxt.loads(' '.join(f'k{i}: E{i}' for i in range(3000)))\n"
            "assert [k for k, _ in m.fields] == [f'k{i}' for i in range(3000)]\n"
            "assert [v for _, v in m.fields] == [f'E{i}' for i in range(3000)]\n"
            "assert prototxt.FAST_PATH\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONMALLOC": "debug", "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])


def test_keys_and_enum_values_are_held_once():
    m = prototxt.loads("layer { type: MAX phase: TRAIN } layer { type: MAX phase: TRAIN } p: MAX")
    (k1, v1), (k2, v2) = m.fields[0][1].fields
    (k3, v3), (k4, v4) = m.fields[1][1].fields
    assert k1 is k3 and k2 is k4 and m.fields[0][0] is m.fields[1][0]
    assert v1 is v3 is m.get("p") and v2 is v4 and type(v1) is Enum and type(v2) is Enum


@pytest.mark.parametrize("text", [
    "a: {", "}", "a: 1b", 'a: "x', 'a: "\\q"', 'a: "\\x"', "a 1", "a: [1,]", "a: [1 2]", "a: [,]", "a: -foo",
    "a: 1.2.3", "a: <b: 1}", "a { b: 1 >", "a: 1;;", "a: 0x", "a: 1e", "a: ;", 'a: "x" "y', "a: [1; 2]",
    "a {\n" * (MAX_DEPTH + 1) + "}" * (MAX_DEPTH + 1), "a: $", "layer { name: 'x' }}", "a: 1 b", "a.b: 1",
])
def test_errors_are_the_python_parsers(text):
    fast, py = both(text, "bad.prototxt")
    assert fast is None and isinstance(py, PrototxtError)
    with pytest.raises(PrototxtError) as e:
        prototxt.loads(text, file="bad.prototxt")
    assert str(e.value) == str(py) and (e.value.file, e.value.line, e.value.col) == (py.file, py.line, py.col)


@pytest.mark.parametrize("text, expected", [
    ("a: ٣", 3), ("a: 1٣", 13), ("a: 1.٣", 1.3), ("a: [٣]", 3),  # \d: digits outside ASCII, left to Python
])
def test_what_the_c_parser_leaves_to_python(text, expected):
    fast, py = both(text)
    assert fast is None and py.get("a") == expected and prototxt.loads(text).get("a") == expected


def test_exceptions_other_than_syntax_stay_the_python_parsers():
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate cannot give UTF-8 bytes
        prototxt.loads('a: "\ud800\\n"')
    with pytest.raises(ValueError, match="digits"):  # int()'s limit on decimal digits
        prototxt.loads("a: " + "1" * 5000)


# --- fuzz ------------------------------------------------------------------------------------
_FUZZ_FILES = sorted((ROOT / "prototxt").glob("*/*.prototxt"))
_TEXTS = {p: p.read_text() for p in _FUZZ_FILES}

_number = st.from_regex(r"[-+]?(0[xX][0-9a-fA-F]{1,3}|([0-9]{1,3}\.?[0-9]{0,3}|\.[0-9]{1,3})([eE][-+]?[0-9]{1,3})?)[fF]?",
                        fullmatch=True)
_dq = st.from_regex(r'"([^"\\\n]|\\([ntrabfv\\\'"?]|[xX][0-9a-fA-F]{1,2}|[0-7]{1,3}))*"', fullmatch=True)
_sq = st.from_regex(r"'([^'\\\n]|\\([ntrabfv\\'\"?]|[xX][0-9a-fA-F]{1,2}|[0-7]{1,3}))*'", fullmatch=True)
_string1 = _dq | _sq
_string = _string1 | st.tuples(_string1, st.sampled_from(["", " ", "\n#c\n"]), _string1).map("".join)
_ident = st.sampled_from(["MAX", "true", "inf", "-inf", "+nan", "Infinity", "-INFINITY", "e1", "_", "nan"])
_scalar = _number | _string | _ident | st.lists(_number | _string | _ident, max_size=3).map(
    lambda v: "[" + ", ".join(v) + "]")
_gap = st.sampled_from(["", " ", "\n", "\t", " # c\n", ";", ",", "\f"])
_field = st.tuples(st.from_regex(r"[a-z_][a-z0-9_]{0,3}", fullmatch=True), st.sampled_from([":", ": ", " :\n", ":#c\n"]),
                   _scalar, _gap).map(lambda t: t[0] + t[1] + t[2] + t[3] + " ")
_message = st.sampled_from([("m {", "}"), ("m: {", "}"), ("n <", ">"), ("n:<", ">")])
_body = st.recursive(st.lists(_field, max_size=4).map("".join),
                     lambda inner: st.lists(_field | st.tuples(_message, inner, _gap).map(
                         lambda t: f"{t[0][0]} {t[1]} {t[0][1]}{t[2]} "), max_size=4).map("".join), max_leaves=12)
_soup = st.lists(st.sampled_from(PIECES + ['"x"', "'y'", r'"\xc3\xa9"', r'"\xff"', "1e5", ".5", "5.", "1f", "٣", "😀",
                                           "MAX", "a", ":", " ", "\n", "]", "[1,2]", "1.", "e", "x"]), max_size=30).map("".join)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_FUZZ_FILES), st.lists(st.tuples(st.sampled_from(["delete", "insert", "duplicate", "number"]),
                                                        st.floats(0, 1), st.integers(1, 40),
                                                        st.sampled_from(PIECES) | st.text(max_size=6)),
                                              min_size=1, max_size=4))
def test_mutated_prototxts_give_the_python_tree_or_its_error(path, mutations):
    check(mutate(_TEXTS[path], mutations))


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(_body, _soup, st.integers(0, 1000))
def test_generated_texts_give_the_python_tree_or_its_error(body, soup, at):
    """A valid text of every value form, then the same with a piece of token soup inside."""
    assert check(body) is not None or not body.isascii()
    i = at % (len(body) + 1)
    check(body[:i] + soup + body[i:])


def test_no_memory_is_kept_across_parses():
    """Parsing the same texts 50 times, answered or declined late, leaves nothing allocated."""
    layer = 'layer {{ name: "relu{i}" type: "ReLU" bottom: "c{i}" top: "c{i}" p {{ s: 0.1 k: [1, 2] e: MAX }} }}\n'
    good = "".join(layer.format(i=i) for i in range(2000)) + 'esc: "\\xff\\n" "y"\n'
    bad = good + "layer { name: 'x' \n"  # declined at the end, after building every layer
    src_good, src_bad = prototxt._Source(good, None), prototxt._Source(bad, None)
    for _ in range(2):
        assert prototxt._parse_fast(good, src_good) is not None and prototxt._parse_fast(bad, src_bad) is None
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(50):
            prototxt._parse_fast(good, src_good)
            prototxt._parse_fast(bad, src_bad)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes kept after 100 parses of {len(good)} characters"
