"""The prototxt reader under mutation: every mutated version of every prototxt in prototxt/ either
parses to a net (or solver) or gives a PrototxtError / NetError naming the place, never another
exception, in bounded time and memory."""
import time
import tracemalloc
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from fcn_caffe_repro.caffe import prototxt
from fcn_caffe_repro.caffe.proto import check_fields
from fcn_caffe_repro.caffe.spec import NetSpec
from fcn_caffe_repro.errors import CaffeError, NetError, PrototxtError
from fcn_caffe_repro.solver.params import solver_params

FILES = sorted((Path(__file__).resolve().parents[1] / "prototxt").glob("*/*.prototxt"))
TEXTS = {p: p.read_text() for p in FILES}
PIECES = ["{", "}", "<", ">", "[", "]", ":", ";", ",", '"', "'", "\\", "#", "\n", "-", "+", "0x", "1e999", "inf",
          "-nan", "layer {", "kernal_size: 5", "num_output: -2", "stride: 0", "99999999999999999999999",
          "2147483647", "include { phase: TRAIN }", 'top: "data"', 'bottom: "nowhere"', "a {" * 150,
          "\x00", "é", "\\x", "\\777", '"\\', "layers { type: CONVOLUTION }", "input_dim: 1"]

_mutation = st.tuples(st.sampled_from(["delete", "insert", "duplicate", "number"]),
                      st.floats(0, 1), st.integers(1, 40), st.sampled_from(PIECES) | st.text(max_size=6))


def mutate(text, mutations):
    for kind, where, n, piece in mutations:
        i = int(where * len(text))
        if kind == "delete":
            text = text[:i] + text[i + n:]
        elif kind == "insert":
            text = text[:i] + piece + text[i:]
        elif kind == "duplicate":
            text = text[:i] + text[i:i + n] + text[i:]
        else:  # the next number becomes another
            j = next((k for k in range(i, len(text)) if text[k].isdigit()), None)
            if j is not None:
                k = j
                while k < len(text) and text[k].isdigit():
                    k += 1
                text = text[:j] + str([0, -1, n, 2 ** 31 - 1, 2 ** 64, 10 ** 30][n % 6]) + text[k:]
    return text


def outcome(path, text):
    """'parsed' or the error's kind; anything but the project's errors propagates."""
    try:
        msg = prototxt.loads(text, file=path.name)
        if path.name == "solver.prototxt":
            solver_params(msg)
            return "parsed"
        spec = NetSpec.from_message(check_fields(msg, "NetParameter"), file=path.name)
        for phase in ("train", "test"):
            spec.for_phase(phase)
        return "parsed"
    except PrototxtError as e:
        assert e.file == path.name and e.line is not None, str(e)
        return "PrototxtError"
    except NetError:
        return "NetError"
    except CaffeError:
        if path.name != "solver.prototxt":  # a solver's settings checks: CaffeError naming the setting
            raise
        return "CaffeError"


def test_there_is_something_to_fuzz():
    assert len(FILES) >= 40 and all(outcome(p, t) == "parsed" for p, t in TEXTS.items())


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FILES), st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_prototxts_parse_or_fail_clearly(path, mutations):
    text = mutate(TEXTS[path], mutations)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        outcome(path, text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5
    assert peak < 200 * len(text) + (1 << 20)
