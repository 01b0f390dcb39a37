#!/usr/bin/env python
"""Write prototxt/NET/{train,val|trainval,test,deploy,solver}.prototxt from the Python definitions.

    python tools/make_prototxt.py            # (re)write prototxt/
    python tools/make_prototxt.py --check    # exit 1 listing the files that are stale
"""
import argparse
import sys
from pathlib import Path

from fcn_caffe_repro.nets import emit_all, stale_files

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "prototxt"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="output directory")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; fail if any file is missing or differs")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.out)
        for rel in stale:
            print(f"stale: {args.out / rel}")
        if stale:
            print(f"{len(stale)} stale file(s): run tools/make_prototxt.py (and delete files it does "
                  "not write)", file=sys.stderr)
            return 1
        print(f"{args.out}: up to date")
        return 0
    written = emit_all(args.out)
    print(f"wrote {len(written)} files under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
