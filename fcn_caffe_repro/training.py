"""Training as the release's solve.py scripts do it, made safe to interrupt and to spread over
processes.

    solver = make_solver("voc-fcn32s", device="cuda")            # the release's solver.prototxt
    surgery.staged_init(solver.net, "vgg16.caffemodel")           # transplant + bilinear interp
    Trainer(solver, SBD(root), out="runs/fcn32s", val=VOC(root2)).run()

As many images per forward/backward pass as the net's data layer declares (one for the release's
Python layers, batch_size for a Data layer), drawn uniformly with replacement as the release's data
layers draw them (random.randint), but as a function of (seed, sample position), so a resumed run
and a multi-process run (distributed.py) take exactly the images an uninterrupted single process
would; `sample_offset` starts a run further along that sequence (a stage that continues another).
Snapshots every `snapshot` iterations (solver state + .caffemodel), validation every `val_every`
iterations with the paper's metrics, a JSON-lines log, and Ctrl-C stops after the current
iteration with a snapshot, as Caffe's SIGINT action does. A training item that fails to load, on
any process, stops every process with a snapshot of the iteration reached and a DatasetError.
"""
import json
import signal
import time
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .data.common import DatasetError, item_loader
from .errors import CaffeError, NetError
from .evaluate import Evaluator
from .net import CaffeNet
from .nets import net_spec, solver_spec
from .solver import NonFiniteLoss, SGDSolver, seed_everything, solver_params
from .solver.snapshot import complete_units, restore_latest, save_unit

def sample_index(seed, position, n):
    """The image index of global sample `position`: uniform over n, a pure function of both."""
    return int(np.random.default_rng([int(seed), int(position)]).integers(n))


def make_solver(net_name=None, solver_path=None, device="cpu", num_classes=None, width_divisor=1,
                overrides=None):
    """An SGDSolver with its train net on `device`: from a solver file (SGDSolver.from_prototxt),
    or from the registry (the net's train phase and the release's solver settings). `overrides`:
    solver fields to replace (e.g. max_iter)."""
    if solver_path is not None:
        solver = SGDSolver.from_prototxt(solver_path)
        net, params = solver.net, solver.params
    elif net_name is not None:
        params, _ = solver_params(solver_spec(net_name))
        if params["random_seed"] >= 0:
            seed_everything(params["random_seed"])
        net = CaffeNet(net_spec(net_name, "train", num_classes, width_divisor), phase="train")
    else:
        raise CaffeError("make_solver needs a net name or a solver file")
    return SGDSolver(net.to(device), **{**params, **(overrides or {})})


def net_inputs(net, tops, samples, device):
    """{net input: N×C×H×W tensor} from N dataset items (tuples ordered like `tops`), stacked as a
    data layer of batch N gives them; dense labels (H×W) become N×1×H×W float and class labels
    (scalars) N float, as the release's and Caffe's data layers shape them."""
    feeds = {}
    for k, top in enumerate(tops):
        if top not in net.inputs:
            continue
        values = [torch.as_tensor(sample[k]) for sample in samples]
        x = torch.stack([v.float() if v.dim() != 2 else v[None].float() for v in values])
        feeds[top] = x.to(device, non_blocking=True)
    missing = [t for t in net.inputs if t not in feeds]
    if missing:
        raise NetError(f"the dataset gives {list(tops)}; the net also needs {missing}")
    return feeds


def batch_size(net):
    """Images per forward pass: the batch its data layer declares (1 for the release's Python
    data layers, batch_size for a Data layer)."""
    shape = next(iter(net.inputs.values()), None)
    return int(shape[0]) if shape else 1


class _Samples(torch.utils.data.Dataset):
    """Dataset items at the given global sample positions (for a prefetching DataLoader)."""

    def __init__(self, dataset, seed, positions):
        self.dataset, self.seed, self.positions = dataset, seed, positions

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, k):
        return self.dataset[sample_index(self.seed, self.positions[k], len(self.dataset))]


def validate(net, dataset, device="cpu", limit=None, net_name=None):
    """The paper's metrics of `net` (TEST phase) on `dataset` through the one scorer
    (evaluate.Evaluator, images split over the processes): {label top: {metric: value}}."""
    was_training = net.training
    results = Evaluator(net, dataset, net_name=net_name, device=device, workers=0, progress=False,
                        limit=limit).run()
    net.train(was_training)
    return {label: task["metrics"] for label, task in results["tasks"].items()}


def copy_weights(source, target):
    """Every parameter blob of `source` into the layers of the same name in `target` (a train
    net's weights into its deploy or TEST-phase twin)."""
    with torch.no_grad():
        target.load_caffemodel({k: [b.detach().cpu().numpy() for b in v] for k, v in source.params_by_layer().items()},
                               strict=False)


