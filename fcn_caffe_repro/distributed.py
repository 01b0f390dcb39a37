"""Training on several processes (torchrun / torch.distributed) with Caffe's multi-GPU semantics.

Caffe (parallel.cpp, NCCL::on_gradients_ready) runs one solver per GPU, each on its own images,
and before every update sums the parameter diffs of all solvers (ncclAllReduce, ncclSum) and
scales them by 1 / solver_count. Each solver normalises its own loss (for FCN's `normalize:
false`, by its own batch of one image). Weight decay, momentum and the update then run on every
solver on identical diffs, so the weights stay identical. Hence, with P processes, iter_size n
and one image per pass:

* the effective batch is P * n images per iteration, and the update equals a single-process
  run with iter_size P * n over the same images: the gradient is the *mean* over the P * n
  passes, not the sum;
* the learning rate is not scaled: base_lr, momentum and weight decay mean what they mean on one
  process. An iteration consumes P * n images, so a schedule of max_iter iterations sees P times
  the images; divide max_iter (and stepsize, snapshot) by P to keep the number of images seen,
  but the trajectory is then that of iter_size P * n, not of the paper's batch of one;
* Caffe seeds solver k with random_seed + k, as solver.rng.seed_everything does here, so
  dropout masks differ between processes; the reported loss here is the mean over the
  processes (Caffe prints rank 0's).

We reduce once per iteration, after the iter_size passes (Caffe's non-layer-wise path), instead
of wrapping the net in DistributedDataParallel: the update must see the fully accumulated,
averaged diff, and lr_mult-0 blobs carry no gradient at all.
"""
import os
from datetime import timedelta

import torch
import torch.distributed as dist

BUCKET_ELEMENTS = 1 << 24  # 64 MB of float32 per all-reduce


def rank_and_world():
    """(rank, world size), (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_root():
    return rank_and_world()[0] == 0


def init_from_env(backend=None, timeout_s=600):
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
    LOCAL_RANK): nccl with one GPU per process when CUDA is there, else gloo. Returns the device
    this process should use. Without those variables it does nothing (one process)."""
    if "WORLD_SIZE" not in os.environ or (dist.is_available() and dist.is_initialized()):
        return _device(int(os.environ.get("LOCAL_RANK", 0)))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = _device(local_rank)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return device


def _device(local_rank):
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def broadcast_parameters(net, src=0):
    """Copy process `src`'s weights to every process (Caffe's NCCL::Broadcast before solving)."""
    if rank_and_world()[1] == 1:
        return
    with torch.no_grad():
        for _, module in net.layer_modules():
            for blob in module.blobs():
                dist.broadcast(blob.data, src)


class AverageGradients:
    """A solver gradient hook: sums every learnable blob's diff (and the loss) over the processes
    and divides by their number, as Caffe's NCCL::on_gradients_ready. Blobs without a gradient on
    some process count as zeros, so all processes reduce the same buckets."""

    def __init__(self, group=None, bucket_elements=BUCKET_ELEMENTS):
        self.group, self.bucket_elements = group, bucket_elements

    def __call__(self, solver, loss):
        world = dist.get_world_size(self.group)
        blobs = [w for _, _, w, _, _ in solver.learnable]
        for w in blobs:
            if w.grad is None:
                w.grad = torch.zeros_like(w)
        grads = [w.grad for w in blobs]
        loss_t = torch.tensor([loss], dtype=torch.float64, device=grads[0].device if grads else "cpu")
        dist.all_reduce(loss_t, group=self.group)
        for bucket in self._buckets(grads):
            if len(bucket) == 1 and bucket[0].is_contiguous():  # a big blob: reduce it in place
                flat = bucket[0]
            else:
                flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat, group=self.group)
            flat.mul_(float(torch.tensor(1.0 / world, dtype=flat.dtype)))
            if flat is not bucket[0]:
                offset = 0
                for g in bucket:
                    g.copy_(flat[offset:offset + g.numel()].view_as(g))
                    offset += g.numel()
        return float(loss_t) / world

    def _buckets(self, grads):
        bucket, size = [], 0
        for g in grads:
            if bucket and (size + g.numel() > self.bucket_elements or g.dtype != bucket[0].dtype
                           or g.device != bucket[0].device):
                yield bucket
                bucket, size = [], 0
            bucket.append(g)
            size += g.numel()
        if bucket:
            yield bucket


def make_distributed(solver, group=None):
    """Make `solver` one of the processes of the group: same starting weights as process 0, and
    gradients averaged over the processes before each update."""
    broadcast_parameters(solver.net)
    solver.gradient_hooks.append(AverageGradients(group))
    return solver


def iteration_positions(iteration, iter_size=1, rank=None, world=None):
    """The global sample positions process `rank` trains on at `iteration`: the iteration takes
    positions [i*P*n, (i+1)*P*n), the process its n consecutive ones. A single process with
    iter_size P*n takes the same positions in the same iteration."""
    if rank is None or world is None:
        rank, world = rank_and_world()
    start = iteration * world * iter_size + rank * iter_size
    return list(range(start, start + iter_size))


def iteration_indices(order, iteration, iter_size=1, rank=None, world=None):
    """iteration_positions mapped through a finite `order` of image indices (wrapping around)."""
    return [order[s % len(order)] for s in iteration_positions(iteration, iter_size, rank, world)]


def gather_to_root(obj):
    """[obj of every process] (on every process), or [obj] outside torch.distributed."""
    _, world = rank_and_world()
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor):
    """Sum a tensor (e.g. a confusion histogram) over the processes, in place; returns it."""
    if rank_and_world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def barrier():
    if rank_and_world()[1] > 1:
        dist.barrier()
