"""atomic.py: the same-file guard, regular-file opening, atomic folders, stale temporaries."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fcn_caffe_repro import atomic
from fcn_caffe_repro.caffe import caffemodel, prototxt
from fcn_caffe_repro.errors import CaffeError, CaffemodelError, PrototxtError


def test_atomic_write_refuses_its_source_and_hard_links(tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"precious")
    os.link(src, tmp_path / "hard.bin")
    for out in (src, tmp_path / "hard.bin", tmp_path / "." / "in.bin"):
        with pytest.raises(CaffeError, match="the output is the input"):
            with atomic.atomic_write(out, sources=[tmp_path / "in.bin"]) as f:
                f.write(b"x")
    assert src.read_bytes() == b"precious"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    with atomic.atomic_write(tmp_path / "other.bin", sources=[src]) as f:
        f.write(b"ok")
    assert (tmp_path / "other.bin").read_bytes() == b"ok"


READERS = [("fcn_caffe_repro.caffe.caffemodel", "read", "fcn_caffe_repro.errors", "CaffemodelError"),
           ("fcn_caffe_repro.caffe.prototxt", "load", "fcn_caffe_repro.errors", "PrototxtError"),
           ("fcn_caffe_repro.solver.snapshot", "load_snapshot", "fcn_caffe_repro.solver", "SnapshotError"),
           ("fcn_caffe_repro.data.common", "open_image", "fcn_caffe_repro.data.common", "DatasetError")]


@pytest.mark.parametrize("module, reader, error_module, error", READERS, ids=[r[1] for r in READERS])
def test_readers_refuse_a_fifo_without_blocking(tmp_path, module, reader, error_module, error):
    """Opening a FIFO for reading blocks until a writer comes: every reader refuses it at once."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code = (f"from {module} import {reader} as read\nfrom {error_module} import {error} as Error\n"
            f"try:\n    read({str(fifo)!r})\nexcept Error as e:\n    print('refused:', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert "refused:" in r.stdout and "not a regular file" in r.stdout and str(fifo) in r.stdout, r.stderr


@pytest.mark.parametrize("reader, error", [(caffemodel.read, CaffemodelError), (prototxt.load, PrototxtError)])
def test_readers_refuse_a_directory(tmp_path, reader, error):
    with pytest.raises(error, match="not a regular file"):
        reader(tmp_path)


def test_atomic_dir_is_all_or_nothing(tmp_path):
    target = tmp_path / "unit"
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(target) as d:
            (open(os.path.join(d, "a"), "wb")).close()
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []
    for content in (b"1", b"2"):
        with atomic.atomic_dir(target) as d:
            with open(os.path.join(d, "a"), "wb") as f:
                f.write(content)
        assert (target / "a").read_bytes() == content
    assert os.listdir(tmp_path) == ["unit"]


def test_remove_stale_takes_only_temporaries(tmp_path):
    (tmp_path / ".x.caffemodel.12.ab.tmp").write_bytes(b"")
    (tmp_path / ".d.12.ab.tmp").mkdir()
    (tmp_path / "keep.tmp").write_bytes(b"")
    (tmp_path / "keep.caffemodel").write_bytes(b"")
    removed = atomic.remove_stale(tmp_path)
    assert len(removed) == 2 and sorted(os.listdir(tmp_path)) == ["keep.caffemodel", "keep.tmp"]


def test_recover_aside_puts_back_a_folder_whose_replacement_never_arrived(tmp_path):
    (tmp_path / ".lost.replaced").mkdir()  # killed between moving `lost` aside and renaming the new one in
    (tmp_path / ".lost.replaced" / "a").write_bytes(b"old")
    (tmp_path / ".done.replaced").mkdir()  # killed after the new `done` was in place
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "a").write_bytes(b"new")
    assert atomic.recover_aside(tmp_path) == [str(tmp_path / "lost")]
    assert sorted(os.listdir(tmp_path)) == ["done", "lost"]
    assert (tmp_path / "lost" / "a").read_bytes() == b"old" and (tmp_path / "done" / "a").read_bytes() == b"new"
