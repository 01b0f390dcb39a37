"""fcn bench: the benchmarks (programs, not tests: a markdown table and JSON), fcn_caffe_repro/bench/.

    fcn bench net --quick           # whole nets: plain, fast float32 / bfloat16, OpenCV's dnn
    fcn bench fused --rounds 15     # the fused skip op on FCN-8s's three upsampling calls
    fcn bench convert               # reading a full-size caffemodel
    fcn bench train --iters 4       # a Caffe SGD iteration: the default path, its roofline, the previous path
    fcn bench prototxt --mb 50      # parsing a 50 MB prototxt: time and peak memory
    fcn bench winograd              # the fast mode's Winograd layers against oneDNN, per layer
    fcn bench net --help            # each benchmark's own options
"""
import importlib
import sys

BENCHMARKS = ("net", "fused", "convert", "train", "prototxt", "winograd")


def main(argv=None, prog=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or "fcn bench"
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} {{{','.join(BENCHMARKS)}}} [ARGS ...]\n\n{__doc__}", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in BENCHMARKS:
        print(f"usage: {prog} {{{','.join(BENCHMARKS)}}} [ARGS ...]\n{prog}: error: unknown benchmark "
              f"'{argv[0]}' (choose from {', '.join(BENCHMARKS)})", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__package__.rpartition('.')[0]}.bench.{argv[0]}")
    return module.main(argv[1:]) or 0
