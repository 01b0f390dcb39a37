"""Segment your own images: per image a palette label PNG and an overlay, an unreadable image
reported and skipped (the others are still segmented)."""
import sys
from pathlib import Path

import torch
from PIL import Image

from . import evaluate, visualize
from .atomic import check_not_source
from .data.common import caffe_input, load_rgb
from .errors import CaffeError

__all__ = ["check_outputs", "segment_files"]


def outputs_of(path, out_dir):
    """The two files segment_files writes for image `path`: the label PNG and the overlay."""
    return out_dir / f"{path.stem}.png", out_dir / f"{path.stem}_overlay.png"


def check_outputs(images, out_dir):
    """Refuse (CaffeError naming both files) when an output would replace one of the input images,
    e.g. --out-dir the photos' own folder with a NAME.png among them (atomic.check_not_source)."""
    out_dir = Path(out_dir)
    for path in images:
        for out in outputs_of(path, out_dir):
            check_not_source(out, images)


def segment_files(net, images, out_dir, mean, classes, score="score", alpha=0.5, device="cpu", progress=True,
                  report=None):
    """For each image path NAME.ext write out_dir/NAME.png and NAME_overlay.png; returns (written
    paths, [(image, reason)] of the images skipped). `report(image, reason)` is told of each skip
    as it happens (default: a line on stderr)."""
    from tqdm import tqdm

    report = report or (lambda path, reason: print(f"skipped {path}: {reason}", file=sys.stderr))
    (input_name,) = net.inputs
    out_dir = Path(out_dir)
    check_outputs(images, out_dir)  # an output may not replace an input (e.g. --out-dir the photos' folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    with torch.inference_mode():
        for path in tqdm(images, unit="img", desc="infer", disable=not progress):
            try:
                rgb = load_rgb(path)
                label = evaluate.predict(net, {input_name: caffe_input(rgb, mean).to(device)}, score).cpu()
            except CaffeError as e:  # a corrupt or unreadable image, or one the net cannot take
                skipped.append((path, str(e)))
                report(path, str(e))
                continue
            label_png, overlay_png = outputs_of(path, out_dir)
            visualize.save_label_png(label_png, label)
            Image.fromarray(visualize.overlay(rgb, label, classes, alpha)).save(overlay_png)
            written += [label_png, overlay_png]
    return written, skipped
