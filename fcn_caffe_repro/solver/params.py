"""Caffe's SolverParameter: its fields with caffe.proto's defaults, the checks Caffe makes, the
learning-rate policies, and reading solver files."""
import math
from pathlib import Path

import numpy as np

from ..caffe import prototxt
from ..errors import CaffeError, PrototxtError

# SolverParameter fields with caffe.proto's defaults (None: no default).
DEFAULTS = {
    "base_lr": 0.0, "lr_policy": None, "gamma": 0.0, "power": 0.0, "stepsize": 0, "stepvalue": [],
    "max_iter": 0, "momentum": 0.0, "weight_decay": 0.0, "regularization_type": "L2",
    "iter_size": 1, "clip_gradients": -1.0, "average_loss": 1, "display": 0,
    "snapshot": 0, "snapshot_prefix": "", "snapshot_after_train": True, "random_seed": -1,
    "type": "SGD",
    # read so that release solver files load; this solver does not act on them
    "test_iter": [], "test_interval": 0, "test_initialization": True, "test_compute_loss": False,
    "snapshot_diff": False, "snapshot_format": "BINARYPROTO", "solver_mode": "GPU", "device_id": 0,
    "debug_info": False, "layer_wise_reduce": True, "delta": 1e-8, "momentum2": 0.999,
    "rms_decay": 0.99,
}
_FLOAT = {"base_lr", "gamma", "power", "momentum", "weight_decay", "clip_gradients", "delta",
          "momentum2", "rms_decay"}
_INT = {"stepsize", "max_iter", "iter_size", "average_loss", "display", "snapshot", "random_seed",
        "test_interval", "device_id"}
_BOOL = {"snapshot_after_train", "test_initialization", "test_compute_loss", "snapshot_diff",
         "debug_info", "layer_wise_reduce"}
_ENUMS = {"snapshot_format": ["HDF5", "BINARYPROTO"], "solver_mode": ["CPU", "GPU"],
          "solver_type": ["SGD", "NESTEROV", "ADAGRAD", "RMSPROP", "ADADELTA", "ADAM"]}
_NET_FIELDS = ("net", "train_net", "net_param", "train_net_param")
# fields about test nets and weights files, handled by the caller (tools/train.py) if at all
_OTHER_FIELDS = {"test_net", "test_net_param", "test_state", "train_state", "weights"}
POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def defaults():
    """A fresh dict of caffe.proto's defaults (lists copied)."""
    return {k: (list(v) if isinstance(v, list) else v) for k, v in DEFAULTS.items()}


def learning_rate(p, it):
    """Caffe's SGDSolver::GetLearningRate at iteration `it` for SolverParameter dict `p`."""
    policy, base, gamma, power = p["lr_policy"], p["base_lr"], p["gamma"], p["power"]
    if policy == "fixed":
        rate = base
    elif policy == "step":
        rate = base * gamma ** (it // p["stepsize"])
    elif policy == "exp":
        rate = base * gamma ** it
    elif policy == "inv":
        rate = base * (1.0 + gamma * it) ** (-power)
    elif policy == "multistep":
        rate = base * gamma ** _multistep_count(p["stepvalue"], it)
    elif policy == "poly":
        rate = base * (1.0 - it / p["max_iter"]) ** power
    elif policy == "sigmoid":
        rate = base * (1.0 / (1.0 + math.exp(-gamma * (it - p["stepsize"]))))
    else:
        raise CaffeError(f"unknown lr_policy '{policy}' (one of {', '.join(POLICIES)})")
    return float(np.float32(rate))  # Caffe's Dtype rate


def _multistep_count(stepvalues, it):
    """Caffe's current_step_ for multistep: it advances at most one step per iteration, once
    iter >= stepvalue[current_step_]; so step k is reached at t_k = max(stepvalue[k], t_{k-1} + 1)."""
    count, t = 0, -1
    for v in stepvalues:
        t = max(v, t + 1)
        if t > it:
            break
        count += 1
    return count


def check_params(p):
    """Reject what Caffe would reject (CHECKs in GetLearningRate and Solver::Init)."""
    if p["type"] != "SGD":
        raise CaffeError(f"solver type '{p['type']}': only SGD is implemented")
    policy = p["lr_policy"]
    if policy is None:
        raise CaffeError(f"lr_policy must be given (Caffe has no default): one of {', '.join(POLICIES)}")
    if policy not in POLICIES:
        raise CaffeError(f"unknown lr_policy '{policy}' (one of {', '.join(POLICIES)})")
    if policy in ("step", "sigmoid") and p["stepsize"] <= 0:
        raise CaffeError(f"lr_policy '{policy}' needs stepsize > 0")
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and p["gamma"] < 0:
        raise CaffeError(f"lr_policy '{policy}' needs gamma >= 0")
    if policy == "poly" and p["max_iter"] <= 0:
        raise CaffeError("lr_policy 'poly' needs max_iter > 0")
    if p["iter_size"] < 1:
        raise CaffeError("iter_size must be >= 1")
    if p["average_loss"] < 1:
        raise CaffeError("average_loss should be non-negative and at least 1")
    if p["regularization_type"] not in ("L2", "L1"):
        raise CaffeError(f"unknown regularization_type '{p['regularization_type']}' (L2 or L1)")
    if list(p["stepvalue"]) != sorted(p["stepvalue"]):
        raise CaffeError("stepvalue must be increasing")


def read_solver_prototxt(path):
    """(params dict, train net source, message) from a Caffe solver file; the train net source is
    ('path', path) or ('message', NetParameter message). Relative net (and `weights`) paths are
    taken relative to the solver file's folder."""
    msg = prototxt.load(path)
    params, source = solver_params(msg)
    if source is None:
        raise PrototxtError(f"a solver needs exactly one of {', '.join(_NET_FIELDS)}", str(path))
    if source[0] == "path" and not Path(source[1]).is_absolute():
        source = ("path", str(Path(path).parent / source[1]))
    return params, source, msg


def solver_params(msg):
    """(params dict with caffe.proto's defaults, train net source or None) of a SolverParameter
    message; unknown fields are errors naming their line, as protobuf's parser would make them."""
    params = defaults()
    for key in msg.keys():
        if key in _FLOAT:
            params[key] = msg.get_float(key)
        elif key in _INT:
            params[key] = msg.get_int(key)
        elif key in _BOOL:
            params[key] = msg.get_bool(key)
        elif key in ("stepvalue", "test_iter"):
            params[key] = msg.getall_int(key)
        elif key in ("lr_policy", "regularization_type", "snapshot_prefix", "type"):
            params[key] = msg.get_str(key)
        elif key == "solver_type":
            params["type"] = {"NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                              "ADADELTA": "AdaDelta", "ADAM": "Adam"}.get(msg.get_enum(key, _ENUMS[key]), "SGD")
        elif key in _ENUMS:
            params[key] = msg.get_enum(key, _ENUMS[key])
        elif key not in _NET_FIELDS and key not in _OTHER_FIELDS:
            raise msg.error(f"unknown SolverParameter field '{key}'", key)
    state = msg.msg("train_state")
    if state.has("stage") or state.has("level"):
        raise msg.error("train_state stages and levels are not supported", "train_state")
    given = [k for k in _NET_FIELDS if msg.has(k)]
    if len(given) > 1:
        raise msg.error(f"a solver takes one of {', '.join(_NET_FIELDS)}; found {given}", given[1])
    if not given:
        return params, None
    key = given[0]
    return params, (("message", msg.msg(key)) if key.endswith("_param") else ("path", msg.get_str(key)))
