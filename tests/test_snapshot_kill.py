"""A training run killed at every write step of a snapshot (the process ends there, as kill -9
ends it: no cleanup runs) resumes from the newest complete snapshot, leaves no temporary behind,
and continues bit-exact; a damaged newest snapshot is skipped with a warning."""
import builtins
import os
import shutil

import pytest
import torch

from fcn_caffe_repro import training
from fcn_caffe_repro.solver import SnapshotError
from test_solver import weights
from test_training import trainer

KILLED = 137


@pytest.fixture(autouse=True)
def one_thread():
    """The killed runs are forked children: a child that enters an OpenMP parallel region of a
    pool its parent started hangs (GNU libgomp is not fork-safe), so every run of this module,
    parent and child alike, computes on one thread (which also keeps them bit-comparable)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class _Counting:
    """A writable file with three steps: its first write (an empty file before it), and its
    close (a partial file before it, all written after); writes in between are like the first."""

    def __init__(self, f, step):
        self._f, self._step, self._written = f, step, False

    def write(self, data):
        if not self._written:
            self._step()
            self._written = True
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._step()
        self._f.close()


def _die_at_step(k):
    """In this (forked) process: end the process at the k-th write step of a snapshot (creating,
    writing, closing, syncing, renaming or removing a file or folder)."""
    seen = [0]
    active = [False]

    def step():
        if active[0]:
            seen[0] += 1
            if seen[0] == k:
                os._exit(KILLED)

    def wrap(fn):
        def wrapped(*a, **kw):
            step()
            return fn(*a, **kw)
        return wrapped

    for mod, name in [(os, "mkdir"), (os, "rename"), (os, "replace"), (os, "fsync"), (os, "unlink"),
                      (shutil, "rmtree")]:
        setattr(mod, name, wrap(getattr(mod, name)))
    real_open = builtins.open

    def counting_open(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        if any(c in mode for c in "wxa+"):
            step()
            return _Counting(f, step)
        return f

    builtins.open = counting_open
    real_snapshot = training.Trainer.snapshot

    def snapshot(self):
        active[0] = True
        try:
            return real_snapshot(self)
        finally:
            active[0] = False

    training.Trainer.snapshot = snapshot


def _killed_run(folder, k, work):
    """`work(folder)` in a forked process killed at step k of a snapshot; the exit status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _die_at_step(k)
            work(folder)
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _leftovers(folder):
    snaps = folder / "snapshots"
    tmp = [p.name for p in snaps.iterdir() if p.name.startswith(".")]
    tmp += [f"{p.name}/{q.name}" for p in snaps.iterdir() if p.is_dir() for q in p.iterdir() if q.name.endswith(".tmp")]
    return tmp


def _kill_at_every_step(tmp_path, base, work, observe):
    """For k = 1, 2, ...: a copy of the run `base`, `work` on it killed at write step k of its
    snapshot, then a resume, which must leave no temporary and units of exactly their two files,
    and training on to 6, which must give the weights of a run never stopped. Stops after the
    first `work` that was not killed (every step was reached). Returns, per k, (`observe(run)`
    after the resume, the iteration resumed at)."""
    straight = trainer(tmp_path / "straight", 6, snapshot_every=2)
    straight.run()
    expected = weights(straight.solver.net)
    outcomes = []
    for k in range(1, 1000):
        run = tmp_path / f"k{k}"
        shutil.copytree(base, run)
        status = _killed_run(run, k, work)
        assert status in (KILLED, 0), status
        t = trainer(run, 6, snapshot_every=2)
        assert t.resume()
        assert _leftovers(run) == [], k
        for unit in (run / "snapshots").iterdir():
            assert sorted(p.name for p in unit.iterdir()) == [f"{unit.name}.caffemodel", f"{unit.name}.solverstate.pt"]
        outcomes.append((observe(run), t.solver.iter))
        t.run()
        got = weights(t.solver.net)
        assert all(torch.equal(w, got[n]) for n, w in expected.items()), k
        shutil.rmtree(run)
        if status == 0:
            break
    assert status == 0 and len(outcomes) > 5  # every step was reached, then a run that was not killed
    return outcomes


