"""The solver snapshot: one torch.save'd dict holding weights, momentum history, iteration,
smoothed-loss window, solver parameters, the train net's prototxt and every process's RNG states.
Written atomically; read with weights_only loading and checked before anything is assigned.

A training run's snapshot is one unit, a folder NAME/ holding NAME.solverstate.pt and
NAME.caffemodel, built under a temporary name and renamed into place (atomic.atomic_dir): a killed
run leaves complete units, temporaries, and a unit it was replacing moved aside; `restore_latest`
puts that one back and removes the temporaries before it restores the newest unit that loads,
saying so when it had to skip a newer one."""
import os
import re
import warnings

import torch

from ..atomic import atomic_dir, atomic_write, open_regular, recover_aside, remove_stale
from ..distributed import barrier, gather_to_root, is_root, rank_and_world
from ..errors import CaffeError
from .rng import rng_state, set_rng_state

SNAPSHOT_FORMAT = "fcn_caffe_repro.solverstate/1"
_KEYS = ("iter", "params", "net", "phase", "weights", "history", "losses", "smoothed_loss",
         "start_iter", "rng")


class SnapshotError(CaffeError, ValueError):
    """A solver snapshot that cannot be read or does not fit the net."""

    def __init__(self, message, file=None):
        self.file, self.reason = file, message
        super().__init__(f"{file}: {message}" if file else message)


def atomic_save(obj, path):
    """torch.save through atomic.atomic_write: a killed run never leaves a partial file."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def load_snapshot(path):
    """Read and check a snapshot file (tensors and plain data only: weights_only loading)."""
    if not os.path.exists(path):
        raise SnapshotError("no such snapshot file", path)
    try:
        with open_regular(path, OSError) as f:  # a FIFO or device would block the reader
            state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged file
        raise SnapshotError(f"cannot read snapshot ({type(e).__name__}: {e})", path) from None
    if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"not a solver snapshot of format {SNAPSHOT_FORMAT}", path)
    missing = [k for k in _KEYS if k not in state]
    if missing:
        raise SnapshotError(f"snapshot lacks {missing}", path)
    return state


def solver_state(solver):
    """The snapshot dict of an SGDSolver; under torch.distributed every process must call it (the
    RNG states are gathered)."""
    return {
        "format": SNAPSHOT_FORMAT, "iter": solver.iter, "params": dict(solver.params),
        "net": solver.net.to_prototxt(), "phase": solver.net.phase,
        "weights": {f"{l}/{i}": w.detach().cpu().clone() for l, i, w in _all_blobs(solver.net)},
        "history": {f"{l}/{i}": v.detach().cpu().clone()
                    for (l, i, _, _, _), v in zip(solver.learnable, solver.history)},
        "losses": list(solver._losses), "smoothed_loss": solver.smoothed_loss,
        "start_iter": solver._start_iter,
        "rng": gather_to_root(rng_state()),
    }


def save_solver(solver, path):
    """Write the snapshot of `solver` to `path`: every process calls it, process 0 writes, and no
    process returns before the file is there."""
    state = solver_state(solver)
    if is_root():
        atomic_save(state, path)
    barrier()


def restore_solver(solver, path):
    """Load snapshot `path` into `solver`, whose net must have the snapshot's blobs and shapes;
    everything is checked before anything is assigned."""
    state = load_snapshot(path)
    blobs = list(_all_blobs(solver.net))
    plan = []
    for key, tensors, targets in (
            ("weights", state["weights"], [(f"{l}/{i}", b) for l, i, b in blobs]),
            ("history", state["history"], [(f"{l}/{i}", v) for (l, i, _, _, _), v
                                           in zip(solver.learnable, solver.history)])):
        names = {n for n, _ in targets}
        if set(tensors) != names:
            missing, extra = sorted(names - set(tensors)), sorted(set(tensors) - names)
            raise SnapshotError(f"{key} do not fit this net: missing {missing}, unexpected {extra}", path)
        for name, target in targets:
            t = tensors[name]
            if not torch.is_tensor(t) or tuple(t.shape) != tuple(target.shape):
                raise SnapshotError(f"{key} '{name}' has shape {tuple(getattr(t, 'shape', ()))}; "
                                    f"the net has {tuple(target.shape)}", path)
            plan.append((target, t))
    rng = _this_process_rng(state["rng"], path)
    with torch.no_grad():
        for target, t in plan:
            target.copy_(t)
    solver.iter = int(state["iter"])
    solver._losses = [float(x) for x in state["losses"]]
    solver.smoothed_loss = float(state["smoothed_loss"])
    solver._start_iter = int(state["start_iter"])
    if rng is not None:
        set_rng_state(rng)


def export_caffemodel(net, path):
    """The net's current weights as a V2 .caffemodel Caffe can load (written atomically)."""
    net.save_caffemodel(path)
    return os.fspath(path)


