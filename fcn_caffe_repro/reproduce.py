"""The main job: the paper's pipeline in miniature on the embedded synthetic world.

1. A classifier stands in for ILSVRC: the VGG16 classifier (every width / 16) trained on
   SyntheticShapes through the same Trainer and SGDSolver (`pretrain`, shipped as a small
   .caffemodel inside the package: `classifier_weights()`).
2. Convolutionalised as the release does it: `surgery.transplant` into FCN-32s (fc6/fc7 reshaped
   into convolutions, fc8 dropped), score layers zero, upsampling bilinear and frozen.
3. FCN-32s -> FCN-16s -> FCN-8s, each initialised from the previous stage (`surgery.staged_init`),
   with the release's solver settings (weight decay 5e-4, fixed lr, one image per iteration,
   unnormalised loss); base_lr, momentum and a gradient clip differ, measured (`Config.base_lr`,
   `Config.first_stage_lr`).
4. FCN-8s at once (voc-fcn8s-atonce, the fixed Scale layers on the pool skips) from the same
   classifier, for as many iterations as the three stages together; the skip scales follow the
   rule behind the release's constants, measured in this net (`balance_skips`).
5. Two controls: FCN-32s trained on as long as FCN-8s (is it the skips or the iterations?), and
   FCN-32s from He-initialised weights (does the classifier stage earn its place?).

Every stage is a `training.Trainer` run validated with the one scorer (`evaluate.Evaluator`); the
table comes from the same scorer on held-out images. The runs go side by side, one process and one
thread each (`run`), so call it from under ``if __name__ == "__main__":`` in a script.
"""
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from . import evaluate, nets, surgery
from .atomic import write_json
from .data.synthetic import THIN, Synthetic, SyntheticShapes
from .layers import Convolution, InnerProduct
from .net import CaffeNet
from .solver import SGDSolver, solver_params
from .training import Trainer, copy_weights

CLASSIFIER_FILE = "vgg16-synthetic.caffemodel"
INPUT_SPREAD = 60.0  # about the std of a mean-subtracted input pixel: conv1_1 is divided by it
TITLES = {"fcn32s": "FCN-32s", "fcn16s": "FCN-16s", "fcn8s": "FCN-8s", "atonce": "FCN-8s at once",
          "control": "FCN-32s, trained on", "scratch": "FCN-32s, no classifier"}
NETS = {"fcn32s": "voc-fcn32s", "fcn16s": "voc-fcn16s", "fcn8s": "voc-fcn8s", "atonce": "voc-fcn8s-atonce",
        "control": "voc-fcn32s", "scratch": "voc-fcn32s"}


@dataclass
class Config:
    size: int = 128
    num_classes: int = 6
    width_divisor: int = 16
    # The measurements behind each value below are in docs/main_job_trials.md (the recipe and the
    # trials, seeds and CPUs named there).
    # FCN-32s, 16s, 8s: FCN-32s gains 1-2 points from 1500 to 2000; FCN-16s needs 500 for its
    # last iterate to settle; every other iteration goes to FCN-8s, which learns the thin classes
    # at at once's pace per iteration of the stride-8 path (at once trains it through all 9100).
    iters: tuple = (2000, 500, 6600)
    # The release's 1e-10 at momentum 0.99 is for 500x500 images and the full-width VGG16: with an
    # unnormalised loss the gradient grows with the pixel count (15x fewer here). A clip below the
    # usual gradient norm makes most steps lr x clip long, so one-image batches take no huge
    # steps and a run moves at the pace its lr sets. This lr: the runs that continue a trained run.
    base_lr: float = 1.8e-6
    # The runs that start from the classifier or He init (FCN-32s, its no-classifier twin, FCN-8s
    # at once) at 2/3 of that, as the release runs FCN-32s and at once at one lr (1e-10; FCN-16s
    # 1e-12, FCN-8s 1e-14). Where the transplanted fc6/fc7 meet their first segmentation
    # gradients, 1.8e-6 made one seed of eleven lose a class for good in FCN-32s (blob IU 0.1 after
    # 1500 iterations); at 1.2e-6 none did. At once at 1.8e-6 ended 1.8 points ahead of staged
    # FCN-8s on average over eleven seeds (up to 4.2), at 1.2e-6 0.6 (-1.1 to +2.1).
    first_stage_lr: float = 1.2e-6
    momentum: float = 0.9
    clip_gradients: float = 1e4
    # Caffe's "step" policy, lr x0.1 from this fraction of each run's iterations (0: fixed lr, as
    # the release): one-image batches at a fixed lr leave the last iterate noisy.
    lr_drop_at: float = 0.8
    val_images: int = 100
    # validating FCN-8s on 100 images takes about a second: every 1000 iterations costs a few % of
    # a run's time
    val_every: int = 1000
    seed: int = 1337
    threads: int = 0  # 0: every core of the machine
    controls: tuple = ("control", "scratch")
    classifier: str = ""  # a .caffemodel; "" is the one shipped in the package
    pretrain: dict = field(default_factory=lambda: dict(iters=1500, batch=16, base_lr=0.005, clip_gradients=10.0,
                                                        val_images=500))


