"""The bfloat16 fast mode's accuracy cost, measured: FCN-8s scored by the one scorer on the main
job's held-out images in float32 (as the main job scores) and in bfloat16, and the score error
and argmax agreement against float32 on the caffe-ref nets (Caffe's own nets and weights).

    fcn bench net --bf16-miou out/reproduce/stages/fcn8s/fcn8s.caffemodel
    fcn bench net --bf16-caffe-ref tests/fixtures/caffe-ref/nets

The held-out set, the deploy net and the scorer are reproduce.py's (Synthetic(seed + 1,
val_images), width_divisor 16, evaluate.evaluate); `limit` scores fewer images.
"""
from pathlib import Path

import numpy as np
import torch

from .. import evaluate, nets
from ..net import CaffeNet
from ..data import Synthetic
from ..reproduce import NETS, Config

NET = NETS["fcn8s"]
MODES = {"float32 (the main job's path)": None, "fast float32": torch.float32, "fast bfloat16": torch.bfloat16}


def _net(weights, cfg, dtype):
    net = nets.build_net(NET, phase="deploy", num_classes=cfg.num_classes, width_divisor=cfg.width_divisor)
    net.load_caffemodel(weights)
    net.eval()
    return net.fuse() if dtype is None else net.optimize(dtype=dtype)


def bf16_miou(weights, cfg=None, limit=None):
    """{mode: mean IU} for MODES, with "agreement": the fraction of held-out pixels whose predicted
    class is the same in bfloat16 as in float32 (fast mode), and "images"."""
    cfg = cfg or Config()
    data = Synthetic(seed=cfg.seed + 1, n=min(limit or cfg.val_images, cfg.val_images), size=cfg.size,
                     num_classes=cfg.num_classes)
    out, nets_by_mode = {}, {}
    with torch.no_grad():
        for mode, dtype in MODES.items():
            net = nets_by_mode[mode] = _net(weights, cfg, dtype)
            r = evaluate.evaluate(net, data, net_name=NET, workers=0, progress=False)["tasks"]["label"]
            out[mode] = r["metrics"]["mean_iu"]
        same = total = 0
        a, b = nets_by_mode["fast float32"], nets_by_mode["fast bfloat16"]
        for i in range(len(data)):
            image = data[i][0].unsqueeze(0)
            pa, pb = a(data=image)["score"].argmax(1), b(data=image)["score"].argmax(1)
            same += int((pa == pb).sum())
            total += pa.numel()
    out["agreement"] = same / total
    out["images"] = len(data)
    return out


def report(result):
    """The measurement as markdown lines."""
    f32, bf = result["fast float32"], result["fast bfloat16"]
    lines = [f"FCN-8s on the main job's {result['images']} held-out images (the one scorer):", ""]
    lines += [f"- {mode}: mean IU {100 * result[mode]:.2f}" for mode in MODES]
    lines.append(f"- bfloat16 - float32 (fast): {100 * (bf - f32):+.2f} points; predicted class the same at "
                 f"{100 * result['agreement']:.3f} % of pixels")
    return "\n".join(lines)


# (name, the fast mode's dtype, whether the weights are rounded to bfloat16 first)
_CAFFE_REF_RUNS = (("float32", torch.float32, False), ("bfloat16", torch.bfloat16, False),
                   ("bfloat16 weights", torch.float32, True))


def caffe_ref(folder):
    """[(net, score blob, pixels, argmax agreement, max |bf16 - f32| / max |f32|, close, weights
    agreement)] of the fast mode in bfloat16 against float32 for every caffe-ref net under `folder`
    (net.prototxt, weights.caffemodel, blobs.npz with the inputs), on every input-sized score blob;
    `close`: the fraction of pixels whose float32 top-2 margin is within twice the largest error (the
    only ones whose argmax an error that size can flip); `weights agreement`: the argmax agreement of
    the float32 fast mode with only its weights rounded to bfloat16, every operation in float32 (the
    floor for any path that converts the weights to bfloat16)."""
    rows = []
    for d in sorted(p for p in Path(folder).iterdir() if (p / "net.prototxt").exists()):
        blobs = np.load(d / "blobs.npz")
        out = {}
        for mode, dtype, round_weights in _CAFFE_REF_RUNS:
            net = CaffeNet.from_prototxt(d / "net.prototxt", weights=d / "weights.caffemodel")
            inputs = {k: torch.from_numpy(blobs[k]) for k in net.inputs}
            with torch.no_grad():
                if round_weights:
                    for param in net.parameters():
                        param.copy_(param.bfloat16())
                out[mode] = net.optimize(dtype=dtype)(return_blobs=True, **inputs)
        data = next(iter(net.inputs))
        for k in sorted(out["float32"]):
            want, got = out["float32"][k], out["bfloat16"][k].float()
            if not k.startswith("score") or want.dim() != 4 or want.shape[2:] != inputs[data].shape[2:]:
                continue
            agree = (want.argmax(1) == got.argmax(1)).double().mean().item()
            weights_agree = (want.argmax(1) == out["bfloat16 weights"][k].argmax(1)).double().mean().item()
            err = (got - want).abs().max()
            top2 = want.topk(2, 1).values
            close = ((top2[:, 0] - top2[:, 1]) <= 2 * err).double().mean().item()
            rows.append((d.name, k, want[:, 0].numel(), agree, (err / want.abs().max()).item(), close,
                         weights_agree))
    return rows


def caffe_ref_report(rows):
    lines = ["| net | scores | pixels | argmax agreement | max error / max score | pixels with a top-2 margin "
             "within 2x that error | agreement with only the weights in bfloat16 |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {k} | {p} | {100 * a:.2f} % | {e:.1e} | {100 * c:.1f} % | {100 * w:.2f} % |"
              for n, k, p, a, e, c, w in rows]
    return "\n".join(lines)
