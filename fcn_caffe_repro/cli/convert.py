#!/usr/bin/env python
"""Convert an original .caffemodel to a PyTorch state_dict, without Caffe.

    python tools/convert_caffemodel.py fcn8s-heavy-pascal.caffemodel --net voc-fcn8s -o fcn8s.pt
    python tools/convert_caffemodel.py MODEL.caffemodel --prototxt deploy.prototxt -o model.pt
"""
import argparse
import sys

from fcn_caffe_repro.convert import convert
from fcn_caffe_repro.errors import CaffeError


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help=".caffemodel file (V1 or V2)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--net", help="registry name, e.g. voc-fcn8s")
    src.add_argument("--prototxt", help="a Caffe deploy/val prototxt")
    ap.add_argument("--num-classes", type=int, help="override the class count of --net")
    ap.add_argument("-o", "--output", required=True, help="output .pt state_dict")
    ap.add_argument("--no-verify", action="store_true", help="skip the random-input forward check")
    args = ap.parse_args(argv)
    try:
        rows, shapes, t = convert(args.model, args.output, args.net, args.prototxt, args.num_classes,
                                  check=not args.no_verify)
    except (CaffeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("| layer | blob | shape | mean abs |\n| --- | --- | --- | --- |")
    for name, blob, shape, mean in rows:
        print(f"| {name} | {blob} | {'x'.join(map(str, shape))} | {mean:.4g} |")
    if shapes:
        print(f"\nverified: random input -> {shapes}")
    print(f"wrote {args.output} in {t['total']:.2f} s (load {t['load']:.2f}, verify {t['verify']:.2f}, "
          f"save {t['save']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