def classifier_weights():
    """Path of the shipped stand-in classifier (made by `tools/reproduce.py --pretrain`)."""
    return Path(str(resources.files("fcn_caffe_repro") / "weights" / CLASSIFIER_FILE))


def he_init(net, input_range=INPUT_SPREAD):
    """He-normal convolutions and inner products, zero biases and score layers (as the paper's),
    conv1_1 divided by the inputs' spread (about 60) so that activations start at unit scale."""
    with torch.no_grad():
        for name, m in net.layer_modules():
            if isinstance(m, (Convolution, InnerProduct)):
                if name.startswith("score"):
                    m.weight.zero_()
                else:
                    m.weight.normal_(0.0, math.sqrt(2.0 / m.weight[0].numel()))
                if m.bias is not None:
                    m.bias.zero_()
        net.conv1_1.weight.div_(input_range)


def balance_skips(net, data, images=8):
    """Set FCN-8s at once's fixed skip scales to the rule the release's constants follow: pool4
    and pool3 multiplied so that their magnitude (RMS over `images` training images, TEST-phase
    forward) matches fc7's, the layer whose score they are added to. The release's 0.01 and 1e-4
    are that ratio for the full-width VGG16 on VOC; in this net the pools are only 2-5x larger than
    fc7, and the release's constants would mute the skips (measured in the README). Returns the
    scales {layer: value}."""
    was_training = net.training
    net.eval()
    sums = {}
    with torch.no_grad():
        for i in range(images):
            x, y = data[i]
            blobs = net(return_blobs=("fc7", "pool4", "pool3"), data=x[None], label=y[None, None].float())
            for blob in ("fc7", "pool4", "pool3"):
                sums[blob] = sums.get(blob, 0.0) + float(blobs[blob].double().pow(2).mean())
    net.train(was_training)
    scales = {}
    with torch.no_grad():
        for pool in ("pool4", "pool3"):
            layer = getattr(net, "scale_" + pool)
            scales["scale_" + pool] = math.sqrt(sums["fc7"] / sums[pool])
            layer.weight.fill_(scales["scale_" + pool])
    return scales


def _base_lr(key, cfg):
    """`first_stage_lr` for the runs that start from the classifier or from He init (FCN-32s, its
    no-classifier twin and FCN-8s at once: the release too runs FCN-32s and at once at one lr),
    `base_lr` for those that continue a trained run."""
    fresh = {k for k, source, _, _ in _plan(cfg)[0] if source in ("classifier", None)}
    return cfg.first_stage_lr if key in fresh else cfg.base_lr


