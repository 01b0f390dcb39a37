"""Caffe's SGDSolver: the same update, learning-rate policies and gradient accumulation.

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
import contextlib
import math
import os
from pathlib import Path

import numpy as np
import torch

from .. import border, fusion, heap, ops, relu_pool, step_arena
from ..caffe.proto import check_fields
from ..caffe.spec import NetSpec
from ..errors import CaffeError
from ..net import CaffeNet
from .params import DEFAULTS, check_params, defaults, learning_rate, read_solver_prototxt
from .rng import seed_everything
from .snapshot import export_caffemodel, load_snapshot, restore_solver, save_solver, solver_state


_NARROW = (torch.float32, torch.float16, torch.bfloat16)


def _l2_norm(grads):
    """The L2 norm of all gradients together (clip_gradients): one float32 norm per blob (Caffe's
    sumsq is a float32 dot too), combined in float64. A blob's float32 norm is inf for a NaN or
    inf gradient, and for finite ones whose norm passes float32's range: those are summed again
    in float64, so the result is finite exactly when every gradient is. (Float64 throughout cost
    1.9 against 0.2 ms for FCN fc6's gradient at width/16 in a training iteration.)"""
    norms = torch.stack(torch._foreach_norm(grads, 2)).double()
    if not bool(torch.isfinite(norms).all()):
        norms = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64))
    return float(torch.linalg.vector_norm(norms))


class NonFiniteLoss(CaffeError, FloatingPointError):
    """The loss or a gradient is NaN or infinite: the update was not applied."""

    def __init__(self, message, iteration=None, loss=None, snapshot=None):
        self.iteration, self.loss, self.snapshot = iteration, loss, snapshot
        keep = f"; the last good snapshot is {snapshot}" if snapshot else "; no snapshot was written yet"
        super().__init__(f"iteration {iteration}: {message}; weights not updated{keep}")


def _on_cpu(net):
    return all(p.device.type == "cpu" for p in net.parameters())


