"""Two CPU processes (gloo, loopback) train as one Caffe solver with iter_size 2 * n: the weights
after N steps equal the single-process run over the same images; snapshots gather both
processes' RNG states; an item that fails to load on one process stops both with one snapshot."""
import datetime
import json
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import rel_err
from fcn_caffe_repro.data import Synthetic
from fcn_caffe_repro.data.common import DatasetError
from fcn_caffe_repro.distributed import iteration_indices, make_distributed
from fcn_caffe_repro.solver import SGDSolver, load_snapshot
from test_solver import tiny_batch, tiny_net, tiny_spec, weights

WORLD, STEPS = 2, 3
PARAMS = dict(base_lr=1e-3, lr_policy="fixed", momentum=0.9, weight_decay=5e-3)
ORDER = [7, 3, 11, 0, 5, 9, 2, 8, 1, 6, 4, 10, 12, 13]  # a shuffled epoch


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(solver, iter_size, rank, world):
    for t in range(STEPS):
        batches = [tiny_batch(i) for i in iteration_indices(ORDER, t, iter_size, rank, world)]
        solver.step(batches)
    return solver


def trainer(out, iter_size, world, dataset=None, max_iter=STEPS):
    from fcn_caffe_repro.net import CaffeNet
    from fcn_caffe_repro.training import Trainer

    solver = SGDSolver(tiny_net(seed=2, dropout=False), iter_size=iter_size, **dict(PARAMS, base_lr=1e-5))
    if world > 1:
        make_distributed(solver)
    val_net = CaffeNet(tiny_spec(deploy=True), phase="test")
    return Trainer(solver, dataset or Synthetic(n=10, size=16, num_classes=3), f"{out}/loop", max_iter=max_iter,
                   val=Synthetic(seed=4, n=5, size=16, num_classes=3), val_net=val_net, workers=0,
                   progress=False)


