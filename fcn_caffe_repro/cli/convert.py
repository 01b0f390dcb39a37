"""fcn convert: weights to a verified state_dict file, without Caffe. The input may be a .caffemodel
(V1 or V2), a .safetensors or a .pt state_dict (told apart by content); the output is
.safetensors unless its name ends in .pt or .pth.

    fcn convert fcn8s-heavy-pascal.caffemodel --net voc-fcn8s          # writes fcn8s-heavy-pascal.safetensors
    fcn convert fcn8s-heavy-pascal --net voc-fcn8s -o fcn8s.pt         # a fetched release file, to torch.save
    fcn convert MODEL.caffemodel --prototxt deploy.prototxt -o model.safetensors
"""
from pathlib import Path

from ..convert import convert
from .common import parser, run_main, weights_path


def build_parser(prog=None):
    ap = parser(prog, __doc__)
    ap.add_argument("model", type=weights_path, help="weights file (.caffemodel, .safetensors, .pt) or a release name")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--net", help="registry name, e.g. voc-fcn8s")
    src.add_argument("--prototxt", help="a Caffe deploy/val prototxt")
    ap.add_argument("--num-classes", type=int, help="override the class count of --net")
    ap.add_argument("-o", "--output", type=Path,
                    help="output file: .safetensors (default: MODEL's name with that suffix, here), .pt or .pth")
    ap.add_argument("--no-verify", action="store_true", help="skip the random-input forward check")
    return ap


def run(args):
    output = args.output or Path(args.model.stem + ".safetensors")
    rows, shapes, t = convert(args.model, output, args.net, args.prototxt, args.num_classes,
                              check=not args.no_verify)
    print("| layer | blob | shape | mean abs |\n| --- | --- | --- | --- |")
    for name, blob, shape, mean in rows:
        print(f"| {name} | {blob} | {'x'.join(map(str, shape))} | {mean:.4g} |")
    if shapes:
        print(f"\nverified: random input -> {shapes}")
    print(f"wrote {output} in {t['total']:.2f} s (load {t['load']:.2f}, verify {t['verify']:.2f}, "
          f"save {t['save']:.2f})")
    return 0


def main(argv=None, prog=None):
    return run_main(build_parser, run, argv, prog)
