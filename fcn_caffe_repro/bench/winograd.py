"""Benchmark: the fast mode's Winograd F(2x2, 3x3) backend against oneDNN's direct convolution, per layer.

Builds FCN-8s (random weights), installs the float32 fast plan and runs one forward at the image
size to record every 3x3 stride-1 convolution step's input shape and padding (the border pass's
short maps included); then, for each, times oneDNN's convolution with the ReLU post-op (prepacked
weight) and the Winograd path (its transforms and torch.bmm, in a workspace) on the same random
input, best of `--rounds` after one warm-up each, and measures each path's largest error against a
float64 convolution, relative to the largest sum of |products| that reaches an output. Prints a
markdown table (and the layers `auto` gives Winograd), optionally writes JSON.

    fcn bench winograd [--size 500] [--threads 2] [--rounds 4] [--width-divisor 1] [--json out.json]
"""
import argparse
import time

import torch
import torch.nn.functional as F

from .common import write_json
from .net import machine
from .. import nets
from ..border import inner_steps
from ..fast import FastConv, onednn, winograd
from ..fast.conv import auto_impl


def _layers(size, width_divisor):
    """[(step name, conv layer, input shape, pad)] of FCN-8s's 3x3 stride-1 steps in the fast plan."""
    net = nets.build_net("voc-fcn8s", phase="deploy", width_divisor=width_divisor).eval().optimize()
    seen = {}

    def record(step, args, kwargs):
        layer, x = step.layer, args[0]
        pad = kwargs.get("pad", args[1] if len(args) > 1 else None)
        seen.setdefault(layer.layer_name, (layer, tuple(x.shape), layer.pad if pad is None else tuple(pad)))

    hooks = [s.module.register_forward_pre_hook(record, with_kwargs=True) for s in inner_steps(net.plan)
             if isinstance(s.module, FastConv) and winograd.applies(s.module.layer)]
    try:
        with torch.no_grad():
            net(data=torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return [(name, *v) for name, v in seen.items()]


def _best(f, rounds):
    f()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(size=500, rounds=4, width_divisor=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    ws = winograd.Workspace()
    for name, conv, shape, pad in _layers(size, width_divisor):
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / conv.weight[0].numel()) ** 0.5)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.1)
        x = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last)
        packed, u = onednn.pack_weight(conv), winograd.transform_weight(conv)
        w, b = conv.weight.detach(), conv.bias.detach()
        direct = lambda: onednn.conv2d(conv, x, packed, b, 0.0, None, True, pad)  # noqa: E731
        wino = lambda: winograd.conv2d(conv, x, u, b, 0.0, pad, ws)  # noqa: E731
        exact = F.relu(F.conv2d(x.double(), w.double(), b.double(), padding=pad))
        scale = float(F.conv2d(x.double().abs(), w.double().abs(), padding=pad).max() + b.abs().max())
        rows.append(dict(layer=name, channels=conv.channels, outputs=conv.num_output, height=shape[2],
                         width=shape[3], pad=list(pad), onednn_s=_best(direct, rounds), winograd_s=_best(wino, rounds),
                         onednn_err=float((direct().double() - exact).abs().max()) / scale,
                         winograd_err=float((wino().double() - exact).abs().max()) / scale,
                         auto=auto_impl(conv)))
    return rows


def markdown(rows):
    lines = ["| layer | C → K | input map | oneDNN (ms) | Winograd (ms) | speed-up | auto takes | "
             "max error / scale, oneDNN | Winograd |", "|---|---|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['channels']} → {r['outputs']} | {r['height']}×{r['width']} "
                     f"| {1e3 * r['onednn_s']:.1f} | {1e3 * r['winograd_s']:.1f} "
                     f"| {r['onednn_s'] / r['winograd_s']:.2f}x | {r['auto']} "
                     f"| {r['onednn_err']:.1e} | {r['winograd_err']:.1e} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="fcn bench winograd", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=500, help="image side (default 500)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4, help="timed calls per path and layer, the best kept")
    ap.add_argument("--width-divisor", type=int, default=1, help="VGG's width / this (1: the release's nets)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = measure(args.size, args.rounds, args.width_divisor)
    print(f"{machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"FCN-8s at {args.size}x{args.size}, width / {args.width_divisor}, best of {args.rounds} after a warm-up\n")
    print(markdown(rows))
    total_direct = sum(r["onednn_s"] for r in rows if r["auto"] == "winograd")
    total_wino = sum(r["winograd_s"] for r in rows if r["auto"] == "winograd")
    if total_wino:
        print(f"\nthe layers auto gives Winograd: {1e3 * total_direct:.0f} ms with oneDNN, {1e3 * total_wino:.0f} ms "
              f"with Winograd ({total_direct / total_wino:.2f}x)")
    print(f"\n{time.perf_counter() - t0:.0f} s in all")
    if args.json:
        write_json(args.json, {"rows": rows, "size": args.size, "threads": args.threads})
    return 0
