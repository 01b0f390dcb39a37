"""The main job: the paper's staged FCN-32s -> 16s -> 8s training on the embedded synthetic data.

Small-width VGG16 FCNs (every base-net width / `width_divisor`) are trained with Caffe's
SGDSolver as the release's solver.prototxt sets it (momentum 0.99, weight decay 5e-4, fixed lr,
one image per iteration, unnormalised loss, frozen bilinear upsampling): FCN-32s first, then
FCN-16s initialised from it and FCN-8s from FCN-16s (surgery.staged_init), each scored on held-out
images with the paper's four metrics (Table 2's format).

What differs from the paper, and why: there is no ImageNet classifier to start from, so FCN-32s
starts from He-initialised weights (conv1_1 scaled down by the input range, ~60, so activations
start at unit scale) with zero score layers, and trains with a larger lr than the paper's 1e-10
(scaled for ~16k-pixel images and a net trained from scratch); the same lr is kept for every
stage. A control, FCN-32s trained on for as many more iterations as 16s and 8s together,
separates the skips' effect from the extra training.
"""
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import metrics, nets, surgery
from .data.synthetic import Synthetic
from .layers import Convolution
from .solver import SGDSolver, solver_params
from .training import sample_index


@dataclass
class Config:
    size: int = 128
    num_classes: int = 6
    width_divisor: int = 16
    iters: tuple = (2500, 1500, 1500)  # FCN-32s, 16s, 8s
    base_lr: float = 1e-7
    val_images: int = 60
    seed: int = 1337
    threads: int = 0  # 0: torch's default
    control: bool = True


STAGES = ("voc-fcn32s", "voc-fcn16s", "voc-fcn8s")
TITLES = {"voc-fcn32s": "FCN-32s", "voc-fcn16s": "FCN-16s", "voc-fcn8s": "FCN-8s",
          "control": "FCN-32s, trained on"}


def he_init(net, input_range=60.0):
    """He-normal convolutions, zero score layers (as the paper's), conv1_1 scaled to the input."""
    with torch.no_grad():
        for name, m in net.layer_modules():
            if isinstance(m, Convolution):
                if name.startswith("score"):
                    m.weight.zero_()
                else:
                    m.weight.normal_(0.0, math.sqrt(2.0 / m.weight[0].numel()))
                if m.bias is not None:
                    m.bias.zero_()
        first = next(m for _, m in net.layer_modules() if isinstance(m, Convolution))
        first.weight.div_(input_range)


def make_solver(name, cfg):
    params, _ = solver_params(nets.solver_spec(name))
    params.update(base_lr=cfg.base_lr, display=0, snapshot=0)
    net = nets.build_net(name, phase="train", num_classes=cfg.num_classes, width_divisor=cfg.width_divisor)
    return SGDSolver(net, **params)


def train(solver, data, iters, seed, start, desc):
    """`iters` Caffe iterations, one image each, drawn as the release's data layers draw them."""
    bar = tqdm(range(iters), desc=desc, unit="it", leave=False, mininterval=1.0)
    losses = []
    for k in bar:
        image, label = data[sample_index(seed, start + k, len(data))]
        loss = solver.step(data=image[None], label=label[None, None].float())
        losses.append(loss / label.numel())
        if k % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    bar.close()
    return losses


def score(train_net, name, data, cfg):
    """The paper's metrics on held-out images, with the deploy net sharing the trained weights."""
    net = nets.build_net(name, phase="deploy", num_classes=cfg.num_classes, width_divisor=cfg.width_divisor)
    net.load_state_dict(train_net.state_dict())
    net.eval().fuse()
    acc = metrics.Accumulator(cfg.num_classes)
    preds = []
    with torch.no_grad():
        for i in range(len(data)):
            image, label = data[i]
            pred = net(data=image[None])["score"][0].argmax(0)
            acc.update(label, pred)
            preds.append(pred.numpy().astype(np.uint8))
    return acc.scores(), preds