def _solver(name, cfg, base_lr, **overrides):
    params, _ = solver_params(nets.solver_spec(name))
    params.update(base_lr=base_lr, momentum=cfg.momentum, clip_gradients=cfg.clip_gradients, display=50,
                  snapshot=0, snapshot_after_train=False, random_seed=-1)
    params.update(overrides)
    net = nets.build_net(name, phase="train", num_classes=cfg.num_classes, width_divisor=cfg.width_divisor)
    return SGDSolver(net, **params)


def _val_net(name, cfg):
    """The deploy net the scores come from, in the fast inference mode (fast/: oneDNN with the ReLU
    fused and weights prepacked, the skips fused): 18 against 28 ms per image for FCN-8s on an
    Intel Xeon, one thread, where the job scores 100 images 25 times."""
    net = nets.build_net(name, phase="deploy", num_classes=cfg.num_classes, width_divisor=cfg.width_divisor)
    return net.eval().optimize()


def _train(solver, name, key, data, val, cfg, out, start, bar_position):
    """One Trainer run of `key` from sample position `start`; returns its log records.
    `bar_position`: the progress bar's line, None for no bar."""
    run_dir = out / "stages" / key
    (run_dir / "log.jsonl").unlink(missing_ok=True)
    # workers=0: an image is generated in about 4 ms; a loader process would take a core from the
    # runs beside this one (one run on 2 threads: 19.6 against 25.0 iterations/s measured)
    val_net = _val_net(NETS[key], cfg)  # prepared as score()'s: the curves end at the table's numbers
    trainer = Trainer(solver, data, run_dir, seed=cfg.seed, val=val, val_net=val_net,
                      val_every=cfg.val_every, workers=0, progress=bar_position is not None, net_name=name,
                      sample_offset=start, desc=TITLES[key], bar_position=bar_position)
    trainer.run()
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def score(net, name, data, cfg):
    """The one scorer's results on held-out images, through a deploy net given the weights."""
    deploy = _val_net(name, cfg)
    copy_weights(net, deploy)
    return evaluate.evaluate(deploy, data, net_name=name, workers=0, progress=False)["tasks"]["label"]


def pretrain(cfg=None, out="out/pretrain", path=None, log=print, progress=True, max_iter=None):
    """Train the stand-in classifier on SyntheticShapes and write its .caffemodel (default: the
    package's); returns its held-out accuracy. VGG16 as its train phase fills it (MSRA), conv1_1
    divided by the inputs' spread (about 60) so that activations start at unit scale; VGG's
    solver with a gradient clip (without it lr 0.01 diverged within 10 iterations) and half VGG's
    lr (at 0.01 two or three families stayed merged into one: 57.5 % held-out after 1500
    iterations, against 100 % at 0.005). `max_iter` stops early on the same schedule (for
    checking a rerun against a run's snapshots)."""
    cfg = cfg or Config()
    p = cfg.pretrain
    _threads(cfg)
    classes = cfg.num_classes - 1
    torch.manual_seed(cfg.seed)
    params, _ = solver_params(nets.solver_spec(nets.CLASSIFIER))
    params.update(base_lr=p["base_lr"], clip_gradients=p["clip_gradients"], stepsize=int(0.7 * p["iters"]),
                  max_iter=max_iter or p["iters"], display=20, snapshot=250, random_seed=cfg.seed)
    net = CaffeNet(nets.vgg.classifier(classes, cfg.width_divisor, "train", batch_size=p["batch"]), phase="train")
    with torch.no_grad():
        net.conv1_1.weight.div_(INPUT_SPREAD)
    solver = SGDSolver(net, **params)
    val = SyntheticShapes(seed=cfg.seed + 1, n=p["val_images"], num_classes=classes)
    val_net = nets.build_net(nets.CLASSIFIER, "deploy", num_classes=classes, width_divisor=cfg.width_divisor)
    trainer = Trainer(solver, SyntheticShapes(seed=cfg.seed, n=10 ** 7, num_classes=classes), out, seed=cfg.seed,
                      val=val, val_net=val_net, val_every=250, workers=1, progress=progress, desc="classifier")
    trainer.run()
    accuracy = trainer.validate()["label"]["pixel_acc"]
    path = Path(path) if path else classifier_weights()
    net.save_caffemodel(path)
    if log:
        log(f"classifier: held-out accuracy {100 * accuracy:.1f} % on {len(val)} images after {solver.iter} "
            f"iterations of {p['batch']}; wrote {path}")
    return accuracy


