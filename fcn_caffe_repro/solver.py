"""Caffe's SGDSolver: the same update, learning-rate policies and gradient accumulation, plus
snapshots that resume bit for bit.

One iteration (Caffe's Solver::Step + SGDSolver::ApplyUpdate), per learnable blob w with
multipliers (lr_mult, decay_mult):

    diff  = sum of the gradients of the iter_size forward/backward passes   (ClearParamDiffs first)
    [gradient hooks, e.g. the multi-process average of distributed.py]       (on_gradients_ready)
    diff *= clip_gradients / ||diff||   if clip_gradients >= 0 and the global L2 norm exceeds it
    diff /= iter_size                                                        (Normalize)
    diff += weight_decay * decay_mult * w        (L2; sign(w) for "L1")      (Regularize)
    v     = momentum * v + rate * lr_mult * diff                              (ComputeUpdateValue)
    w    -= v                                                                 (Net::Update)

Blobs with lr_mult 0 get no gradient (Caffe sets param_propagate_down false for them) and are
never touched, weight decay included. The loss returned by `step` is the mean over the iter_size
passes, as Caffe reports it.
"""
import math
import os
import random
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write
from .caffe import prototxt
from .errors import CaffeError, PrototxtError

SNAPSHOT_FORMAT = "fcn_caffe_repro.solverstate/1"

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


class NonFiniteLoss(CaffeError, FloatingPointError):
    """The loss or a gradient is NaN or infinite: the update was not applied."""

    def __init__(self, message, iteration=None, loss=None, snapshot=None):
        self.iteration, self.loss, self.snapshot = iteration, loss, snapshot
        keep = f"; the last good snapshot is {snapshot}" if snapshot else "; no snapshot was written yet"
        super().__init__(f"iteration {iteration}: {message}; weights not updated{keep}")


class SnapshotError(CaffeError, ValueError):
    """A solver snapshot that cannot be read or does not fit the net."""

    def __init__(self, message, file=None):
        self.file, self.reason = file, message
        super().__init__(f"{file}: {message}" if file else message)


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
    params = {k: (list(v) if isinstance(v, list) else v) for k, v in DEFAULTS.items()}
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


class _instance_or_class:
    """A method that, called on the class instead of an instance, becomes `cls.from_snapshot`."""

    def __init__(self, fn):
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __get__(self, obj, cls):
        if obj is None:
            return cls.from_snapshot
        return self.fn.__get__(obj, cls)


