"""What every `fcn` subcommand shares: its parser (with --verbose), and one line instead of a
traceback for a bad file, net or dataset (exit 1; a usage error exits 2, as argparse does)."""
import argparse
import sys
from pathlib import Path

from ..errors import CaffeError


class UsageError(Exception):
    """Arguments that parse but do not go together: reported as argparse reports its own (exit 2)."""


def parser(prog, doc):
    """An ArgumentParser whose --help shows the module docstring (with its examples) verbatim."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    return p


def describe(error):
    """One line for an error: the file and the reason for OS errors, the package's own message
    (which names file, layer or dataset) for CaffeError, else the type and message."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    if isinstance(error, (CaffeError, OSError)):
        return str(error)
    return f"{type(error).__name__}: {error}"


def run_main(build_parser, run, argv=None, prog=None):
    """Parse, run, and turn any error into one line on stderr and exit status 1 (with --verbose:
    the traceback). run(args) returns the exit status (None: 0)."""
    p = build_parser(prog)
    args = p.parse_args(argv)
    try:
        return run(args) or 0
    except UsageError as e:
        p.error(str(e))  # exits 2
    except KeyboardInterrupt:
        print(f"{p.prog}: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001  one line for the user; --verbose shows everything
        if args.verbose:
            raise
        print(f"{p.prog}: error: {describe(e)}", file=sys.stderr)
        return 1


MODE_HELP = ("how the net runs: fast (default: the fast inference mode in float32, scores equal the plain "
             "path's to float32 rounding), bf16 (bfloat16 activations and weights, CPU only: faster where oneDNN "
             "has bfloat16 (AVX512-BF16, AMX), its accuracy cost in the README), plain (layer by layer, as built)")


def add_mode(p, where=""):
    """--mode: the plan the net scores images with (fast.for_inference); `where`: when it applies."""
    from ..fast import MODES  # here: `fcn upgrade` imports this module and never torch

    p.add_argument("--mode", choices=MODES, default="fast", help=MODE_HELP + where)


def weights_path(text):
    """A --weights value: an existing file, or a release file's name (fcn weights list) resolved
    through the download cache."""
    from ..weights_registry import resolve

    try:
        return resolve(text)
    except (KeyError, FileNotFoundError) as e:
        raise argparse.ArgumentTypeError(e.args[0]) from None


def class_count(args, dataset):
    """--num-classes, else the class count of an own-data folder dataset (else the net's own)."""
    if args.num_classes is not None:
        return args.num_classes
    return dataset.num_classes if args.dataset == "folder" else None


def ensure_dir(path):
    """Make an output folder, so that an unwritable place fails before any work."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