def _threads(cfg):
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    return torch.get_num_threads()


def _datasets(cfg):
    """The world's training stream and its held-out images."""
    return (Synthetic(seed=cfg.seed, n=10 ** 9, size=cfg.size, num_classes=cfg.num_classes),
            Synthetic(seed=cfg.seed + 1, n=cfg.val_images, size=cfg.size, num_classes=cfg.num_classes, keep=True))


def _plan(cfg):
    """(run, initialised from, iterations of this run, first sample position = iterations before it),
    in the order a free process takes the first whose source is ready, and the number of processes.
    The runs fall into lanes of equal length (as many iterations as the three stages together):
    FCN-32s -> 16s -> 8s; FCN-8s at once; the no-classifier run, then the control (which starts
    from FCN-32s, ready about when the no-classifier run of the same length ends). One process per
    lane: on 2 cores, two processes left one alone for the last 30 % of the job (FCN-8s at once,
    then FCN-8s), where three time-sharing the cores made as many iterations per second as two
    (AMD EPYC, one thread each: 45 iterations/s per process for two, 32 + 31 + 27 for three)."""
    n32, n16, n8 = cfg.iters
    plan = [("fcn32s", "classifier", n32, 0), ("atonce", "classifier", n32 + n16 + n8, 0)]
    plan += [("scratch", None, n32, 0)] if "scratch" in cfg.controls else []
    plan += [("fcn16s", "fcn32s", n16, n32)]
    plan += [("control", "fcn32s", n16 + n8, n32)] if "control" in cfg.controls else []
    plan += [("fcn8s", "fcn16s", n8, n32 + n16)]
    return plan, 2 + bool(cfg.controls)


def _startable(pending, finished, free):
    """The first `free` runs of `pending` (plan order) whose source is finished (or None: He init)."""
    return [t for t in pending if t[1] is None or t[1] in finished][:free]


def _cores(cfg):
    """The cores the job's processes share: the first `cfg.threads` of those this process may
    use (all of them for 0)."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    return allowed[:cfg.threads] if cfg.threads else allowed


def _end_with_parent(parent):
    """Make this worker process end when the job's process does (Linux: PR_SET_PDEATHSIG): a
    job killed with SIGTERM otherwise leaves its runs training on for minutes, writing into `out`."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent ended before the call above
        os._exit(1)


def _stage(cfg, out, key, source, iters, start, bar_position, cores=None):
    """One run of the plan, in a process of its own on one thread (so its numbers do not depend on
    how many run beside it), on `cores` (None: anywhere): initialise, score, train, score; the
    weights go to a .caffemodel the runs that continue it start from."""
    torch.set_num_threads(1)
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    torch.manual_seed(cfg.seed)
    train_data, val_data = _datasets(cfg)
    name = NETS[key]
    solver = _solver(name, cfg, _base_lr(key, cfg))
    if source is None:
        he_init(solver.net)
        surgery.interp(solver.net, surgery.upsampling_layers(solver.net))
    else:
        surgery.staged_init(solver.net, source, log=None)
    skip_scales = balance_skips(solver.net, train_data) if key == "atonce" else None
    initial = score(solver.net, name, val_data, cfg)
    t = time.perf_counter()
    solver.params["max_iter"] = iters
    if cfg.lr_drop_at:
        solver.params.update(lr_policy="step", gamma=0.1, stepsize=max(1, int(cfg.lr_drop_at * iters)))
    curve = _train(solver, name, key, train_data, val_data, cfg, out, start, bar_position)
    m = score(solver.net, name, val_data, cfg)
    weights = out / "stages" / key / f"{key}.caffemodel"
    solver.net.save_caffemodel(weights)
    result = {"metrics": m["metrics"], "per_class_iu": m["per_class_iu"], "iterations": start + iters,
              "train_s": time.perf_counter() - t, "initial": initial["metrics"]}
    if skip_scales:
        result["skip_scales"] = skip_scales
    return result, _with_ends(curve, initial, m, iters), str(weights)


