"""fcn train: train an FCN with Caffe's solver, as the release's solve.py scripts do.

    fcn train --net voc-fcn32s --solver prototxt/voc-fcn32s/solver.prototxt \\
        --init VGG_ILSVRC_16_layers --dataset sbd --root ~/data/sbd --val voc:seg11valid --val-root ~/data/VOC2011
    fcn train --net voc-fcn32s --init VGG_ILSVRC_16_layers --dataset folder --root my_data --split train \
        --val folder:val                                # your own data: classes.txt sets the class count
    torchrun --nproc_per_node 4 -m fcn_caffe_repro train ...   # one image per process per pass; see distributed.py

--init is a file (.caffemodel, .safetensors, .pt) or a release name (fcn weights fetch NAME).
OUT (default runs/NET) gets log.jsonl (one JSON record per display interval, validation, snapshot),
snapshots/train_iter_N/ (solver state and .caffemodel, written as one); --resume continues from the newest
complete one that loads (a killed run's temporaries removed, a damaged newer one skipped with a warning).
A training item that fails to load stops the run with one line and a snapshot of the iteration reached.
"""
import sys
from pathlib import Path

import torch

from .. import distributed, evaluate
from ..data import DATASETS
from ..data.release import SEED
from ..fast import for_inference
from ..nets import build_net, data_layer_params
from ..surgery import staged_init
from ..training import Trainer, make_solver
from .common import UsageError, class_count, parser, run_main, weights_path


def build_parser(prog=None):
    p = parser(prog, __doc__)
    p.add_argument("--net", help="registry name, e.g. voc-fcn32s (needed for validation)")
    p.add_argument("--solver", type=Path, help="Caffe solver.prototxt (default: the release's for --net)")
    p.add_argument("--init", type=weights_path, help="initial weights (a file or a release name): a classifier (transplanted, fc6/fc7 coerced) "
                                             "or the previous stage (FCN-32s for 16s, 16s for 8s)")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--root", type=Path, help="training dataset directory")
    p.add_argument("--split", help="training split (default: the dataset's)")
    p.add_argument("--data-opt", type=evaluate.dataset_option, action="append", default=[], metavar="KEY=VALUE",
                   help="extra dataset argument, e.g. n=200 for synthetic")
    p.add_argument("--val", metavar="DATASET[:SPLIT]", help="validate on this, e.g. voc:seg11valid")
    p.add_argument("--val-root", type=Path, help="validation dataset directory (default: --root)")
    p.add_argument("--val-opt", type=evaluate.dataset_option, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--val-every", type=int, default=4000, help="iterations between validations (solve.py: 4000)")
    p.add_argument("--val-limit", type=int, help="validate on the first N images only")
    p.add_argument("--max-iter", type=int, help="override the solver's max_iter")
    p.add_argument("--snapshot-every", type=int, help="override the solver's snapshot interval")
    p.add_argument("--num-classes", type=int, help="the net's class count (default with --dataset folder: its own)")
    p.add_argument("--width-divisor", type=int, default=1, help="shrink every base-net width (smoke tests)")
    p.add_argument("--seed", type=int, help="image-order seed (default: the train data layer's, 1337)")
    p.add_argument("--device", default=None, help="default: cuda if available (one GPU per process)")
    p.add_argument("--workers", type=int, default=1, help="data-loading processes (0: load in the loop)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/NET)")
    p.add_argument("--resume", nargs="?", const="latest", help="continue from the latest snapshot in OUT, "
                                                              "or from the given .solverstate.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def data_seed(net_name):
    """The seed of the release's train data layer (param_str), 1337 when it names none."""
    if net_name is None:
        return SEED
    return int(data_layer_params(net_name, "train")[1].get("seed", SEED))


def run(args):
    if args.net is None and args.solver is None:
        raise UsageError("give --net, --solver or both")
    if args.val and args.net is None:
        raise UsageError("--val needs --net (validation runs the net's deploy definition)")
    cpu = args.device is not None and torch.device(args.device).type == "cpu"
    device = distributed.init_from_env("gloo" if cpu else None)  # joins torchrun's group, if any
    if args.device is not None and not (device.type == "cuda" and torch.device(args.device).type == "cuda"):
        device = torch.device(args.device)
    rank, world = distributed.rank_and_world()
    overrides = {"max_iter": args.max_iter} if args.max_iter else {}
    train = evaluate.make_dataset(args.dataset, args.root, args.split, args.net, **dict(args.data_opt))
    args.num_classes = class_count(args, train)
    solver = make_solver(args.net, args.solver, device, args.num_classes, args.width_divisor, overrides)
    staged_init(solver.net, args.init, log=print if rank == 0 and not args.quiet else None)
    if world > 1:
        distributed.make_distributed(solver)
    val = val_net = None
    if args.val:
        name, _, split = args.val.partition(":")
        val = evaluate.make_dataset(name, args.val_root or args.root, split or None, args.net,
                                    **dict(args.val_opt))
        # scored in the fast mode, as the main job's and fcn eval's validation nets are
        val_net = for_inference(build_net(args.net, "deploy", args.num_classes, args.width_divisor).to(device))
    out = args.out or Path("runs") / (args.net or args.solver.parent.name)
    trainer = Trainer(solver, train, out, seed=args.seed if args.seed is not None else data_seed(args.net),
                      val=val, val_net=val_net, val_every=args.val_every, val_limit=args.val_limit,
                      snapshot_every=args.snapshot_every, device=device, workers=args.workers,
                      progress=not args.quiet, net_name=args.net)
    if args.resume:
        if not trainer.resume(None if args.resume == "latest" else args.resume) and rank == 0:
            print(f"no snapshot in {trainer.snapshot_dir}: starting from iteration 0", file=sys.stderr)
    trainer.run()
    if rank == 0:
        print(f"done at iteration {solver.iter}; smoothed loss {solver.smoothed_loss:.6g}; run in {out}")
    return 0


def main(argv=None, prog=None):
    return run_main(build_parser, run, argv, prog)
