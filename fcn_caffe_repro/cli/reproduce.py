"""fcn reproduce: the main job. With no arguments: the paper's pipeline in miniature on the embedded
synthetic world (no downloads): the shipped stand-in classifier convolutionalised into FCN-32s,
then FCN-16s and FCN-8s, FCN-8s at once and two controls; a Table-2-style table with per-class
IU, figures and results.json in out/reproduce/.

    fcn reproduce                       # synthetic: about 5 minutes on 2 CPU cores (README)
    fcn reproduce --seed 7              # another world and another image order
    fcn reproduce --pretrain            # retrain the shipped classifier (about 8 minutes)
    fcn reproduce --quick               # a smoke run of a few iterations
    fcn reproduce --dataset voc --root ~/data/VOC2011 \\
        --weights voc-fcn32s=fcn32s-heavy-pascal --weights voc-fcn8s=fcn8s-heavy-pascal.caffemodel

With --dataset voc it scores the original weights on seg11valid (736 images) and prints our
numbers beside the published ones instead. WEIGHTS is a file (.caffemodel, .safetensors, .pt)
or a release name fetched by `fcn weights fetch NAME`.
"""
import errno
import time
from pathlib import Path

import torch

from .. import evaluate, reproduce
from ..fast import for_inference
from ..nets import build_net, net_spec
from .common import UsageError, add_mode, ensure_dir, parser, run_main, weights_path


def weights_arg(text):
    """NET=WEIGHTS, or WEIGHTS alone for voc-fcn8s; WEIGHTS is a file or a release name (fcn weights list)."""
    net, sep, path = text.partition("=")
    return (net, weights_path(path)) if sep else ("voc-fcn8s", weights_path(text))


def original_weights(args):
    for net_name, _ in args.weights:
        net_spec(net_name, "deploy")  # an unknown net fails here, before any dataset is read
    for net_name, path in args.weights:
        dataset = evaluate.make_dataset("voc", args.root, args.split, net_name)
        if args.limit:
            dataset.ids = dataset.ids[:args.limit]
        net = for_inference(build_net(net_name, phase="deploy", weights=path).to(args.device).eval(), args.mode)
        results = evaluate.evaluate(net, dataset, net_name=net_name, device=args.device)
        print(evaluate.markdown_table(results, net_name, "voc", args.split) + "\n")
    return 0


def build_parser(prog=None):
    p = parser(prog, __doc__)
    p.add_argument("--dataset", choices=["synthetic", "voc"], default="synthetic")
    p.add_argument("--root", type=Path, help="VOC2011 directory (with --dataset voc)")
    p.add_argument("--split", default="seg11valid")
    p.add_argument("--weights", type=weights_arg, action="append", default=[], metavar="NET=WEIGHTS")
    p.add_argument("--limit", type=int, help="score only the first N images (voc)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_mode(p, " (with --dataset voc)")
    p.add_argument("--out", type=Path, default=Path("out/reproduce"))
    p.add_argument("--seed", type=int, default=reproduce.Config.seed, help="the world's and the runs' seed")
    p.add_argument("--threads", type=int, default=0, help="the cores the runs share, one thread each (default: "
                   "every core; the table does not depend on it); with --pretrain: torch threads")
    p.add_argument("--quick", action="store_true", help="a few iterations per stage: checks the pipeline only")
    p.add_argument("--iters", type=int, nargs=3, metavar=("N32", "N16", "N8"), help="iterations per stage")
    p.add_argument("--no-controls", action="store_true", help="skip the trained-on and no-classifier controls")
    p.add_argument("--classifier", type=Path, help="the stand-in classifier's .caffemodel (default: shipped)")
    p.add_argument("--pretrain", action="store_true",
                   help="train the stand-in classifier and write it (default: into the package) instead")
    return p


def run(args):
    if args.dataset == "voc":
        if args.root is None or not args.weights:
            raise UsageError("--dataset voc needs --root and at least one --weights")
        return original_weights(args)
    cfg = reproduce.Config(seed=args.seed, threads=args.threads, classifier=str(args.classifier or ""))
    if args.no_controls:
        cfg.controls = ()
    if args.quick:
        cfg.size, cfg.iters, cfg.val_images, cfg.val_every = 64, (6, 4, 4), 4, 5
        cfg.pretrain.update(iters=6, batch=2, val_images=4)
    if args.iters:
        cfg.iters = tuple(args.iters)
    ensure_dir(args.out)
    t = time.perf_counter()
    if args.pretrain:
        reproduce.pretrain(cfg, out=args.out / "pretrain", path=args.classifier)
        print(f"total {time.perf_counter() - t:.0f} s")
        return 0
    if not Path(cfg.classifier or reproduce.classifier_weights()).is_file():
        raise FileNotFoundError(errno.ENOENT, "no classifier here: run with --pretrain first",
                                str(cfg.classifier or reproduce.classifier_weights()))
    summary, table = reproduce.run(cfg, out=args.out)
    print("\nSynthetic world, held-out images (the format of CVPR 2015 Table 2; then per-class IU):\n")
    print(table)
    print("\n" + reproduce.findings(summary))
    print(f"\nfigures: {args.out}/results.png, per_class_iu.png, training_curves.png; results.json; "
          f"total {time.perf_counter() - t:.0f} s, {summary['runs_side_by_side']} runs side by side on "
          f"{summary['cores']} core{'s' * (summary['cores'] != 1)}")
    return 0


def main(argv=None, prog=None):
    return run_main(build_parser, run, argv, prog)