def _train_on_to_4(folder):
    t = trainer(folder, 4, snapshot_every=2)
    t.resume()
    t.run()


def test_kill_at_every_write_step_of_a_snapshot(tmp_path):
    base = tmp_path / "base"
    trainer(base, 2, snapshot_every=2).run()
    outcomes = _kill_at_every_step(tmp_path, base, _train_on_to_4,
                                   lambda run: (run / "snapshots" / "train_iter_4").is_dir())
    assert all(it == (4 if unit4 else 2) for unit4, it in outcomes)
    unit4 = [u for u, _ in outcomes]
    assert unit4 == sorted(unit4) and not unit4[0] and unit4[-1]  # complete from the rename on


def _stop_at_resume(folder):
    """Resume at 4 and stop (Ctrl-C) before the first iteration: the unit of 4 is written again."""
    t = trainer(folder, 6, snapshot_every=2)
    t.resume()
    t._on_sigint()
    t.run()


def _written_again(run):
    """Whether the unit of 4 in `run` is a new one (the old one's time was set to the epoch);
    None when there is no unit of 4."""
    state = run / "snapshots" / "train_iter_4" / "train_iter_4.solverstate.pt"
    return os.stat(state).st_mtime > 0 if state.exists() else None


def test_kill_at_every_write_step_of_a_snapshot_that_replaces_one(tmp_path):
    base = tmp_path / "base"
    trainer(base, 4, snapshot_every=2).run()
    os.utime(base / "snapshots" / "train_iter_4" / "train_iter_4.solverstate.pt", (0, 0))  # copytree keeps it
    outcomes = _kill_at_every_step(tmp_path, base, _stop_at_resume, _written_again)
    assert [it for _, it in outcomes] == [4] * len(outcomes), outcomes  # a complete unit of 4 at every step
    again = [w for w, _ in outcomes]
    assert again == sorted(again) and not again[0] and again[-1]  # written again, not kept


def test_damaged_newest_snapshot_is_skipped_with_a_warning(tmp_path):
    straight = trainer(tmp_path / "straight", 6, snapshot_every=2)
    straight.run()
    trainer(tmp_path / "run", 4, snapshot_every=2).run()
    newest = tmp_path / "run" / "snapshots" / "train_iter_4" / "train_iter_4.solverstate.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    t = trainer(tmp_path / "run", 6, snapshot_every=2)
    with pytest.warns(UserWarning, match=r"resuming from .*train_iter_2.solverstate.pt; newer snapshots did not load"):
        assert t.resume()
    assert t.solver.iter == 2
    t.run()
    assert all(torch.equal(w, weights(t.solver.net)[n]) for n, w in weights(straight.solver.net).items())
    (tmp_path / "run" / "snapshots" / "train_iter_6" / "train_iter_6.solverstate.pt").write_bytes(b"x")
    for unit in ("train_iter_2", "train_iter_4"):
        shutil.rmtree(tmp_path / "run" / "snapshots" / unit)
    with pytest.raises(SnapshotError, match="no snapshot loads"):
        trainer(tmp_path / "run", 6).resume()


def test_a_lone_solver_state_of_an_older_run_still_resumes(tmp_path):
    first = trainer(tmp_path / "run", 2, snapshot_every=2)
    first.run()
    unit = tmp_path / "run" / "snapshots" / "train_iter_2"
    os.replace(unit / "train_iter_2.solverstate.pt", tmp_path / "run" / "snapshots" / "train_iter_2.solverstate.pt")
    shutil.rmtree(unit)
    t = trainer(tmp_path / "run", 4)
    assert t.resume() and t.solver.iter == 2
