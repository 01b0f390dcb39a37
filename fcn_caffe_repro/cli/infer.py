"""fcn infer: segment your own images: a palette-indexed label PNG and an overlay with a legend per image.

    fcn infer --net voc-fcn8s --weights fcn8s-heavy-pascal.caffemodel photo.jpg more/ \\
        --out-dir segmented/ [--device cuda]
    fcn infer --net voc-fcn8s --weights fcn8s-heavy-pascal photo.jpg   # a release file fetched by fcn weights fetch
    fcn infer --net voc-fcn8s --weights runs/mine.caffemodel --classes my_data/classes.txt photos/   # own classes

Any image size: the net runs at the image's native size. For each input NAME.ext it writes
OUT/NAME.png (class indices, VOC palette) and OUT/NAME_overlay.png (image, class colours, legend);
an unreadable image is reported and skipped, the others still segmented (exit status 1). An
output that would replace an input image is refused before anything runs.
"""
import sys
from pathlib import Path

import torch

from .. import evaluate
from ..data.folder import parse_mean, read_classes
from ..fast import for_inference
from ..infer import check_outputs, segment_files
from ..nets import build_net
from .common import add_mode, ensure_dir, parser, run_main, weights_path

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


def build_parser(prog=None):
    p = parser(prog, __doc__)
    p.add_argument("inputs", nargs="+", help="images or folders of images")
    p.add_argument("--net", default="voc-fcn8s", help="registry name of a net with one colour input")
    p.add_argument("--weights", type=weights_path,
                   help=".caffemodel, .safetensors, .pt or a release name (omitted: random weights, for smoke tests)")
    p.add_argument("--out-dir", type=Path, default=Path("segmented"))
    p.add_argument("--num-classes", type=int, help="override the net's class count (default with --classes: theirs)")
    p.add_argument("--classes", type=Path, help="a class list, one name per line (a folder dataset's classes.txt)")
    p.add_argument("--mean", help="the BGR mean the net was trained with, B,G,R (default: the net's dataset's)")
    p.add_argument("--width-divisor", type=int, default=1, help="shrink every base-net width (tests)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_mode(p)
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the class colours in the overlay")
    return p


def run(args):
    mean, classes, score = evaluate.input_defaults(args.net)
    if args.classes is not None:
        classes = read_classes(args.classes)
        args.num_classes = args.num_classes or len(classes)
    if args.mean is not None:
        mean = parse_mean(args.mean)
    images = list_images(args.inputs)
    check_outputs(images, args.out_dir)  # before any work: --out-dir the photos' own folder, say
    ensure_dir(args.out_dir)
    if args.weights is None:
        print("warning: no --weights, the net has random weights", file=sys.stderr)
    net = build_net(args.net, phase="deploy", num_classes=args.num_classes, width_divisor=args.width_divisor,
                    weights=args.weights).to(args.device).eval()
    for_inference(net, args.mode)
    written, skipped = segment_files(net, images, args.out_dir, mean, classes, score, args.alpha, args.device)
    print(f"wrote {len(written)} files to {args.out_dir}")
    if skipped:
        print(f"{len(skipped)} of {len(images)} images skipped (unreadable): "
              + ", ".join(str(p) for p, _ in skipped), file=sys.stderr)
        return 1
    return 0


def main(argv=None, prog=None):
    return run_main(build_parser, run, argv, prog)
