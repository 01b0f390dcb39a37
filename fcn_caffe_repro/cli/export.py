"""fcn export: a net out of PyTorch, as ONNX or a torch.export program, checked by onnxruntime.

    fcn export --net voc-fcn8s --weights fcn8s-heavy-pascal --format onnx --dynamic   # any height, width
    fcn export --net voc-fcn8s --weights fcn8s.safetensors --format onnx --height 500 --width 500 -o fcn8s.onnx
    fcn export --net siftflow-fcn8s --weights siftflow-fcn8s-heavy --format torch.export   # at 256x256
    fcn export --prototxt deploy.prototxt --weights model.caffemodel --format onnx

Inputs and outputs keep the net's blob names (data -> score). Without --height/--width the net's
deploy size is used (500x500; SIFT Flow 256x256). With onnxruntime installed (the [export] extra)
the ONNX file is run at once on a random image and compared with the net: the max difference
over the max output is printed (and is an error above 1e-5). OpenCV reads the file too:
cv2.dnn.readNetFromONNX (at a fixed size).
"""
from pathlib import Path

from .. import export
from ..atomic import check_not_source
from ..net import CaffeNet
from ..nets import build_net
from .common import UsageError, parser, run_main, weights_path

TOLERANCE = 1e-5


def build_parser(prog=None):
    p = parser(prog, __doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--net", help="registry name, e.g. voc-fcn8s (its deploy net)")
    src.add_argument("--prototxt", type=Path, help="a Caffe deploy prototxt (Input layers)")
    p.add_argument("--weights", type=weights_path,
                   help=".caffemodel, .safetensors, .pt or a release name (omitted: random weights, for tests)")
    p.add_argument("--format", choices=export.FORMATS, default="onnx")
    p.add_argument("--height", type=int, help="input height (default: the deploy net's)")
    p.add_argument("--width", type=int, help="input width (default: the deploy net's)")
    p.add_argument("--dynamic", action="store_true", help="height and width free (ONNX)")
    p.add_argument("--num-classes", type=int, help="override the net's class count")
    p.add_argument("--width-divisor", type=int, default=1, help="shrink every base-net width (tests)")
    p.add_argument("-o", "--output", type=Path, help="output file (default: NET.onnx or NET.pt2, here)")
    p.add_argument("--no-check", action="store_true", help="do not run the ONNX file in onnxruntime")
    return p


def run(args):
    if args.dynamic and (args.height or args.width):
        raise UsageError("--dynamic leaves height and width free: give it or --height/--width, not both")
    if any(v is not None and v < 1 for v in (args.height, args.width)):
        raise UsageError("--height and --width must be positive")
    if args.net:
        net = build_net(args.net, phase="deploy", num_classes=args.num_classes, width_divisor=args.width_divisor,
                        weights=args.weights)
    else:
        net = CaffeNet.from_prototxt(args.prototxt, weights=args.weights)
    name = args.net or args.prototxt.stem
    output = args.output or Path(f"{name}.{'onnx' if args.format == 'onnx' else 'pt2'}")
    check_not_source(output, [args.weights, args.prototxt])
    inputs = export.export(net.eval(), output, args.format, args.height, args.width, args.dynamic)
    size = "free height and width" if args.dynamic else "x".join(map(str, inputs[0].shape))
    print(f"wrote {output} ({args.format}, {size}; inputs {', '.join(net.inputs)}, outputs {', '.join(net.outputs)})")
    if args.format == "onnx" and not args.no_check:
        try:
            errors = export.check_onnx(output, net, inputs)
        except ImportError:
            print("not checked: onnxruntime is not installed (pip install fcn_caffe_repro[export])")
            return 0
        worst = max(errors.values())
        print("onnxruntime vs ours, max |diff| / max |ours|: "
              + ", ".join(f"{k} {v:.2g}" for k, v in errors.items()))
        if worst > TOLERANCE:
            raise export.ExportError(f"{output}: onnxruntime differs from the net by {worst:.2g} of max (> {TOLERANCE})")
    return 0


def main(argv=None, prog=None):
    return run_main(build_parser, run, argv, prog)
