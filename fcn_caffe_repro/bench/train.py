#!/usr/bin/env python
"""Training throughput: Caffe SGD iterations per second of full-width FCN-32s at 500x500 on this
machine, the fused skip path (ours) beside the plain unfused path, measured in one run with the
two paths' steps interleaved.

    fcn bench train [--iters 4] [--size 500] [--json bench/train.json]
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import fcn_caffe_repro as fcr
from fcn_caffe_repro import surgery
from fcn_caffe_repro.solver import SGDSolver, solver_params


def solver_for(net_name, fused, size):
    net = fcr.build_net(net_name, phase="train")
    surgery.interp(net, surgery.upsampling_layers(net))
    if fused:
        net.fuse()
    params, _ = solver_params(fcr.nets.solver_spec(net_name))
    params.update(display=0, snapshot=0)
    return SGDSolver(net, **params)


def time_steps(solvers, size, iters, warmup=1):
    """Median seconds per step of each solver; their steps alternate (the order flips every round)
    so both paths see the same machine load."""
    g = torch.Generator().manual_seed(0)
    data = torch.randn(1, 3, size, size, generator=g) * 50
    label = torch.randint(0, 21, (1, 1, size, size), generator=g).float()
    times = {name: [] for name in solvers}
    for k in range(warmup + iters):
        for name in (list(solvers) if k % 2 == 0 else list(solvers)[::-1]):
            t = time.perf_counter()
            solvers[name].step(data=data, label=label)
            if k >= warmup:
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--net", default="voc-fcn32s")
    p.add_argument("--size", type=int, default=500)
    p.add_argument("--iters", type=int, default=4)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    solvers = {}
    for label, fused in (("unfused (plain PyTorch path)", False), ("ours (fused skip op)", True)):
        torch.manual_seed(0)
        solvers[label] = solver_for(args.net, fused, args.size)
    rows = time_steps(solvers, args.size, args.iters)
    base = rows["unfused (plain PyTorch path)"]
    print(f"{args.net}, 1x3x{args.size}x{args.size}, one Caffe SGD iteration (forward + backward + update), "
          f"{torch.get_num_threads()} threads, median of {args.iters} interleaved steps per path\n")
    print("| path | s / iteration | iterations / s | speed-up |\n|---|---:|---:|---:|")
    for label, t in rows.items():
        print(f"| {label} | {t:.2f} | {1 / t:.3f} | {base / t:.2f}x |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"net": args.net, "size": args.size, "threads": torch.get_num_threads(),
                                         "seconds_per_iter": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
