#!/usr/bin/env python
"""Score a net on a dataset image by image, as the paper does, beside the published numbers.

    python tools/eval.py --net voc-fcn8s --weights fcn8s-heavy-pascal.caffemodel \\
        --dataset voc --root ~/data/VOC2011 --split seg11valid [--save-dir preds/] [--resume]

Writes OUT/results.json (metrics, per-class IU, confusion matrix, settings, time per image) and
OUT/results.md (the table it prints); OUT/state.json lets an interrupted run continue (--resume).
"""
import argparse
import json
import sys
from pathlib import Path

import torch

import fcn_caffe_repro as fcr
from fcn_caffe_repro import evaluate
from fcn_caffe_repro.atomic import write_json
from fcn_caffe_repro.data import DATASETS
from fcn_caffe_repro.data.release import PAPER_KEYS


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--net", required=True, help="registry name, e.g. voc-fcn8s")
    p.add_argument("--weights", type=Path, help=".caffemodel (omitted: random weights, for smoke tests)")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--root", type=Path, help="dataset directory")
    p.add_argument("--split", help="split name (default: the dataset's evaluation split)")
    p.add_argument("--context-dir", type=Path, help="PASCAL-Context annotation directory")
    p.add_argument("--data-opt", type=evaluate.dataset_option, action="append", default=[], metavar="KEY=VALUE",
                   help="extra dataset argument, e.g. --data-opt n=50 for synthetic")
    p.add_argument("--num-classes", type=int, help="override the net's class count")
    p.add_argument("--width-divisor", type=int, default=1, help="shrink every base-net width (tests)")
    p.add_argument("--limit", type=int, help="score only the first N images")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=1, help="data-loading processes (0: load in the loop)")
    p.add_argument("--out", type=Path, help="results directory (default: eval/NET-DATASET-SPLIT)")
    p.add_argument("--save-dir", type=Path, help="write palette PNG predictions here")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT/state.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    options = dict(args.data_opt)
    if args.context_dir is not None:
        options["context_dir"] = str(args.context_dir)
    dataset = evaluate.make_dataset(args.dataset, args.root, args.split, args.net, **options)
    if args.limit is not None:
        dataset.ids = dataset.ids[:args.limit]
    split = args.split or getattr(dataset, "split", args.dataset)
    out = args.out or Path("eval") / f"{args.net}-{args.dataset}-{split}"
    if args.weights is None:
        print("warning: no --weights, the net has random weights", file=sys.stderr)
    net = fcr.build_net(args.net, phase="deploy", num_classes=args.num_classes,
                        width_divisor=args.width_divisor, weights=args.weights).to(args.device)
    settings = {"net": args.net, "weights": str(args.weights.resolve()) if args.weights else None,
                "dataset": args.dataset, "root": str(args.root.resolve()) if args.root else None, "split": split,
                "num_images": len(dataset), "num_classes": args.num_classes, "width_divisor": args.width_divisor,
                "data_options": options, "save_dir": str(args.save_dir) if args.save_dir else None}
    if not args.resume and (out / "state.json").exists():
        (out / "state.json").unlink()
    results = evaluate.evaluate(net, dataset, net_name=args.net, device=args.device, save_dir=args.save_dir,
                                state_file=out / "state.json", workers=args.workers, settings=settings,
                                progress=not args.quiet, resume=args.resume)
    results["paper"] = fcr.paper.find(net=args.net, dataset=PAPER_KEYS.get(args.dataset))
    table = evaluate.markdown_table(results, args.net, args.dataset, split)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    (out / "results.md").write_text(table + "\n")
    t = results["time"]
    print(table)
    print(f"\n{results['num_images']} images, {t['per_image_s'] * 1e3:.1f} ms per image "
          f"({t['forward_per_image_s'] * 1e3:.1f} ms forward); results in {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