class Trainer:
    """The loop: steps, logs, validation, snapshots, resume, a clean stop on Ctrl-C."""

    def __init__(self, solver, dataset, out, seed=1337, val=None, val_net=None, val_every=0, val_limit=None,
                 snapshot_every=None, max_iter=None, device="cpu", workers=1, progress=True, net_name=None,
                 sample_offset=0, desc="train", bar_position=None):
        self.solver, self.dataset, self.out, self.seed = solver, dataset, Path(out), int(seed)
        self.val, self.val_net, self.val_every, self.val_limit = val, val_net, int(val_every), val_limit
        p = solver.params
        self.snapshot_every = p["snapshot"] if snapshot_every is None else int(snapshot_every)
        self.max_iter = p["max_iter"] if max_iter is None else int(max_iter)
        self.display = max(p["display"], 1)
        self.device, self.workers, self.progress, self.net_name = device, workers, progress, net_name
        self.sample_offset, self.desc = int(sample_offset), desc  # where in the sample sequence this run starts
        self.bar_position = bar_position  # the progress bar's line when several runs share a terminal
        self.rank, self.world = distributed.rank_and_world()
        self.tops = tuple(dataset.tops)
        self.batch = batch_size(solver.net)
        self._stop = False
        if val is not None and val_net is None:
            raise CaffeError("validation needs a TEST-phase net (val_net) to copy the weights into")

    # --- files ---------------------------------------------------------------------------------------
    @property
    def snapshot_dir(self):
        return self.out / "snapshots"

    def snapshot_path(self, it):
        """The solver state of the snapshot unit of iteration `it` (solver/snapshot.py)."""
        return self.snapshot_dir / f"train_iter_{it}" / f"train_iter_{it}.solverstate.pt"

    def latest_snapshot(self):
        """The newest complete snapshot in the snapshot folder, or None."""
        found = complete_units(self.snapshot_dir)
        return Path(found[0]) if found else None

    def log(self, record):
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record, allow_nan=True) + "\n")

    def snapshot(self):
        """The snapshot unit of this iteration: solver state and .caffemodel, written as one."""
        path = Path(save_unit(self.solver, self.snapshot_dir, f"train_iter_{self.solver.iter}"))
        self.solver.last_snapshot = str(path)
        self.log({"event": "snapshot", "iter": self.solver.iter, "path": str(path)})
        return path

    def resume(self, path=None):
        """Continue from `path`, or from the newest snapshot of this run that loads (temporaries
        of a killed run removed first; a newer damaged snapshot skipped, with a warning and a log
        record); False when there is none."""
        skipped = []
        if path is None:
            path, skipped = restore_latest(self.solver, self.snapshot_dir)
            if path is None:
                return False
            self.solver.last_snapshot = str(path)
        else:
            self.solver.restore(path)
        self.log({"event": "resume", "iter": self.solver.iter, "path": str(path),
                  "skipped": [{"path": p, "reason": r} for p, r in skipped]})
        return True

    # --- the loop ------------------------------------------------------------------------------------
    def _loader(self, start):
        n = self.solver.params["iter_size"] * self.batch
        positions = [s for it in range(start, self.max_iter)
                     for s in distributed.iteration_positions(it, n, self.rank, self.world)]
        samples = _Samples(self.dataset, self.seed, [self.sample_offset + s for s in positions])
        return iter(item_loader(samples, self.workers, prefetch_factor=4))

    def validate(self):
        copy_weights(self.solver.net, self.val_net)
        t0 = time.perf_counter()
        results = validate(self.val_net, self.val, self.device, self.val_limit, self.net_name)
        self.log({"event": "val", "iter": self.solver.iter, "seconds": time.perf_counter() - t0,
                  "results": results})
        return results

    def _snapshot_reached(self):
        """The snapshot of the iteration reached: the unit this run last wrote or resumed from
        when it is of this iteration, else a new one. Decided from the solver, not the disk, so
        every process takes the collective save_unit or none does."""
        done = str(self.snapshot_path(self.solver.iter))
        return Path(done) if self.solver.last_snapshot == done else self.snapshot()

    def _data_error(self, error, failed):
        """Stop on an item that could not be loaded on the processes `failed` (ranks; `error`: this
        process's, or None), every process with the same snapshot of the iteration reached, so the
        run resumes there."""
        it = self.solver.iter
        path = self._snapshot_reached() if it > 0 else None
        detail = None if error is None else _last_line(f"{type(error).__name__}: {error}")
        where = {"ranks": failed} if self.world > 1 else {}
        self.log({"event": "data_error", "iter": it, "message": detail, "snapshot": str(path) if path else None,
                  **where})
        raise DatasetError(self._data_error_message(failed, detail, path)) from error

    def _data_error_message(self, failed, detail, path):
        ranks = "" if self.world == 1 else f" on rank{'s' if len(failed) > 1 else ''} {', '.join(map(str, failed))}"
        mine = "" if detail is None else f" (rank {self.rank}: {detail})" if len(failed) > 1 else f" ({detail})"
        kept = f"; snapshot {path}" if path else "; no snapshot written"
        return f"iteration {self.solver.iter}: a training item failed to load{ranks}{mine}{kept}"

    def _on_sigint(self, *_):
        self._stop = True

    def _load(self, loader, n):
        """(the iteration's n batches, None), or (None, the error of the item that failed: read
        here or in a loader worker)."""
        try:
            return [net_inputs(self.solver.net, self.tops, [next(loader) for _ in range(self.batch)], self.device)
                    for _ in range(n)], None
        except Exception as e:
            return None, e

    def _agree(self, stop, error):
        """(stop, ranks whose items failed to load) over all processes, in one all_reduce: a Ctrl-C
        or a bad item on any process stops all of them at the same iteration."""
        if self.world == 1:
            return stop, [0] if error is not None else []
        mine = [float(r == self.rank and error is not None) for r in range(self.world)]
        flags = distributed.all_reduce_sum(torch.tensor([float(stop)] + mine, device=self.device)).tolist()
        return flags[0] > 0, [r for r in range(self.world) if flags[1 + r] > 0]

    def _loop(self, loader, bar):
        """Iterations until max_iter, or until a Ctrl-C (then True) or a bad item (DatasetError).
        Every process agrees before each iteration and once at max_iter, so a Ctrl-C during the
        last iteration stops all of them or none."""
        solver, n = self.solver, self.solver.params["iter_size"]
        t_last, it_last = time.perf_counter(), solver.iter
        while True:
            request = self._stop  # a Ctrl-C while this iteration loads counts at the next one
            batches, error = self._load(loader, n) if solver.iter < self.max_iter else (None, None)
            stopped, failed = self._agree(request, error)
            if stopped or solver.iter >= self.max_iter:
                return stopped
            if failed:
                self._data_error(error, failed)
            try:
                loss = solver.step(batches)
            except NonFiniteLoss as e:
                self.log({"event": "nonfinite", "iter": solver.iter, "message": str(e)})
                raise
            bar.update(1)
            if solver.iter % self.display == 0 or solver.iter == self.max_iter:
                now = time.perf_counter()
                rate = (solver.iter - it_last) / max(now - t_last, 1e-9)
                t_last, it_last = now, solver.iter
                bar.set_postfix(loss=f"{solver.smoothed_loss:.4g}", img_s=f"{rate * n * self.batch * self.world:.2f}",
                                refresh=False)
                self.log({"iter": solver.iter, "loss": loss, "smoothed_loss": solver.smoothed_loss,
                          "lr": solver.lr(solver.iter - 1), "iter_per_s": rate,
                          "images_per_s": rate * n * self.batch * self.world})
            if self.snapshot_every and solver.iter % self.snapshot_every == 0:
                self.snapshot()
            if self.val is not None and self.val_every and solver.iter % self.val_every == 0:
                results = self.validate()
                first = next(iter(results.values()))
                bar.set_postfix(loss=f"{solver.smoothed_loss:.4g}", mean_iu=f"{first['mean_iu']:.3f}")

    def run(self):
        """Train until max_iter (or Ctrl-C); returns the last smoothed loss."""
        from tqdm import tqdm

        solver, n = self.solver, self.solver.params["iter_size"]
        start = solver.iter
        self.log({"event": "start", "iter": start, "max_iter": self.max_iter, "processes": self.world,
                  "iter_size": n, "images_per_iter": n * self.batch * self.world, "params": solver.params})
        previous = signal.signal(signal.SIGINT, self._on_sigint) if _main_thread() else None
        bar = tqdm(total=self.max_iter, initial=start, disable=not self.progress or self.rank != 0,
                   position=self.bar_position, leave=self.bar_position is None,
                   unit="it", desc=self.desc, dynamic_ncols=True)
        try:
            stopped = self._loop(self._loader(start), bar)
            if stopped or (solver.iter == self.max_iter and solver.params["snapshot_after_train"]
                           and not (self.snapshot_every and solver.iter % self.snapshot_every == 0)):
                self.snapshot()
        finally:
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        self.log({"event": "stop" if stopped else "done", "iter": solver.iter})
        return solver.smoothed_loss


def _last_line(text):
    """The last line of `text`: of a loader worker's error, the message under its traceback."""
    return text.strip().splitlines()[-1]


def _main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


__all__ = ["Trainer", "make_solver", "validate", "copy_weights", "net_inputs", "batch_size", "sample_index"]
