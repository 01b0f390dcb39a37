#!/usr/bin/env python
"""`fcn infer` as a program of this tree (fcn_caffe_repro/cli/infer.py)."""
import sys

from fcn_caffe_repro.cli.infer import *  # noqa: F401,F403  (tests import the parser and helpers from here)
from fcn_caffe_repro.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())