def _all_blobs(net):
    for layer, module in net.layer_modules():
        for i, blob in enumerate(module.blobs()):
            yield layer, i, blob


def _this_process_rng(states, path):
    """This process's RNG state from the gathered list; None (keep the current generators, with a
    warning) when the snapshot came from a different number of processes."""
    rank, world = rank_and_world()
    if len(states) != world:
        warnings.warn(f"{path}: snapshot taken with {len(states)} process(es), resuming with {world}: "
                      "the RNG states are not restored, so the run is not bit-exact",
                      stacklevel=4)  # the caller of SGDSolver.restore
        return None
    return states[rank]


UNIT_RE = re.compile(r"_iter_(\d+)$")


def save_unit(solver, folder, name):
    """Snapshot `solver` as the unit folder/name/ (solver state + .caffemodel), all or nothing.
    Every process calls it (the RNG states are gathered); process 0 writes. Returns the path of
    the unit's solver state.

    An existing unit of that name is replaced, as Caffe writes an iteration's snapshot over the
    old one: the solver may have reached the iteration again from an older or a skipped
    (damaged) unit, so the old unit need not hold its state. The old unit stays recoverable
    until the new one is in place (atomic.atomic_dir), so a run killed meanwhile still resumes
    at this iteration."""
    state = solver_state(solver)
    final = os.path.join(os.fspath(folder), name)
    if is_root():
        with atomic_dir(final) as tmp:
            with open(os.path.join(tmp, name + ".solverstate.pt"), "xb") as f:
                torch.save(state, f)
            solver.net.save_caffemodel(os.path.join(tmp, name + ".caffemodel"))
    barrier()
    return os.path.join(final, name + ".solverstate.pt")


def complete_units(folder):
    """The solver states of the complete units in `folder`, newest (highest iteration) first; a
    lone NAME_iter_N.solverstate.pt (runs before snapshots were units) counts as one."""
    found = []
    if os.path.isdir(folder):
        for entry in os.listdir(folder):
            unit = os.path.join(folder, entry, entry + ".solverstate.pt")
            lone = os.path.join(folder, entry)
            if (m := UNIT_RE.search(entry)) and os.path.isfile(unit):
                found.append((int(m.group(1)), unit))
            elif entry.endswith(".solverstate.pt") and (m := UNIT_RE.search(entry[:-15])) and os.path.isfile(lone):
                found.append((int(m.group(1)), lone))
    return [path for _, path in sorted(found, reverse=True)]


def restore_latest(solver, folder):
    """Put back a unit a killed run was replacing and remove its temporaries in `folder`, then
    restore the newest unit that loads (a damaged one is skipped with a warning). Returns (path
    or None, [(skipped path, reason)]); raises SnapshotError when units exist but none loads."""
    if is_root():
        recover_aside(folder)
        remove_stale(folder)
    barrier()
    skipped = []
    for path in complete_units(folder):
        try:
            restore_solver(solver, path)
        except SnapshotError as e:
            skipped.append((path, e.reason))
            continue
        if skipped:
            warnings.warn(f"resuming from {path}; newer snapshots did not load: "
                          + "; ".join(f"{p}: {r}" for p, r in skipped), stacklevel=2)
        return path, skipped
    if skipped:
        raise SnapshotError("no snapshot loads: " + "; ".join(f"{p}: {r}" for p, r in skipped), folder)
    return None, skipped