class SGDSolver:
    """Caffe's SGD on a CaffeNet. `SGDSolver(net, base_lr=1e-10, lr_policy="fixed", momentum=0.99,
    weight_decay=5e-4, ...)` takes SolverParameter fields by name, with caffe.proto's defaults."""

    def __init__(self, net, **params):
        unknown = [k for k in params if k not in DEFAULTS]
        if unknown:
            raise CaffeError(f"unknown solver parameter(s) {unknown}")
        self.params = {k: (list(v) if isinstance(v, list) else v) for k, v in DEFAULTS.items()}
        self.params.update(params)
        check_params(self.params)
        self.net = net
        self.iter = 0
        self.gradient_hooks = []  # f(solver, loss) -> loss, run once the gradients are summed
        self.last_snapshot = None
        self._losses, self.smoothed_loss, self._start_iter = [], 0.0, 0
        if self.params["random_seed"] >= 0:
            seed_everything(self.params["random_seed"] + _rank())  # Caffe: seed + solver_rank
        self.learnable = self._learnable_blobs(net)
        self.history = [torch.zeros_like(p, memory_format=torch.contiguous_format)
                        for _, _, p, _, _ in self.learnable]

    @staticmethod
    def _learnable_blobs(net):
        """[(layer, blob index, tensor, lr_mult, decay_mult)] of blobs with lr_mult != 0; the
        others stop receiving gradients, as in Caffe."""
        out, seen = [], set()
        for layer, module in net.layer_modules():
            for i, (blob, (lr_mult, decay_mult)) in enumerate(zip(module.blobs(), module.lr_mults)):
                if id(blob) in seen:
                    continue
                seen.add(id(blob))
                if lr_mult == 0:
                    blob.requires_grad_(False)
                    continue
                blob.requires_grad_(True)
                out.append((layer, i, blob, float(lr_mult), float(decay_mult)))
        return out

    @classmethod
    def from_prototxt(cls, path, net=None, weights=None):
        """A solver from a Caffe solver file. Without `net`, the train net named by the file
        (train_net / net, relative to the solver's folder) is built in the TRAIN phase, after
        seeding with random_seed as Caffe does. `weights`: a .caffemodel to load into it; without
        it, the file's own `weights` entries (if any) are loaded in order, as Caffe does."""
        from .caffe.spec import NetSpec
        from .net import CaffeNet

        params, source, msg = read_solver_prototxt(path)
        check_params(params)
        if net is None:
            if params["random_seed"] >= 0:
                seed_everything(params["random_seed"] + _rank())
            spec = (NetSpec.from_prototxt(source[1]) if source[0] == "path"
                    else NetSpec.from_message(source[1], file=str(path)))
            net = CaffeNet(spec, phase="train")
        if weights is not None:
            net.load_caffemodel(weights)
        else:
            for w in msg.getall("weights"):
                w = Path(str(w))
                net.load_caffemodel(w if w.is_absolute() else Path(path).parent / w, strict=False)
        return cls(net, **params)

    # --- the iteration ---------------------------------------------------------------------------
    def lr(self, it=None):
        """The learning rate of the update at iteration `it` (default: the next one)."""
        return learning_rate(self.params, self.iter if it is None else it)

    def step(self, batches=None, **inputs):
        """One Caffe iteration. With iter_size 1: `step(data=..., label=...)`. With iter_size n:
        `step([inputs_1, ..., inputs_n])`, one dict of net inputs per forward/backward pass (a
        list of one dict also works for iter_size 1). Returns the loss, averaged over the passes."""
        batches = self._batches(batches, inputs)
        for _, _, p, _, _ in self.learnable:  # ClearParamDiffs
            p.grad = None
        loss = 0.0
        for batch in batches:
            objective = self.net.objective(self.net(return_blobs=True, **batch))
            objective.backward()
            loss += float(objective.detach())
        loss /= len(batches)
        for hook in self.gradient_hooks:
            loss = hook(self, loss)
        self._check_finite(loss)
        self._apply_update()
        self._update_smoothed_loss(loss)
        return loss

    def _batches(self, batches, inputs):
        n = self.params["iter_size"]
        if batches is None:
            if n != 1:
                raise CaffeError(f"iter_size is {n}: pass step([inputs_1, ..., inputs_{n}])")
            return [inputs]
        if inputs:
            raise CaffeError("give either a list of input dicts or keyword inputs, not both")
        batches = list(batches)
        if len(batches) != n or not all(isinstance(b, dict) for b in batches):
            raise CaffeError(f"step() needs a list of iter_size = {n} input dicts, got "
                             f"{len(batches)} item(s)")
        return batches

    def _check_finite(self, loss):
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"the loss is {loss}", self.iter, loss, self.last_snapshot)
        grads = [p.grad for _, _, p, _, _ in self.learnable if p.grad is not None]
        if grads and not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            bad = next((l, i) for l, i, p, _, _ in self.learnable
                       if p.grad is not None and not bool(torch.isfinite(p.grad).all()))
            raise NonFiniteLoss(f"the loss is {loss} but the gradient of layer '{bad[0]}' blob "
                                f"{bad[1]} is not finite", self.iter, loss, self.last_snapshot)

    @torch.no_grad()
    def _apply_update(self):
        p = self.params
        rate = self.lr()
        self._clip_gradients()
        norm = float(np.float32(1.0) / np.float32(p["iter_size"]))
        momentum = float(np.float32(p["momentum"]))
        for (_, _, w, lr_mult, decay_mult), v in zip(self.learnable, self.history):
            if w.grad is None:
                w.grad = torch.zeros_like(w)
            diff = w.grad
            if p["iter_size"] != 1:
                diff.mul_(norm)
            local_decay = float(np.float32(p["weight_decay"]) * np.float32(decay_mult))
            if local_decay:
                diff.add_(w if p["regularization_type"] == "L2" else torch.sign(w), alpha=local_decay)
            local_rate = float(np.float32(rate) * np.float32(lr_mult))
            v.mul_(momentum).add_(diff, alpha=local_rate)
            w.sub_(v)
        self.iter += 1

    def _clip_gradients(self):
        clip = self.params["clip_gradients"]
        grads = [w.grad for _, _, w, _, _ in self.learnable if w.grad is not None]
        if clip < 0 or not grads:
            return
        l2 = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        if l2 > clip:
            torch._foreach_mul_(grads, clip / l2)

    def _update_smoothed_loss(self, loss):
        """Caffe's UpdateSmoothedLoss: the mean of the last average_loss losses."""
        n = self.params["average_loss"]
        if len(self._losses) < n:
            self._losses.append(loss)
            size = len(self._losses)
            self.smoothed_loss = (self.smoothed_loss * (size - 1) + loss) / size
        else:
            idx = (self.iter - 1 - self._start_iter) % n
            self.smoothed_loss += (loss - self._losses[idx]) / n
            self._losses[idx] = loss

    # --- snapshots -------------------------------------------------------------------------------
    def default_snapshot_path(self, suffix=".solverstate.pt"):
        """Caffe's naming: {snapshot_prefix}_iter_{iter}{suffix}."""
        return f"{self.params['snapshot_prefix'] or 'snapshot'}_iter_{self.iter}{suffix}"

    def snapshot_due(self):
        """Caffe snapshots after an update when iter % snapshot == 0 (snapshot > 0)."""
        return self.params["snapshot"] > 0 and self.iter % self.params["snapshot"] == 0

    def state_dict(self):
        """Everything a resumed run needs: weights, momentum history, iteration, smoothed-loss
        window and the RNG states (of every process when run distributed)."""
        from .distributed import gather_to_root

        return {
            "format": SNAPSHOT_FORMAT, "iter": self.iter, "params": dict(self.params),
            "net": self.net.to_prototxt(), "phase": self.net.phase,
            "weights": {f"{l}/{i}": w.detach().cpu().clone() for l, i, w in self._all_blobs()},
            "history": {f"{l}/{i}": v.detach().cpu().clone()
                        for (l, i, _, _, _), v in zip(self.learnable, self.history)},
            "losses": list(self._losses), "smoothed_loss": self.smoothed_loss,
            "start_iter": self._start_iter,
            "rng": gather_to_root(rng_state()),
        }

    def _all_blobs(self):
        for layer, module in self.net.layer_modules():
            for i, blob in enumerate(module.blobs()):
                yield layer, i, blob

    def snapshot(self, path=None):
        """Write the solver state to `path` atomically (temporary file, fsync, os.replace): an
        interrupted write leaves the previous snapshot intact. Under torch.distributed every
        process must call it (RNG states are gathered); process 0 writes. Returns the path."""
        from .distributed import barrier, is_root

        path = os.fspath(path or self.default_snapshot_path())
        state = self.state_dict()
        if is_root():
            atomic_save(state, path)
        barrier()  # no process reads it before it is there
        self.last_snapshot = path
        return path

    @_instance_or_class
    def restore(self, path):
        """`solver.restore(path)`: resume from a snapshot of this net (weights, momentum history,
        iteration, smoothed loss, RNG states; everything checked before anything is assigned).
        `SGDSolver.restore(path, net=None)`: the same as SGDSolver.from_snapshot."""
        state = load_snapshot(path)
        blobs = list(self._all_blobs())
        plan = []
        for key, tensors, targets in (
                ("weights", state["weights"], [(f"{l}/{i}", b) for l, i, b in blobs]),
                ("history", state["history"], [(f"{l}/{i}", v) for (l, i, _, _, _), v
                                               in zip(self.learnable, self.history)])):
            names = {n for n, _ in targets}
            if set(tensors) != names:
                missing, extra = sorted(names - set(tensors)), sorted(set(tensors) - names)
                raise SnapshotError(f"{key} do not fit this net: missing {missing}, unexpected {extra}",
                                    path)
            for name, target in targets:
                t = tensors[name]
                if not torch.is_tensor(t) or tuple(t.shape) != tuple(target.shape):
                    raise SnapshotError(f"{key} '{name}' has shape {tuple(getattr(t, 'shape', ()))}; "
                                        f"the net has {tuple(target.shape)}", path)
                plan.append((target, t))
        rng = _pick_rng(state["rng"], path)
        with torch.no_grad():
            for target, t in plan:
                target.copy_(t)
        self.iter = int(state["iter"])
        self._losses = [float(x) for x in state["losses"]]
        self.smoothed_loss = float(state["smoothed_loss"])
        self._start_iter = int(state["start_iter"])
        if rng is not None:
            set_rng_state(rng)
        self.last_snapshot = os.fspath(path)
        return self

    @classmethod
    def from_snapshot(cls, path, net=None):
        """A solver rebuilt from a snapshot alone: its solver parameters, and its train net from
        the stored prototxt unless `net` is given."""
        from .net import CaffeNet

        state = load_snapshot(path)
        if net is None:
            net = CaffeNet(state["net"], phase=state["phase"])
        params = {k: v for k, v in state["params"].items() if k in DEFAULTS}
        params["random_seed"] = -1  # the RNG states come from the snapshot
        solver = cls(net, **params)
        solver.params["random_seed"] = state["params"].get("random_seed", -1)
        return solver.restore(path)

    def export_caffemodel(self, path):
        """The current weights as a V2 .caffemodel Caffe can load (written atomically)."""
        self.net.save_caffemodel(path)
        return os.fspath(path)


