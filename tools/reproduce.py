#!/usr/bin/env python
"""The main job. With no arguments: the paper's staged FCN-32s -> 16s -> 8s training on the embedded
synthetic data (no downloads), a Table-2-style table, and figures in out/reproduce/.

    python tools/reproduce.py                       # synthetic, about 8 minutes on 2 CPU cores
    python tools/reproduce.py --quick               # a smoke run of a few iterations
    python tools/reproduce.py --dataset voc --root ~/data/VOC2011 \\
        --weights voc-fcn32s=fcn32s-heavy-pascal.caffemodel --weights voc-fcn8s=fcn8s-heavy-pascal.caffemodel

With --dataset voc it scores the original weights on seg11valid (736 images) and prints our
numbers beside the published ones instead.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

import fcn_caffe_repro as fcr
from fcn_caffe_repro import evaluate, reproduce


def weights_arg(text):
    net, sep, path = text.partition("=")
    return (net, Path(path)) if sep else ("voc-fcn8s", Path(text))


def original_weights(args):
    for net_name, path in args.weights:
        dataset = evaluate.make_dataset("voc", args.root, args.split, net_name)
        if args.limit:
            dataset.ids = dataset.ids[:args.limit]
        net = fcr.build_net(net_name, phase="deploy", weights=path).to(args.device).eval().fuse()
        results = evaluate.evaluate(net, dataset, net_name=net_name, device=args.device)
        print(evaluate.markdown_table(results, net_name, "voc", args.split) + "\n")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["synthetic", "voc"], default="synthetic")
    p.add_argument("--root", type=Path, help="VOC2011 directory (with --dataset voc)")
    p.add_argument("--split", default="seg11valid")
    p.add_argument("--weights", type=weights_arg, action="append", default=[], metavar="NET=CAFFEMODEL")
    p.add_argument("--limit", type=int, help="score only the first N images (voc)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("out/reproduce"))
    p.add_argument("--quick", action="store_true", help="a few iterations per stage: checks the pipeline only")
    p.add_argument("--iters", type=int, nargs=3, metavar=("N32", "N16", "N8"), help="iterations per stage")
    p.add_argument("--no-control", action="store_true", help="skip the FCN-32s trained-on control")
    args = p.parse_args(argv)
    if args.dataset == "voc":
        if args.root is None or not args.weights:
            p.error("--dataset voc needs --root and at least one --weights")
        return original_weights(args)
    cfg = reproduce.Config(control=not args.no_control)
    if args.quick:
        cfg.iters, cfg.val_images, cfg.size = (6, 4, 4), 4, 64
    if args.iters:
        cfg.iters = tuple(args.iters)
    t = time.perf_counter()
    summary, table = reproduce.run(cfg, out=args.out)
    print("\nSynthetic data, held-out images (the format of CVPR 2015 Table 2):\n")
    print(table)
    res = summary["results"]
    iu = {k: 100 * res[k]["metrics"]["mean_iu"] for k in res}
    print(f"\nskips refine: FCN-16s - FCN-32s = {iu['voc-fcn16s'] - iu['voc-fcn32s']:+.1f} mean IU, "
          f"FCN-8s - FCN-16s = {iu['voc-fcn8s'] - iu['voc-fcn16s']:+.1f}")
    if "control" in iu:
        print(f"control: FCN-32s trained as long as FCN-8s: {iu['control']:.1f} mean IU "
              f"(FCN-8s - control = {iu['voc-fcn8s'] - iu['control']:+.1f})")
    print(f"\nfigures: {args.out / 'results.png'}, {args.out / 'per_class_iu.png'}; "
          f"total {time.perf_counter() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
