"""The `fcn` command (fcn_caffe_repro/cli): every subcommand's --help, exit status 2 on a usage
error, and one clear line, no traceback, for a missing file, a wrong net name and an unwritable
output (--verbose shows the traceback)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CAFFE_REF
from fcn_caffe_repro import __version__
from fcn_caffe_repro.cli import main as fcn
from fcn_caffe_repro.errors import NetError

ROOT = Path(__file__).resolve().parents[1]
NET = CAFFE_REF / "nets" / "voc-fcn8s"
TINY = ["--width-divisor", "16"]


def test_top_level_help_and_version(capsys):
    assert fcn.main([]) == 2
    assert fcn.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in fcn.COMMANDS)
    assert fcn.main(["--version"]) == 0 and __version__ in capsys.readouterr().out
    assert fcn.main(["fly"]) == 2 and "unknown subcommand 'fly'" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(fcn.COMMANDS))
def test_every_subcommand_has_help_with_an_example(name, capsys):
    try:
        code = fcn.main([name, "--help"])
    except SystemExit as e:
        code = e.code
    assert code == 0
    out = capsys.readouterr().out
    assert f"fcn {name}" in out and f"\n    fcn {name} " in out  # an indented example line


@pytest.mark.parametrize("name", list(fcn.COMMANDS))
def test_usage_error_exits_2(name, capsys):
    try:
        code = fcn.main([name, "--no-such-option"])
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """Files the bad-input cases point at: an image, a results.json, a regular file that blocks a
    folder (an unwritable output even for root)."""
    d = tmp_path_factory.mktemp("cli")
    Image.fromarray(np.full((40, 48, 3), 120, np.uint8)).save(d / "photo.png")
    (d / "results.json").write_text(json.dumps({"tasks": {"label": {"classes": ["a", "b"],
                                                                     "per_class_iu": {"a": 1.0, "b": 2.0}}}}))
    (d / "blocker").write_text("a file where a folder is asked for")
    (d / "bad.prototxt").write_text("layer { name: 'x' type: \n")
    return d


def cases(d):
    missing, block = str(d / "missing.caffemodel"), str(d / "blocker" / "out")
    img, w, proto = str(d / "photo.png"), str(NET / "weights.caffemodel"), str(NET / "net.prototxt")
    synth = ["--dataset", "synthetic", "--data-opt", "n=1", "--data-opt", "size=32", "--num-classes", "6", "--quiet"]
    return {
        "missing file": {
            "reproduce": ["--quick", "--classifier", missing, "--out", str(d / "r")],
            "train": ["--net", "voc-fcn32s", *TINY, *synth, "--init", missing, "--out", str(d / "t")],
            "eval": ["--net", "voc-fcn8s", *TINY, *synth, "--weights", missing, "--out", str(d / "e")],
            "infer": [str(d / "missing.jpg"), *TINY, "--out-dir", str(d / "i")],
            "convert": [missing, "--net", "voc-fcn8s"],
            "upgrade": [missing, str(d / "u.prototxt")],
            "weights": ["verify", missing],
            "export": ["--net", "voc-fcn8s", *TINY, "--weights", missing, "-o", str(d / "x.onnx")],
            "plot": ["iu", "--results", f"a={missing}", "--out", str(d / "p.png")],
        },
        "wrong net or input": {
            "reproduce": ["--dataset", "voc", "--root", str(d), "--weights", f"voc-fcn99s={w}"],
            "train": ["--net", "voc-fcn99s", *synth],
            "eval": ["--net", "voc-fcn99s", *synth],
            "infer": ["--net", "voc-fcn99s", img],
            "convert": [w, "--net", "voc-fcn99s"],
            "upgrade": [str(d / "bad.prototxt"), str(d / "u.prototxt")],
            "weights": ["verify", str(d / "photo.png")],  # exit 1: an unknown file
            "export": ["--net", "voc-fcn99s"],
            "plot": ["figure", "--dataset", "imagenet", "--pred", f"a={d}"],
        },
        "unwritable output": {
            "reproduce": ["--quick", "--out", block],
            "train": ["--net", "voc-fcn32s", *TINY, *synth, "--max-iter", "1", "--out", block],
            "eval": ["--net", "voc-fcn8s", *TINY, *synth, "--out", block],
            "infer": [img, *TINY, "--out-dir", block],
            "convert": [w, "--prototxt", proto, "-o", block + "/w.safetensors", "--no-verify"],
            "upgrade": [proto, block + "/u.prototxt"],
            "weights": ["--cache-dir", block, "fetch", "fcn8s-heavy-pascal", "--url", "http://127.0.0.1:9/x"],
            "export": ["--net", "voc-fcn8s", *TINY, "--height", "32", "--width", "32", "-o", block + "/x.onnx",
                       "--no-check"],
            "plot": ["iu", "--results", f"a={d / 'results.json'}", "--out", block + "/p.png"],
        },
    }


@pytest.mark.parametrize("kind", ["missing file", "wrong net or input", "unwritable output"])
@pytest.mark.parametrize("name", [c for c in fcn.COMMANDS if c != "bench"])
def test_bad_input_gives_one_line_and_nonzero_exit(kind, name, place, capsys):
    argv = [name, *cases(place)[kind][name]]
    code = fcn.main(argv)
    err = capsys.readouterr().err
    assert code == 1, (argv, err)
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    if name == "weights" and kind == "wrong net or input":
        return  # verify of an unknown file reports on stdout, exit 1
    assert len(errors) == 1 and errors[0].startswith(f"fcn {name}: error: "), err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["convert", "upgrade", "infer", "export"])
def test_output_that_is_an_input_gives_one_line(name, tmp_path, capsys):
    """A writer refuses to replace its input (issue16's same-file guard) with one line, exit 1,
    before any work; the input is untouched."""
    if name == "convert":
        src = tmp_path / "w.caffemodel"
        src.write_bytes((NET / "weights.caffemodel").read_bytes())
        argv = [str(src), "--prototxt", str(NET / "net.prototxt"), "-o", str(src)]
    elif name == "upgrade":
        src = tmp_path / "net.prototxt"
        src.write_text((NET / "net.prototxt").read_text())
        argv = [str(src), str(tmp_path / "." / "net.prototxt")]
    elif name == "export":
        src = tmp_path / "w.caffemodel"
        src.write_bytes((NET / "weights.caffemodel").read_bytes())
        argv = ["--prototxt", str(NET / "net.prototxt"), "--weights", str(src), "-o", str(src)]
    else:
        src = tmp_path / "photo.png"
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(src)
        argv = [str(src), *TINY, "--out-dir", str(tmp_path)]
    before = src.read_bytes()
    assert fcn.main([name, *argv]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"fcn {name}: error: ") and "the output is the input" in err, err
    assert "Traceback" not in err and src.read_bytes() == before


def test_verbose_shows_the_traceback():
    with pytest.raises(NetError, match="voc-fcn99s"):
        fcn.main(["export", "--net", "voc-fcn99s", "--verbose"])


def test_python_m_and_tools_run_from_another_directory(tmp_path):
    """The installed layout: `python -m fcn_caffe_repro` (what the fcn script runs) and the thin
    tools/*.py from outside the tree; a bad net gives one line on stderr and exit 1."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "fcn_caffe_repro", "weights", "list"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "fcn8s-heavy-pascal" in r.stdout
    r = subprocess.run([sys.executable, str(ROOT / "tools/eval.py"), "--net", "voc-fcn99s", "--dataset", "synthetic"],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("eval.py: error: unknown net 'voc-fcn99s'")


def test_console_script_is_declared():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["fcn"] == "fcn_caffe_repro.cli.main:main"
    assert {"test", "export"} <= set(project["optional-dependencies"])
    assert "version" in project["dynamic"]
