#!/usr/bin/env python
"""`fcn eval` as a program of this tree (fcn_caffe_repro/cli/eval.py)."""
import sys

from fcn_caffe_repro.cli.eval import *  # noqa: F401,F403  (tests import the parser and helpers from here)
from fcn_caffe_repro.cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
