"""Caffe's SGD solver.

    sgd.py       SGDSolver: the update (momentum, weight decay, clipping, iter_size), smoothed loss
    params.py    SolverParameter: defaults, checks, lr policies, reading solver files
    snapshot.py  the snapshot file: save (atomic), load, restore into a solver, export .caffemodel
    rng.py       the global random generators: seeding (seed + process rank), capture, restore
"""
from .params import DEFAULTS, POLICIES, check_params, learning_rate, read_solver_prototxt, solver_params
from .rng import rng_state, seed_everything, set_rng_state
from .sgd import NonFiniteLoss, SGDSolver
from .snapshot import SNAPSHOT_FORMAT, SnapshotError, atomic_save, load_snapshot

__all__ = ["SGDSolver", "NonFiniteLoss", "SnapshotError", "learning_rate", "read_solver_prototxt", "solver_params",
           "check_params", "atomic_save", "load_snapshot", "seed_everything", "rng_state", "set_rng_state",
           "DEFAULTS", "POLICIES", "SNAPSHOT_FORMAT"]
