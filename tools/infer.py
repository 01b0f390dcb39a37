#!/usr/bin/env python
"""Segment your own images: a palette-indexed label PNG and an overlay with a legend per image.

    python tools/infer.py --net voc-fcn8s --weights fcn8s-heavy-pascal.caffemodel photo.jpg more/ \\
        --out-dir segmented/ [--device cuda]

Any image size: the net runs at the image's native size. For each input NAME.ext it writes
OUT/NAME.png (class indices, VOC palette) and OUT/NAME_overlay.png (image, class colours, legend);
an unreadable image is reported and skipped, the others still segmented (exit status 1).
"""
import argparse
import sys
from pathlib import Path

import torch

import fcn_caffe_repro as fcr
from fcn_caffe_repro import evaluate
from fcn_caffe_repro.infer import segment_files

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
    written, skipped = segment_files(net, images, args.out_dir, mean, classes, score, args.alpha, args.device)
    print(f"wrote {len(written)} files to {args.out_dir}")
    if skipped:
        print(f"{len(skipped)} of {len(images)} images skipped (unreadable): "
              + ", ".join(str(p) for p, _ in skipped), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
