#!/usr/bin/env python
"""`fcn plot` as a program of this tree (fcn_caffe_repro/cli/plot.py)."""
import sys

from fcn_caffe_repro.cli.plot import *  # noqa: F401,F403  (tests import the parser and helpers from here)
from fcn_caffe_repro.cli.plot import main

if __name__ == "__main__":
    sys.exit(main())