# --- snapshot files and RNG states ---------------------------------------------------------------
def atomic_save(obj, path):
    """torch.save through atomic.atomic_write: a killed run never leaves a partial snapshot."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def load_snapshot(path):
    """Read and check a snapshot file (tensors and plain data only: weights_only loading)."""
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SnapshotError("no such snapshot file", path) from None
    except Exception as e:  # torch raises many kinds for a damaged file
        raise SnapshotError(f"cannot read snapshot ({type(e).__name__}: {e})", path) from None
    if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"not a solver snapshot of format {SNAPSHOT_FORMAT}", path)
    missing = [k for k in ("iter", "params", "net", "phase", "weights", "history", "losses",
                           "smoothed_loss", "start_iter", "rng") if k not in state]
    if missing:
        raise SnapshotError(f"snapshot lacks {missing}", path)
    return state


def seed_everything(seed):
    """Seed torch (CPU and CUDA), numpy's and Python's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state():
    """The global RNG states: torch CPU (and CUDA when initialised), numpy, Python."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _pick_rng(states, path):
    """This process's RNG state from the gathered list; None (keep the current generators, with a
    warning) when the snapshot came from a different number of processes."""
    from .distributed import rank_and_world

    rank, world = rank_and_world()
    if len(states) != world:
        import warnings

        warnings.warn(f"{path}: snapshot taken with {len(states)} process(es), resuming with {world}: "
                      "the RNG states are not restored, so the run is not bit-exact", stacklevel=3)
        return None
    return states[rank]


def _rank():
    from .distributed import rank_and_world

    return rank_and_world()[0]


__all__ = ["SGDSolver", "NonFiniteLoss", "SnapshotError", "learning_rate", "read_solver_prototxt", "solver_params",
           "atomic_save", "load_snapshot", "seed_everything", "rng_state", "set_rng_state", "DEFAULTS",
           "POLICIES"]