def table(results):
    """Table 2's format: pixel acc., mean acc., mean IU, f.w. IU per net, in percent."""
    lines = ["| net | pixel acc. | mean acc. | mean IU | f.w. IU | iterations |", "|---|---:|---:|---:|---:|---:|"]
    for key, r in results.items():
        m = r["metrics"]
        lines.append(f"| {TITLES[key]} | {100 * m['pixel_acc']:.1f} | {100 * m['mean_acc']:.1f} | "
                     f"{100 * m['mean_iu']:.1f} | {100 * m['fwavacc']:.1f} | {r['iterations']} |")
    return "\n".join(lines)


def run(cfg=None, out="out/reproduce", log=print):
    """All stages, the table, the figures and results.json in `out`; returns the results."""
    cfg = cfg or Config()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    train_data = Synthetic(seed=cfg.seed, n=100_000, size=cfg.size, num_classes=cfg.num_classes)
    val_data = Synthetic(seed=cfg.seed + 1, n=cfg.val_images, size=cfg.size, num_classes=cfg.num_classes)
    results, preds, previous, done = {}, {}, None, 0
    t0 = time.perf_counter()
    for name, iters in zip(STAGES, cfg.iters):
        solver = make_solver(name, cfg)
        if previous is None:
            he_init(solver.net)
            surgery.interp(solver.net, surgery.upsampling_layers(solver.net))
        else:
            surgery.staged_init(solver.net, previous, log=None)
        t = time.perf_counter()
        losses = train(solver, train_data, iters, cfg.seed, done, TITLES[name])
        done += iters
        m, preds[name] = score(solver.net, name, val_data, cfg)
        results[name] = {"metrics": m, "iterations": done, "train_s": time.perf_counter() - t,
                         "final_loss": float(np.mean(losses[-100:]))}
        log(f"{TITLES[name]}: mean IU {100 * m['mean_iu']:.1f} after {done} iterations "
            f"({results[name]['train_s']:.0f} s)")
        previous = solver.net
        if name == STAGES[0]:
            first = {k: v.detach().clone() for k, v in solver.net.state_dict().items()}
    if cfg.control:
        solver = make_solver(STAGES[0], cfg)
        solver.net.load_state_dict(first)
        extra = sum(cfg.iters[1:])
        t = time.perf_counter()
        train(solver, train_data, extra, cfg.seed, cfg.iters[0], TITLES["control"])
        m, preds["control"] = score(solver.net, STAGES[0], val_data, cfg)
        results["control"] = {"metrics": m, "iterations": cfg.iters[0] + extra, "train_s": time.perf_counter() - t}
        log(f"{TITLES['control']}: mean IU {100 * m['mean_iu']:.1f}")
    elapsed = time.perf_counter() - t0
    _figures(out, results, preds, val_data)
    summary = {"config": asdict(cfg), "elapsed_s": elapsed, "classes": val_data.classes,
               "results": {k: {**v, "metrics": _jsonable(v["metrics"])} for k, v in results.items()}}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    return summary, table(results)


def _jsonable(m):
    return {k: (v.tolist() if isinstance(v, np.ndarray) else float(v)) for k, v in m.items()}


def _figures(out, results, preds, val_data, rows=4):
    from .visualize import iu_bar_chart, results_figure

    keys = [k for k in STAGES if k in preds]
    picks = range(min(rows, len(val_data)))
    fig = results_figure([(val_data.rgb(i), val_data[i][1].numpy(), [preds[k][i] for k in keys]) for i in picks],
                         [TITLES[k] for k in keys], classes=val_data.classes)
    fig.savefig(out / "results.png", dpi=100)
    bars = iu_bar_chart({TITLES[k]: results[k]["metrics"]["iu"] for k in results}, val_data.classes,
                        title="synthetic: per-class IU")
    bars.savefig(out / "per_class_iu.png", dpi=100)
