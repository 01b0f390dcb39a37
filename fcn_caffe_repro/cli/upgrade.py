"""fcn upgrade: upgrade a legacy Caffe net prototxt (V0/V1 layers, net-level inputs) to today's text format.

Like Caffe's upgrade_net_proto_text:

    fcn upgrade VGG_ILSVRC_16_layers_deploy.prototxt vgg16_deploy.prototxt

The output is written atomically and may not be the input (upgrade to a new file, then rename).
"""
from ..atomic import atomic_write, check_not_source
from ..caffe import prototxt
from ..caffe.upgrade import upgrade_net
from .common import parser, run_main


def build_parser(prog=None):
    p = parser(prog, __doc__)
    p.add_argument("input", help="legacy (or current) NetParameter prototxt")
    p.add_argument("output", help="where to write the upgraded prototxt")
    return p


def run(args):
    check_not_source(args.output, [args.input])  # before the work, not only at the write
    net = upgrade_net(prototxt.load(args.input))
    with atomic_write(args.output, sources=[args.input]) as f:
        f.write(prototxt.dumps(net).encode())
    print(f"wrote {args.output}")
    return 0


def main(argv=None, prog=None):
    return run_main(build_parser, run, argv, prog)