def _with_ends(curve, initial, final, iters):
    """The run's log records with its scores before and after training as validations at
    iterations 0 and `iters` (unless logged there), so every curve runs from its start to the
    table's number, runs shorter than the validation interval (FCN-16s's 500) included."""
    def val(it, scores):
        return {"event": "val", "iter": it, "results": {"label": scores["metrics"]}}

    logged = {r["iter"] for r in curve if r.get("event") == "val"}
    return ([] if 0 in logged else [val(0, initial)]) + curve + ([] if iters in logged else [val(iters, final)])


def run(cfg=None, out="out/reproduce", log=print, progress=True):
    """All stages, the table, the figures and results.json in `out`; returns (summary, table).

    The runs go to one process per lane of `_plan`, each on one thread, sharing `cfg.threads` cores
    (default: all), a run starting as soon as the run it continues has finished: on 2 cores two
    single-threaded runs side by side did 27 iterations/s together where one run on both threads
    did 17-25. Each run's numbers depend only on the seed, so the table is the same for any
    --threads."""
    cfg = cfg or Config()
    plan, workers = _plan(cfg)
    cores = _cores(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _, val_data = _datasets(cfg)
    classifier = Path(cfg.classifier) if cfg.classifier else classifier_weights()
    if log:
        log(f"classifier stage: {classifier}; {workers} runs side by side, one thread each, on "
            f"{len(cores)} core{'s' * (len(cores) != 1)}")
    weights = {"classifier": str(classifier)}
    results, curves = {}, {}
    pending, running, free = plan, {}, list(range(workers))
    t0 = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # no fork of a process whose OpenMP pool is running
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_end_with_parent,
                             initargs=(os.getpid(),)) as pool:
        while pending or running:
            for task in _startable(pending, weights, len(free)):
                key, source, iters, start = task
                pending.remove(task)
                slot = free.pop(0)
                bar = slot if progress else None
                future = pool.submit(_stage, cfg, out, key, source and weights[source], iters, start, bar,
                                     cores if cfg.threads else None)
                running[future] = (key, slot)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                key, slot = running.pop(future)
                free.append(slot)
                results[key], curves[key], weights[key] = future.result()
                if log:
                    r = results[key]
                    scales = r.get("skip_scales")
                    log(f"{TITLES[key]}: mean IU {100 * r['initial']['mean_iu']:.1f} -> "
                        f"{100 * r['metrics']['mean_iu']:.1f} after {r['iterations']} iterations "
                        f"({r['train_s']:.0f} s)" + (" with skip scales " + ", ".join(
                            f"{k} {v:.3g}" for k, v in scales.items()) if scales else ""))
    elapsed = time.perf_counter() - t0
    results = {k: results[k] for k in TITLES if k in results}
    deploys = {}
    for key in ("fcn32s", "fcn16s", "fcn8s", "atonce"):
        deploys[key] = _val_net(NETS[key], cfg)
        deploys[key].load_caffemodel(weights[key], strict=False)
    classes = val_data.classes
    _figures(out, results, {k: curves[k] for k in results}, deploys, val_data)
    summary = {"config": asdict(cfg), "runs_side_by_side": workers, "cores": len(cores), "elapsed_s": elapsed,
               "classes": classes, "thin_classes": list(THIN), "results": results}
    write_json(out / "results.json", summary, allow_nan=True)
    return summary, table(results, classes)


