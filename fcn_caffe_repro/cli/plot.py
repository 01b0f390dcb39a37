"""fcn plot: figures of results: predictions side by side, and per-class IU bars.

    # image / ground truth / FCN-32s / FCN-16s / FCN-8s, from the PNGs of fcn eval --save-dir
    fcn plot figure --dataset synthetic --data-opt n=50 \\
        --pred FCN-32s=preds32 --pred FCN-16s=preds16 --pred FCN-8s=preds8 --indices 0 1 2 --out results.png
    # per-class IU of several runs, from their results.json
    fcn plot iu --results FCN-32s=eval32/results.json --results FCN-8s=eval8/results.json --out iu.png
"""
import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from .. import evaluate, visualize
from .common import parser, run_main


def named_path(text):
    name, sep, path = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got '{text}'")
    return name, Path(path)


def build_parser(prog=None):
    p = parser(prog, __doc__)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("figure", help="image / ground truth / predictions, one row per image")
    f.add_argument("--dataset", required=True)
    f.add_argument("--root", type=Path)
    f.add_argument("--split")
    f.add_argument("--data-opt", type=evaluate.dataset_option, action="append", default=[], metavar="KEY=VALUE")
    f.add_argument("--pred", type=named_path, action="append", required=True, metavar="NAME=DIR",
                   help="a column: folder of palette PNGs named by image id (fcn eval --save-dir)")
    f.add_argument("--indices", type=int, nargs="+", default=[0, 1, 2, 3])
    f.add_argument("--out", type=Path, default=Path("results.png"))
    b = sub.add_parser("iu", help="grouped bars of per-class IU")
    b.add_argument("--results", type=named_path, action="append", required=True, metavar="NAME=results.json")
    b.add_argument("--task", help="label top to plot (default: the first)")
    b.add_argument("--out", type=Path, default=Path("iu.png"))
    return p


def figure(args):
    ds = evaluate.make_dataset(args.dataset, args.root, args.split, **dict(args.data_opt))
    label_index = [i for i, t in enumerate(ds.tops) if t in ds.tasks][0]
    rows = []
    for i in args.indices:
        sample = ds[i]
        preds = []
        for name, folder in args.pred:
            path = folder / f"{ds.ids[i]}.png"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no prediction for image {ds.ids[i]} in column {name}")
            preds.append(np.array(Image.open(path)))
        rows.append((ds.rgb(i), sample[label_index], preds))
    fig = visualize.results_figure(rows, [n for n, _ in args.pred], ds.classes)
    fig.savefig(args.out, dpi=120)
    return args.out


def iu(args):
    runs, classes = {}, None
    for name, path in args.results:
        tasks = json.loads(path.read_text())["tasks"]
        entry = tasks[args.task] if args.task else next(iter(tasks.values()))
        if classes is not None and entry["classes"] != classes:
            raise ValueError(f"{path}: classes differ from the first run's")
        classes = entry["classes"]
        runs[name] = [entry["per_class_iu"][c] for c in classes]
    fig = visualize.iu_bar_chart(runs, classes)
    fig.savefig(args.out, dpi=120)
    return args.out


def run(args):
    out = figure(args) if args.command == "figure" else iu(args)
    print(f"wrote {out}")
    return 0


def main(argv=None, prog=None):
    return run_main(build_parser, run, argv, prog)
