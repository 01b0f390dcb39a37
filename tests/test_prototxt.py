"""The protobuf text parser and printer."""
import pytest
from hypothesis import given, settings, strategies as st

from conftest import CAFFE_REF, REFERENCE
from fcn_caffe_repro.caffe import prototxt
from fcn_caffe_repro.caffe.prototxt import Enum, Message
from fcn_caffe_repro.errors import PrototxtError

ALL_FILES = sorted(REFERENCE.glob("prototxt/*/*.prototxt")) + sorted(CAFFE_REF.rglob("*.prototxt"))


def test_syntax_forms():
    text = r'''
    # a comment
    name: "net"  # trailing comment
    layer { name: 'a\'b' type: "X" top: "t" top: "u" }
    layer < name: "c" >
    layer: { name: "d" }
    input_dim: [1, 3, 5]
    f: 1e-14 g: -2 h: 0x1F i: .5 j: 3.0f k: inf l: -inf
    pool: MAX ok: true
    s: "con" "cat" esc: "\n\t\\\"\101\x41"
    sub { m: 1; n: 2, }
    '''
    m = prototxt.loads(text)
    assert m.get("name") == "net"
    layers = m.getall("layer")
    assert [l.get("name") for l in layers] == ["a'b", "c", "d"]
    assert layers[0].getall("top") == ["t", "u"]
    assert m.getall("input_dim") == [1, 3, 5]
    assert m.get("f") == 1e-14 and m.get("g") == -2 and m.get("h") == 31 and m.get("i") == 0.5
    assert m.get("j") == 3.0 and m.get("k") == float("inf") and m.get("l") == float("-inf")
    assert m.get("pool") == "MAX" and isinstance(m.get("pool"), Enum)
    assert m.get_bool("ok") is True
    assert m.get("s") == "concat" and m.get("esc") == '\n\t\\"AA'
    assert m.msg("sub").get("n") == 2


def test_adjacent_strings_skip_comments_between_them():
    """A quoted string inside a comment between two adjacent strings is not part of the value."""
    m = prototxt.loads('a: "x"\n# "not" \'this\'\n"y" # "nor" this\nb: ["p" # "q"\n "r"]')
    assert m.get("a") == "xy" and m.get("b") == "pr"


def test_later_scalar_wins_and_repeated_concatenate():
    m = prototxt.loads("a: 1 b: 2 a: 3")
    assert m.get("a") == 3 and m.getall("a") == [1, 3]


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_fixture_round_trips(path):
    m = prototxt.load(path)
    assert prototxt.loads(prototxt.dumps(m)) == m
    assert len(m.fields) > 0


def test_equality_is_protobufs():
    """Order across different fields does not matter; order within a repeated field does."""
    assert prototxt.loads("a: 1 b: 2") == prototxt.loads("b: 2 a: 1")
    assert prototxt.loads("a: 1 a: 2") != prototxt.loads("a: 2 a: 1")
    assert prototxt.loads("a: 1") == prototxt.loads("a: 1.0")
    assert prototxt.loads('a: "MAX"') != prototxt.loads("a: MAX")


@pytest.mark.parametrize("text, line, col, what", [
    ("layer {\n  name: \"x\"\n", 3, 1, "'}'"),
    ("layer {\n  name: \"x\"\n  type: }\n", 3, 9, "value for 'type'"),
    ("name \"x\"", 1, 6, "':' or '{'"),
    ("a: 1\n  b: $", 2, 6, "unexpected character"),
    ("a: \"unterminated\n", 1, 4, "unexpected character"),
    ("}", 1, 1, "field name"),
    ("a: \"\\q\"", 1, 5, "unknown escape"),
])
def test_errors_name_line_and_column(text, line, col, what):
    with pytest.raises(PrototxtError) as e:
        prototxt.loads(text, file="bad.prototxt")
    assert (e.value.line, e.value.col) == (line, col), str(e.value)
    assert what in str(e.value) and str(e.value).startswith(f"bad.prototxt:{line}:{col}")


