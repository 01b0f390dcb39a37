"""`fcn SUBCOMMAND ...`: the dispatcher. A subcommand's module is imported only when it runs, so
`fcn --help` stays fast."""
import importlib
import sys

from .. import __version__

COMMANDS = {
    "reproduce": "the main job: FCN-32s -> 16s -> 8s on the synthetic world, or the original weights on VOC",
    "train": "train a net with Caffe's solver (the release's solve.py)",
    "eval": "score a net on a dataset beside the published numbers",
    "infer": "segment your own images: label PNGs and overlays",
    "convert": "weights to .safetensors or .pt (from .caffemodel, .safetensors or .pt), verified",
    "upgrade": "upgrade a legacy (V0/V1) prototxt to today's format",
    "weights": "the release's weights by name: list, verify a file, fetch into the cache",
    "export": "export a net to ONNX or a torch.export program",
    "plot": "figures: predictions side by side, per-class IU bars",
    "bench": "benchmarks: net, fused, convert, train, prototxt, winograd",
}

USAGE = "usage: fcn [-h] [--version] SUBCOMMAND [ARGS ...]"


def help_text():
    rows = "\n".join(f"  {name:<10} {text}" for name, text in COMMANDS.items())
    return (f"{USAGE}\n\nFully Convolutional Networks (Long, Shelhamer, Darrell), Caffe-faithful on PyTorch.\n\n"
            f"subcommands:\n{rows}\n\n"
            "Every subcommand has --help with examples, and --verbose to show a traceback.\n"
            "example:\n  fcn reproduce --quick\n  fcn weights list\n  fcn eval --help\n")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"fcn {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"{USAGE}\nfcn: error: unknown subcommand '{name}' (choose from {', '.join(COMMANDS)})",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__package__}.{name}")
    return module.main(argv[1:], prog=f"fcn {name}")