def join_group(rank, port):
    """This process as `rank` of a gloo group on loopback; a collective a peer never joins fails
    after 30 s instead of waiting for ever."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=30))


def spawn(fn, out, seconds):
    """fn(rank, port, out) on WORLD spawned processes; fails when one fails or they are not all
    done within `seconds` (the survivors are killed)."""
    ctx = mp.start_processes(fn, args=(free_port(), out), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + seconds
    try:
        while not ctx.join(timeout=1):
            assert time.monotonic() < deadline, "the gloo processes did not finish in time"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


def worker(rank, port, out):
    join_group(rank, port)
    try:
        for n in (1, 2):
            # each process starts from different weights: make_distributed broadcasts rank 0's
            solver = make_distributed(SGDSolver(tiny_net(seed=rank, dropout=False), iter_size=n, **PARAMS))
            train(solver, n, rank, WORLD)
            torch.save(weights(solver.net), f"{out}/rank{rank}_n{n}.pt")
        solver.snapshot(f"{out}/snap.pt")  # collective: gathers both RNG states
        # the training loop: images by sample position, validation split over the processes
        loop = trainer(out, 1, WORLD)
        loop.run()
        torch.save({"weights": weights(loop.solver.net), "val": loop.validate()}, f"{out}/loop{rank}.pt")
        # Both ranks leave together: a gloo peer that tears down its sockets while the other still
        # has traffic in flight can abort it ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_with_iter_size(tmp_path):
    spawn(worker, str(tmp_path), 90)
    for n in (1, 2):
        single = train(SGDSolver(tiny_net(seed=0, dropout=False), iter_size=WORLD * n, **PARAMS),
                       WORLD * n, 0, 1)
        ours = weights(single.net)
        start = weights(tiny_net(seed=0, dropout=False))
        r0 = torch.load(tmp_path / f"rank0_n{n}.pt")
        r1 = torch.load(tmp_path / f"rank1_n{n}.pt")
        for k, w in ours.items():
            assert torch.equal(r0[k], r1[k]), f"{k}: the processes' weights diverged"
            moved = (w - start[k]).double().numpy()
            if k == "upscore/0":
                assert not moved.any()
                continue
            assert rel_err((r0[k] - start[k]).double().numpy(), moved) < 1e-4, f"iter_size {n}: {k}"
            assert abs(moved).max() > 1e-3 * abs(start[k]).max()  # a real move, not noise
    snap = load_snapshot(tmp_path / "snap.pt")
    assert len(snap["rng"]) == WORLD and snap["iter"] == STEPS

    # the loop on two processes equals the loop on one with iter_size 2; so does its validation
    single = trainer(str(tmp_path / "single"), WORLD, 1)
    single.run()
    loop = [torch.load(tmp_path / f"loop{r}.pt") for r in range(WORLD)]
    start = weights(tiny_net(seed=2, dropout=False))
    for k, w in weights(single.solver.net).items():
        assert torch.equal(loop[0]["weights"][k], loop[1]["weights"][k])
        if k != "upscore/0":
            assert rel_err((loop[0]["weights"][k] - start[k]).numpy(), (w - start[k]).numpy()) < 1e-4, k
    single.solver.net.load_caffemodel({l: [loop[0]["weights"][f"{l}/{i}"].numpy() for i in range(len(b))]
                                       for l, b in single.solver.net.params_by_layer().items()})
    assert loop[0]["val"] == loop[1]["val"] == single.validate()


BAD_ITER, LOOP_ITERS = 2, 5


class FailsOnRank1(Synthetic):
    """On rank 1 only, the item of iteration BAD_ITER cannot be read (a process loads one item
    per iteration, in order)."""

    loaded = 0

    def __getitem__(self, i):
        FailsOnRank1.loaded += 1
        if dist.get_rank() == 1 and FailsOnRank1.loaded == BAD_ITER + 1:
            raise OSError("image file is truncated")
        return super().__getitem__(i)


def data_error_worker(rank, port, out):
    """An uninterrupted run; a run that meets FailsOnRank1 (its DatasetError and iteration kept);
    that run resumed from its newest snapshot with the item readable again."""
    join_group(rank, port)
    try:
        straight = trainer(f"{out}/straight", 1, WORLD, max_iter=LOOP_ITERS)
        straight.run()
        torch.save(weights(straight.solver.net), f"{out}/straight{rank}.pt")
        failing = trainer(f"{out}/failed", 1, WORLD, FailsOnRank1(n=10, size=16, num_classes=3), LOOP_ITERS)
        try:
            failing.run()
            error = None
        except DatasetError as e:
            error = str(e)
        torch.save({"error": error, "iter": failing.solver.iter}, f"{out}/error{rank}.pt")
        resumed = trainer(f"{out}/failed", 1, WORLD, max_iter=LOOP_ITERS)
        resumed_at = resumed.solver.iter if resumed.resume() else None
        resumed.run()
        torch.save({"weights": weights(resumed.solver.net), "resumed_at": resumed_at}, f"{out}/resumed{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_an_item_failing_on_one_process_stops_all_with_one_snapshot(tmp_path):
    spawn(data_error_worker, str(tmp_path), 150)
    unit = tmp_path / "failed" / "loop" / "snapshots" / f"train_iter_{BAD_ITER}"
    state = unit / f"train_iter_{BAD_ITER}.solverstate.pt"
    errors = [torch.load(tmp_path / f"error{r}.pt") for r in range(WORLD)]
    assert [e["iter"] for e in errors] == [BAD_ITER] * WORLD  # both stopped at the same iteration
    assert errors[0]["error"] == f"iteration {BAD_ITER}: a training item failed to load on rank 1; snapshot {state}"
    assert errors[1]["error"] == (f"iteration {BAD_ITER}: a training item failed to load on rank 1 "
                                  f"(OSError: image file is truncated); snapshot {state}")
    logged = [json.loads(line) for line in (tmp_path / "failed" / "loop" / "log.jsonl").read_text().splitlines()]
    assert [r for r in logged if r.get("event") == "data_error"] == [
        {"event": "data_error", "iter": BAD_ITER, "message": None, "snapshot": str(state), "ranks": [1]}]
    assert sorted(p.name for p in unit.parent.iterdir()) == [unit.name, f"train_iter_{LOOP_ITERS}"]
    snap = load_snapshot(state)
    assert snap["iter"] == BAD_ITER and len(snap["rng"]) == WORLD
    resumed = [torch.load(tmp_path / f"resumed{r}.pt") for r in range(WORLD)]
    straight = torch.load(tmp_path / "straight0.pt")
    assert [r["resumed_at"] for r in resumed] == [BAD_ITER] * WORLD
    for k, w in straight.items():
        assert all(torch.equal(r["weights"][k], w) for r in resumed), k  # bit-exact continuation
        if k != "upscore/0":
            assert not torch.equal(snap["weights"][k], w), k  # the resumed run trained on


def test_iteration_indices_partition_the_single_process_batches():
    """Process r of P with iter_size n takes, at iteration t, exactly the images a single process
    with iter_size P*n takes at t."""
    for world, n in ((2, 1), (3, 2), (4, 3)):
        for t in range(5):
            together = sum((iteration_indices(ORDER, t, n, r, world) for r in range(world)), [])
            assert together == iteration_indices(ORDER, t, world * n, 0, 1)
