#!/usr/bin/env python
"""Segment your own images: a palette-indexed label PNG and an overlay with a legend per image.

    python tools/infer.py --net voc-fcn8s --weights fcn8s-heavy-pascal.caffemodel photo.jpg more/ \\
        --out-dir segmented/ [--device cuda]

Any image size: the net runs at the image's native size. For each input NAME.ext it writes
OUT/NAME.png (class indices, VOC palette) and OUT/NAME_overlay.png (image, class colours, legend).
"""
import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

import fcn_caffe_repro as fcr
from fcn_caffe_repro import evaluate, visualize
from fcn_caffe_repro.data import caffe_input
from fcn_caffe_repro.data.common import load_rgb

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}


def list_images(paths):
    """Files as given, folders expanded to the images inside them (sorted)."""
    images = []
    for p in map(Path, paths):
        if p.is_dir():
            images += sorted(f for f in p.iterdir() if f.suffix.lower() in EXTENSIONS)
        elif p.is_file():
            images.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image or folder")
    if not images:
        raise FileNotFoundError(f"no images in {', '.join(map(str, paths))}")
    return images


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", help="images or folders of images")
    p.add_argument("--net", default="voc-fcn8s", help="registry name of a net with one colour input")
    p.add_argument("--weights", type=Path, help=".caffemodel (omitted: random weights, for smoke tests)")
    p.add_argument("--out-dir", type=Path, default=Path("segmented"))
    p.add_argument("--num-classes", type=int, help="override the net's class count")
    p.add_argument("--width-divisor", type=int, default=1, help="shrink every base-net width (tests)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the class colours in the overlay")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    mean, classes, score = evaluate.input_defaults(args.net)
    images = list_images(args.inputs)
    if args.weights is None:
        print("warning: no --weights, the net has random weights", file=sys.stderr)
    net = fcr.build_net(args.net, phase="deploy", num_classes=args.num_classes, width_divisor=args.width_divisor,
                        weights=args.weights).to(args.device).eval()
    (input_name,) = net.inputs
    from tqdm import tqdm

    args.out_dir.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for path in tqdm(images, unit="img", desc="infer"):
            rgb = load_rgb(path)
            x = caffe_input(rgb, mean).to(args.device)
            label = evaluate.predict(net, {input_name: x}, score).cpu()
            visualize.save_label_png(args.out_dir / f"{path.stem}.png", label)
            Image.fromarray(visualize.overlay(rgb, label, classes, args.alpha)).save(
                args.out_dir / f"{path.stem}_overlay.png")
    print(f"wrote {2 * len(images)} files to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
