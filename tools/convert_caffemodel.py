#!/usr/bin/env python
"""`fcn convert` as a program of this tree (fcn_caffe_repro/cli/convert.py)."""
import sys

from fcn_caffe_repro.cli.convert import *  # noqa: F401,F403  (tests import the parser and helpers from here)
from fcn_caffe_repro.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
