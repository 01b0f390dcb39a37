"""fcn eval: score a net on a dataset image by image, as the paper does, beside the published numbers.

    fcn eval --net voc-fcn8s --weights fcn8s-heavy-pascal.caffemodel \\
        --dataset voc --root ~/data/VOC2011 --split seg11valid [--save-dir preds/] [--resume]
    fcn eval --net voc-fcn8s --weights fcn8s-heavy-pascal --dataset voc --root ~/data/VOC2011  # a fetched release file
    fcn eval --net voc-fcn8s --dataset synthetic --data-opt n=4 --num-classes 6 --width-divisor 16  # smoke test
    fcn eval --net voc-fcn8s --weights mine.safetensors --dataset folder --root my_data --split val  # your own data

Writes OUT/results.json (metrics, per-class IU, confusion matrix, settings, time per image) and
OUT/results.md (the table it prints); OUT/state.json lets an interrupted run continue (--resume).
"""
import sys
from pathlib import Path

import torch

from .. import evaluate, paper
from ..atomic import write_json
from ..data import DATASETS
from ..data.release import PAPER_KEYS
from ..fast import for_inference
from ..nets import build_net
from .common import add_mode, class_count, ensure_dir, parser, run_main, weights_path


def build_parser(prog=None):
    p = parser(prog, __doc__)
    p.add_argument("--net", required=True, help="registry name, e.g. voc-fcn8s")
    p.add_argument("--weights", type=weights_path,
                   help=".caffemodel, .safetensors, .pt or a release name (omitted: random weights, for smoke tests)")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--root", type=Path, help="dataset directory")
    p.add_argument("--split", help="split name (default: the dataset's evaluation split)")
    p.add_argument("--context-dir", type=Path, help="PASCAL-Context annotation directory")
    p.add_argument("--data-opt", type=evaluate.dataset_option, action="append", default=[], metavar="KEY=VALUE",
                   help="extra dataset argument, e.g. --data-opt n=50 for synthetic")
    p.add_argument("--num-classes", type=int, help="override the net's class count (default with --dataset folder: its own)")
    p.add_argument("--width-divisor", type=int, default=1, help="shrink every base-net width (tests)")
    p.add_argument("--limit", type=int, help="score only the first N images")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_mode(p)
    p.add_argument("--workers", type=int, default=1, help="data-loading processes (0: load in the loop)")
    p.add_argument("--out", type=Path, help="results directory (default: eval/NET-DATASET-SPLIT)")
    p.add_argument("--save-dir", type=Path, help="write palette PNG predictions here")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT/state.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args):
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
    ensure_dir(out)
    args.num_classes = class_count(args, dataset)
    net = build_net(args.net, phase="deploy", num_classes=args.num_classes,
                    width_divisor=args.width_divisor, weights=args.weights).to(args.device)
    for_inference(net, args.mode)
    settings = {"net": args.net, "weights": str(args.weights.resolve()) if args.weights else None,
                "dataset": args.dataset, "root": str(args.root.resolve()) if args.root else None, "split": split,
                "num_images": len(dataset), "num_classes": args.num_classes, "width_divisor": args.width_divisor,
                "data_options": options, "mode": args.mode, "save_dir": str(args.save_dir) if args.save_dir else None}
    if not args.resume and (out / "state.json").exists():
        (out / "state.json").unlink()
    results = evaluate.evaluate(net, dataset, net_name=args.net, device=args.device, save_dir=args.save_dir,
                                state_file=out / "state.json", workers=args.workers, settings=settings,
                                progress=not args.quiet, resume=args.resume)
    results["paper"] = paper.find(net=args.net, dataset=PAPER_KEYS.get(args.dataset))
    table = evaluate.markdown_table(results, args.net, args.dataset, split)
    write_json(out / "results.json", results)
    (out / "results.md").write_text(table + "\n")
    t = results["time"]
    print(table)
    print(f"\n{results['num_images']} images, {t['per_image_s'] * 1e3:.1f} ms per image "
          f"({t['forward_per_image_s'] * 1e3:.1f} ms forward, mode {args.mode}); results in {out / 'results.json'}")
    return 0


def main(argv=None, prog=None):
    return run_main(build_parser, run, argv, prog)