def findings(summary):
    """The paper's claims checked on this run, a line each."""
    r = summary["results"]
    iu = {k: 100 * v["metrics"]["mean_iu"] for k, v in r.items()}
    lines = [f"skips refine: FCN-16s - FCN-32s = {iu['fcn16s'] - iu['fcn32s']:+.1f} mean IU, "
             f"FCN-8s - FCN-16s = {iu['fcn8s'] - iu['fcn16s']:+.1f}"]
    for c in summary["thin_classes"]:
        lines.append(f"thin class {c}: IU " + " -> ".join(f"{100 * r[k]['per_class_iu'][c]:.1f}"
                                                          for k in ("fcn32s", "fcn16s", "fcn8s")) + " (32s -> 16s -> 8s)")
    lines.append(f"at once vs staged: FCN-8s at once - FCN-8s = {iu['atonce'] - iu['fcn8s']:+.1f} mean IU")
    if "control" in iu:
        lines.append(f"control: FCN-32s trained as long as FCN-8s: {iu['control']:.1f} (FCN-8s - control = "
                     f"{iu['fcn8s'] - iu['control']:+.1f})")
    if "scratch" in iu:
        lines.append(f"classifier stage: FCN-32s from the classifier - from He init = "
                     f"{iu['fcn32s'] - iu['scratch']:+.1f} mean IU at {r['scratch']['iterations']} iterations")
    return "\n".join(lines)


def table(results, classes):
    """Table 2's format (pixel acc., mean acc., mean IU, f.w. IU, in percent), then per-class IU."""
    lines = ["| net | pixel acc. | mean acc. | mean IU | f.w. IU | iterations |", "|---|---:|---:|---:|---:|---:|"]
    for key, r in results.items():
        m = r["metrics"]
        lines.append(f"| {TITLES[key]} | {100 * m['pixel_acc']:.1f} | {100 * m['mean_acc']:.1f} | "
                     f"{100 * m['mean_iu']:.1f} | {100 * m['fwavacc']:.1f} | {r['iterations']} |")
    lines += ["", "| net | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for key, r in results.items():
        lines.append(f"| {TITLES[key]} | " + " | ".join(f"{100 * r['per_class_iu'][c]:.1f}" for c in classes) + " |")
    return "\n".join(lines)


def _figures(out, results, curves, deploys, val_data, rows=4):
    from .visualize import iu_bar_chart, results_figure, training_curves  # matplotlib: only when drawing

    keys = [k for k in ("fcn32s", "fcn16s", "fcn8s", "atonce") if k in deploys]
    picks = _telling_images(val_data, rows)
    with torch.no_grad():
        preds = {k: [evaluate.class_map(deploys[k](data=val_data[i][0][None])["score"][0]).numpy()
                     for i in picks] for k in keys}
    fig = results_figure([(val_data.rgb(i), val_data[i][1].numpy(), [preds[k][j] for k in keys])
                          for j, i in enumerate(picks)], [TITLES[k] for k in keys], classes=val_data.classes)
    fig.savefig(out / "results.png", dpi=100)
    bars = iu_bar_chart({TITLES[k]: [r["per_class_iu"][c] for c in val_data.classes] for k, r in results.items()},
                        val_data.classes, title="synthetic world: per-class IU")
    bars.savefig(out / "per_class_iu.png", dpi=100)
    training_curves({TITLES[k]: c for k, c in curves.items()}).savefig(out / "training_curves.png", dpi=100)


def _telling_images(val_data, rows):
    """The held-out images with the most thin-structure pixels: where the strides differ."""
    thin = [val_data.classes.index(c) for c in THIN if c in val_data.classes]
    counts = [int(np.isin(val_data[i][1].numpy(), thin).sum()) for i in range(len(val_data))]
    return sorted(np.argsort(counts)[::-1][:rows].tolist())