def test_typed_access_errors_name_the_place():
    m = prototxt.loads('layer {\n  convolution_param {\n    num_output: "many"\n  }\n}', file="n.prototxt")
    p = m.get("layer").msg("convolution_param")
    with pytest.raises(PrototxtError, match=r"n.prototxt:3:5: 'num_output' must be an integer"):
        p.get_int("num_output")
    assert prototxt.loads("pool: 1").get_enum("pool", ["MAX", "AVE"]) == "AVE"


def test_the_fast_path_is_built_and_used(monkeypatch):
    """Fails where the C extension is silently missing (CI builds it: `pip install -e .`) or loads
    no longer asks it first (tests/test_prototxt_fast.py checks its trees)."""
    assert prototxt.FAST_PATH, "caffe/_prototxt_fast is not built: pip install --no-build-isolation --no-deps -e ."

    def no_python_parser(*args, **kwargs):
        raise AssertionError("loads fell back to the Python parser on a valid text")

    monkeypatch.setattr(prototxt, "_Parser", no_python_parser)
    m = prototxt.loads('layer {\n  name: "a" type: "ReLU" }', file="x.prototxt")
    assert m.get("layer").get("type") == "ReLU" and (m.get("layer").line, m.get("layer").col) == (1, 1)


def test_binary_input_is_a_clear_error():
    with pytest.raises(PrototxtError, match="not UTF-8"):
        prototxt.loads(b"\x0a\xff\xfe\x00")


_scalar = st.one_of(st.integers(-2**40, 2**40), st.floats(allow_nan=False, width=32),
                    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8),
                    st.sampled_from([Enum("MAX"), Enum("true"), Enum("TEST")]))
_key = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True)
_message = st.recursive(
    st.lists(st.tuples(_key, _scalar), max_size=5).map(Message),
    lambda inner: st.lists(st.tuples(_key, st.one_of(_scalar, inner)), max_size=5).map(Message),
    max_leaves=20)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_message)
def test_print_then_parse_is_identity(msg):
    assert prototxt.loads(prototxt.dumps(msg)) == msg


def test_nesting_has_a_documented_limit_not_a_recursion_error():
    ok = "a {" * prototxt.MAX_DEPTH + "}" * prototxt.MAX_DEPTH
    assert len(prototxt.dumps(prototxt.loads(ok)).splitlines()) == 2 * prototxt.MAX_DEPTH
    deep = "a {\n" * 1000 + "}" * 1000
    with pytest.raises(PrototxtError, match=rf"deep.prototxt:{prototxt.MAX_DEPTH + 1}:1: messages nested deeper than"):
        prototxt.loads(deep, file="deep.prototxt")


def _peak_bytes(fn):
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_memory_is_a_small_multiple_of_the_file():
    """A 4M-character string cost ~190 bytes per character (the regex kept per-character state);
    a net of many layers must stay within 10x its size, positions included on demand."""
    text = 'name: "' + "x" * 4_000_000 + '"\n'
    peak, msg = _peak_bytes(lambda: prototxt.loads(text))
    assert len(msg.get("name")) == 4_000_000 and peak < 3 * len(text)
    layer = 'layer {{\n  name: "relu{i}"\n  type: "ReLU"\n  bottom: "conv{i}"\n  top: "conv{i}"\n}}\n'
    text = "".join(layer.format(i=i) for i in range(10_000))
    peak, msg = _peak_bytes(lambda: prototxt.loads(text, file="big.prototxt"))
    assert len(msg.getall("layer")) == 10_000 and peak < 10 * len(text)
    last = msg.getall("layer")[-1]
    assert last.where("top") == (6 * 9_999 + 5, 3) and last.line == 6 * 9_999 + 1
    with pytest.raises(PrototxtError, match=rf"big.prototxt:{6 * 9_999 + 2}:3: 'name' must be an integer"):
        last.get_int("name")
