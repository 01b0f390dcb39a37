"""Upgrade a legacy Caffe net prototxt (V0/V1 layers, net-level inputs) to today's text format.

Like Caffe's upgrade_net_proto_text: `python tools/upgrade_prototxt.py IN OUT`.
"""
import argparse
import sys

from fcn_caffe_repro.atomic import atomic_write
from fcn_caffe_repro.caffe import prototxt
from fcn_caffe_repro.caffe.upgrade import upgrade_net
from fcn_caffe_repro.errors import CaffeError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="legacy (or current) NetParameter prototxt")
    parser.add_argument("output", help="where to write the upgraded prototxt")
    args = parser.parse_args(argv)
    try:
        net = upgrade_net(prototxt.load(args.input))
        with atomic_write(args.output, sources=[args.input]) as f:
            f.write(prototxt.dumps(net).encode())
    except (CaffeError, OSError) as e:
        sys.exit(f"upgrade_prototxt: {e}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