class SGDSolver:
    """Caffe's SGD on a CaffeNet. `SGDSolver(net, base_lr=1e-10, lr_policy="fixed", momentum=0.99,
    weight_decay=5e-4, ...)` takes SolverParameter fields by name, with caffe.proto's defaults.
    Other constructors: `from_prototxt` (a solver file), `from_snapshot` (a snapshot alone).
    Constructing one sets this process's memory policy for training (_memory_policy: glibc keeps
    freed memory; on a CPU net the step arena places each step's large blocks)."""

    def __init__(self, net, **params):
        unknown = [k for k in params if k not in DEFAULTS]
        if unknown:
            raise CaffeError(f"unknown solver parameter(s) {unknown}")
        self.params = defaults()
        self.params.update(params)
        check_params(self.params)
        self._step_memory = self._memory_policy(net)
        self._training_plan(net)
        self.net = net
        self.iter = 0
        self.gradient_hooks = []  # f(solver, loss) -> loss, run once the gradients are summed
        self.last_snapshot = None
        self._losses, self.smoothed_loss, self._start_iter = [], 0.0, 0
        if self.params["random_seed"] >= 0:
            seed_everything(self.params["random_seed"])
        self.learnable = self._learnable_blobs(net)
        self.history = [torch.zeros_like(p, memory_format=torch.contiguous_format)
                        for _, _, p, _, _ in self.learnable]

    @staticmethod
    def _memory_policy(net):
        """Every step frees and requests the same activations and gradients. glibc keeps freed
        memory in the process (heap.py), so they come back without page faults; on the CPU with
        the extension built, the step arena (step_arena.py) also places each step's large blocks by
        a plan recorded from an earlier step, so the kept heap does not fragment (full-width
        FCN-32s at 500x500: 2.26 GB in use at the step's peak, a 3.2 GB heap without it). Returns
        what each step runs inside."""
        heap.keep_freed_memory()
        if _on_cpu(net) and ops.extension_available():
            step_arena.install()
            return step_arena.step
        return contextlib.nullcontext

    @staticmethod
    def _training_plan(net):
        """On the CPU with the extension built, the net trains on three rewrites of its plan; the
        net's other steps stay as given.
        - Upsampling paths (Deconvolution -> Crop, with the Eltwise SUM of a skip) run through the
          fused op and its backward (fusion.py): a frozen bilinear deconvolution then runs
          depthwise, not as a C x C product (6.9 of the 46 ms of a width/16 FCN-32s iteration).
        - Each ReLU whose top only a MAX pooling reads runs together with that pooling, and other
          in-place ReLUs after a convolution run in place (relu_pool.py): the backward keeps the
          pooled top's sign instead of the ReLU's top (full-width FCN-32s at 500x500: 238 MB of
          such tops; the bytes in use at the iteration's peak went from 2.44 to 2.26 GB).
        - A net whose first convolution pads past its window's reach (FCN's conv1_1, pad 100)
          runs its first convolutions, ReLUs and poolings on maps without most of the constant
          border (border.py): a width/16 FCN-8s iteration on a 128-pixel image 24.4 -> 17.1 ms
          (one thread, A/B in one process).
        A net on another device trains on its layers (a rewritten plan it brings is undone): on an
        H200 the fused op's CUDA backward of the skip calls is launch-bound and no faster than the
        layers' (README, GPU section)."""
        on_cpu = _on_cpu(net)
        if on_cpu and ops.extension_available():
            net.set_plan(border.trunk_plan(relu_pool.fused_plan(fusion.fused_plan(net.plan)),
                                           keep=[*net.outputs, *net.loss_weights]))
        elif not on_cpu and any(isinstance(step.module, (fusion.FusedDeconvCropSum, border.Trunk))
                                for step in net.plan):
            fusion.fuse(net, enabled=False)

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
        params, source, msg = read_solver_prototxt(path)
        check_params(params)
        if net is None:
            if params["random_seed"] >= 0:
                seed_everything(params["random_seed"])
            spec = (NetSpec.from_prototxt(source[1]) if source[0] == "path"
                    else NetSpec.from_message(check_fields(source[1], "NetParameter"), file=str(path)))
            net = CaffeNet(spec, phase="train")
        if weights is not None:
            net.load_caffemodel(weights)
        else:
            for w in msg.getall("weights"):
                w = Path(str(w))
                net.load_caffemodel(w if w.is_absolute() else Path(path).parent / w, strict=False)
        return cls(net, **params)

    @classmethod
    def from_snapshot(cls, path, net=None):
        """A solver rebuilt from a snapshot alone: its solver parameters, and its train net from
        the stored prototxt unless `net` is given; then restored from it."""
        state = load_snapshot(path)
        if net is None:
            net = CaffeNet(state["net"], phase=state["phase"])
        params = {k: v for k, v in state["params"].items() if k in DEFAULTS}
        params["random_seed"] = -1  # the RNG states come from the snapshot
        solver = cls(net, **params)
        solver.params["random_seed"] = state["params"].get("random_seed", -1)
        return solver.restore(path)

    # --- the iteration ---------------------------------------------------------------------------
    def lr(self, it=None):
        """The learning rate of the update at iteration `it` (default: the next one)."""
        return learning_rate(self.params, self.iter if it is None else it)

    def step(self, batches=None, **inputs):
        """One Caffe iteration. With iter_size 1: `step(data=..., label=...)`. With iter_size n:
        `step([inputs_1, ..., inputs_n])`, one dict of net inputs per forward/backward pass (a
        list of one dict also works for iter_size 1). Returns the loss, averaged over the passes."""
        batches = self._batches(batches, inputs)
        with self._step_memory():
            for _, _, p, _, _ in self.learnable:  # ClearParamDiffs
                p.grad = None
            loss = 0.0
            for batch in batches:
                objective = self.net.objective(self.net(return_blobs=self.net.loss_weights, **batch))
                objective.backward()
                loss += float(objective.detach())
            loss /= len(batches)
            for hook in self.gradient_hooks:
                loss = hook(self, loss)
            l2 = self._check_finite(loss)
            self._apply_update(l2)
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
        """Raise NonFiniteLoss if the loss or a gradient is not finite. Returns the gradients' L2
        norm when it was computed here (float32 or narrower gradients; else None)."""
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"the loss is {loss}", self.iter, loss, self.last_snapshot)
        grads = [p.grad for _, _, p, _, _ in self.learnable if p.grad is not None]
        if not grads:
            return None
        l2 = None
        if all(g.dtype in _NARROW for g in grads):
            # the L2 norm (which the clip needs) is finite exactly when every gradient is (_l2_norm);
            # it reads the gradients faster than max |g| does (52 against 188 ms for full-width
            # FCN-32s's 537 MB of gradients, 2 threads, an Intel Xeon)
            l2 = _l2_norm(grads)
            finite = math.isfinite(l2)
        else:  # max |g| per blob (NaN if any is NaN), checked at once: one read of each, one sync
            finite = bool(torch.isfinite(torch.stack(torch._foreach_norm(grads, math.inf))).all())
        if not finite:
            bad = next((l, i) for l, i, p, _, _ in self.learnable
                       if p.grad is not None and not bool(torch.isfinite(p.grad).all()))
            raise NonFiniteLoss(f"the loss is {loss} but the gradient of layer '{bad[0]}' blob "
                                f"{bad[1]} is not finite", self.iter, loss, self.last_snapshot)
        return l2

    @torch.no_grad()
    def _apply_update(self, l2=None):
        """Clip, regularise, momentum, update: the per-blob arithmetic of Caffe's ApplyUpdate, run
        as one call per group of blobs with the same multipliers (torch._foreach_*: the same
        kernels, so the same rounding, without a Python round trip per blob and operation).
        `l2`: the gradients' norm if already computed."""
        p = self.params
        rate = self.lr()
        self._clip_gradients(l2)
        norm = float(np.float32(1.0) / np.float32(p["iter_size"]))
        momentum = float(np.float32(p["momentum"]))
        groups = {}  # (lr_mult, decay_mult): [(blob, its history)]
        for (_, _, w, lr_mult, decay_mult), v in zip(self.learnable, self.history):
            groups.setdefault((lr_mult, decay_mult), []).append((w, v))
        for (lr_mult, decay_mult), members in groups.items():
            ws, vs = [w for w, _ in members], [v for _, v in members]
            for w in ws:
                if w.grad is None:
                    w.grad = torch.zeros_like(w)
            diffs = [w.grad for w in ws]
            if p["iter_size"] != 1:
                torch._foreach_mul_(diffs, norm)
            local_decay = float(np.float32(p["weight_decay"]) * np.float32(decay_mult))
            if local_decay:
                torch._foreach_add_(diffs, ws if p["regularization_type"] == "L2" else torch._foreach_sign(ws),
                                    alpha=local_decay)
            local_rate = float(np.float32(rate) * np.float32(lr_mult))
            torch._foreach_mul_(vs, momentum)
            torch._foreach_add_(vs, diffs, alpha=local_rate)
            torch._foreach_sub_(ws, vs)
        self.iter += 1

    def _clip_gradients(self, l2=None):
        clip = self.params["clip_gradients"]
        grads = [w.grad for _, _, w, _, _ in self.learnable if w.grad is not None]
        if clip < 0 or not grads:
            return
        l2 = _l2_norm(grads) if l2 is None else l2
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

    # --- snapshots (the format is snapshot.py's) -------------------------------------------------
    def default_snapshot_path(self, suffix=".solverstate.pt"):
        """Caffe's naming: {snapshot_prefix}_iter_{iter}{suffix}."""
        return f"{self.params['snapshot_prefix'] or 'snapshot'}_iter_{self.iter}{suffix}"

    def state_dict(self):
        """Everything a resumed run needs: weights, momentum history, iteration, smoothed-loss
        window and the RNG states (of every process when run distributed)."""
        return solver_state(self)

    def snapshot(self, path=None):
        """Write the solver state to `path` atomically: an interrupted write leaves the previous
        snapshot intact. Under torch.distributed every process must call it (RNG states are
        gathered); process 0 writes. Returns the path."""
        path = os.fspath(path or self.default_snapshot_path())
        save_solver(self, path)
        self.last_snapshot = path
        return path

    def restore(self, path):
        """Resume from a snapshot of this net (weights, momentum history, iteration, smoothed
        loss, RNG states; everything checked before anything is assigned). Returns self."""
        restore_solver(self, path)
        self.last_snapshot = os.fspath(path)
        return self

    def export_caffemodel(self, path):
        """The current weights as a V2 .caffemodel Caffe can load (written atomically)."""
        return export_caffemodel(self.net, path)
