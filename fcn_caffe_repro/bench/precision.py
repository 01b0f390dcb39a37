"""The bfloat16 fast mode's accuracy cost on the main job's task: FCN-8s scored by the one scorer on
the main job's held-out images, in float32 (as the main job scores) and in bfloat16.

    fcn bench net --bf16-miou out/reproduce/stages/fcn8s/fcn8s.caffemodel

The held-out set, the deploy net and the scorer are reproduce.py's (Synthetic(seed + 1,
val_images), width_divisor 16, evaluate.evaluate); `limit` scores fewer images.
"""
import torch

from .. import evaluate, nets
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
