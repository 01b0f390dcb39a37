#!/usr/bin/env python
"""Training throughput: one Caffe SGD iteration of full-width FCN-32s at 500x500 (forward, backward,
update; iter_size 1, batch 1) on the default training path, against its roofline and against the
previous plain path, in one run.

    fcn bench train [--iters 4] [--size 500] [--threads 2] [--json bench/train.json]

Roofline: three forwards' FLOPs (cost.flops; the backward computes two products per forward one)
at the torch.mm 4096x4096 float32 rate measured in this run at the same thread count. Each path
runs in its own process (the heap policy is process-wide, and a process's peak RSS is its own); the
parent steps them in turn, the order flipping every round, and measures torch.mm between rounds,
so all see the same machine load. The previous path is kept here only: the layers' plain forward
(oneDNN convolution on NCHW, max pooling with saved indices), the finiteness check per element, and
glibc's default heap (fresh memory from the OS for every large block).
"""
import argparse
import contextlib
import json
import math
import multiprocessing
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import fcn_caffe_repro as fcr
from fcn_caffe_repro import cost, surgery
from fcn_caffe_repro import layers as L
from fcn_caffe_repro.bench.common import status_bytes
from fcn_caffe_repro.plan import Step, layer_steps
from fcn_caffe_repro.solver import SGDSolver, solver_params

DEFAULT, PREVIOUS = "default path (this tree)", "previous plain path"


class _PreviousSolver(SGDSolver):
    """SGDSolver as it was before the training path was tuned: glibc's default heap, the
    upsampling paths and the ReLU before each pooling as separate layers, and a finiteness check
    that materialises isfinite(g) for every gradient."""

    @staticmethod
    def _memory_policy(net):
        return contextlib.nullcontext

    @staticmethod
    def _training_plan(net):
        pass

    def _check_finite(self, loss):
        grads = [p.grad for _, _, p, _, _ in self.learnable if p.grad is not None]
        if not math.isfinite(loss) or not all(bool(torch.isfinite(g).all()) for g in grads):
            super()._check_finite(loss)


class _PlainConvolution(nn.Module):
    """The Convolution layer's forward as it was: F.conv2d on the tensors as given."""

    def __init__(self, layer):
        super().__init__()
        self.layer = [layer]  # not registered: the net owns it

    def forward(self, x):
        c = self.layer[0]
        c._check_input(x)
        return (F.conv2d(x, c.weight, c.bias, c.stride, c.pad, c.dilation, c.group),)


class _PlainPooling(nn.Module):
    """The Pooling layer's forward as it was: autograd saves the max indices."""

    def __init__(self, layer):
        super().__init__()
        self.layer = [layer]

    def forward(self, x):
        return (self.layer[0].pool(x),)


def _previous_plan(net):
    steps = []
    for s in layer_steps(net):
        module = s.module
        if type(module) is L.Convolution:
            module = _PlainConvolution(module)
        elif type(module) is L.Pooling:
            module = _PlainPooling(module)
        steps.append(Step(s.name, s.bottom, s.top, module))
    net.set_plan(steps)


def solver_for(net_name, path):
    """The train net with FCN's bilinear upsampling and the release's solver settings, on `path`."""
    torch.manual_seed(0)
    net = fcr.build_net(net_name, phase="train")
    surgery.interp(net, surgery.upsampling_layers(net))
    params, _ = solver_params(fcr.nets.solver_spec(net_name))
    params.update(display=0, snapshot=0)
    if path == PREVIOUS:
        _previous_plan(net)
        return _PreviousSolver(net, **params)
    return SGDSolver(net, **params)


def inputs(size):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(1, 3, size, size, generator=g) * 50
    label = torch.randint(0, 21, (1, 1, size, size), generator=g).float()
    return data, label


def worker(conn, net_name, path, size, threads):
    """One path in its own process: a step per "step" message (answering its seconds), then its
    peak RSS on "stop"."""
    torch.set_num_threads(threads)
    solver = solver_for(net_name, path)
    data, label = inputs(size)
    conn.send("ready")
    while conn.recv() == "step":
        t = time.perf_counter()
        solver.step(data=data, label=label)
        conn.send(time.perf_counter() - t)
    conn.send({"peak_rss_bytes": status_bytes("VmHWM"),
               "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})


def mm_rate(n=4096):
    """torch.mm on n x n float32 in FLOP/s (one product; the caller takes the median of rounds)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = time.perf_counter()
    torch.mm(a, b)
    return 2 * n ** 3 / (time.perf_counter() - t)


def run(net_name, size, iters, threads, warmup=3):
    """{path: median seconds per step}, the torch.mm rate, {path: peak RSS}. The first `warmup` steps
    are not timed: the first allocates caches, and the step arena records the second and faults
    its region in during the third (step_arena.py)."""
    ctx = multiprocessing.get_context("spawn")
    procs, conns = {}, {}
    for path in (DEFAULT, PREVIOUS):
        parent, child = ctx.Pipe()
        procs[path] = ctx.Process(target=worker, args=(child, net_name, path, size, threads), daemon=True)
        procs[path].start()
        conns[path] = parent
    for path in conns:
        if conns[path].recv() != "ready":
            raise SystemExit(f"the {path} worker did not start")
    torch.set_num_threads(threads)
    mm_rate()  # warm-up
    times, rates = {p: [] for p in conns}, []
    for k in range(warmup + iters):
        for path in (list(conns) if k % 2 == 0 else list(conns)[::-1]):
            conns[path].send("step")
            dt = conns[path].recv()
            if k >= warmup:
                times[path].append(dt)
        rates.append(mm_rate())
    memory = {}
    for path, conn in conns.items():
        conn.send("stop")
        memory[path] = conn.recv()
        procs[path].join()
    return {p: statistics.median(v) for p, v in times.items()}, statistics.median(rates), memory


def forward_flops(net_name, size):
    net = fcr.build_net(net_name, phase="train")
    return cost.flops(net, (1, 3, size, size)).total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--net", default="voc-fcn32s")
    p.add_argument("--size", type=int, default=500)
    p.add_argument("--iters", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="default: torch's count in this process")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    flops = forward_flops(args.net, args.size)
    seconds, mm, memory = run(args.net, args.size, args.iters, threads)
    roofline = 3 * flops / mm
    base = seconds[PREVIOUS]
    print(f"{args.net}, 1x3x{args.size}x{args.size}, one Caffe SGD iteration (forward + backward + update, "
          f"iter_size 1), {threads} threads, median of {args.iters} steps per path, interleaved, each path "
          f"in its own process\n")
    print(f"roofline: 3 x {flops / 1e9:.1f} GFLOP (forward) at torch.mm's {mm / 1e9:.0f} GFLOP/s "
          f"(4096x4096 float32, median of {args.iters + 1} in this run) = {roofline:.2f} s\n")
    print("| path | s / iteration | % of roofline | speed-up | peak RSS (GB) |\n|---|---:|---:|---:|---:|")
    for path, t in seconds.items():
        print(f"| {path} | {t:.2f} | {100 * roofline / t:.0f} % | {base / t:.2f}x | "
              f"{memory[path]['peak_rss_bytes'] / 1e9:.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "net": args.net, "size": args.size, "threads": threads, "iters": args.iters,
            "forward_flops": flops, "mm_flops_per_s": mm, "roofline_s": roofline,
            "seconds_per_iter": seconds, "memory": memory}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
