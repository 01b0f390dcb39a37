#!/usr/bin/env python
"""`fcn reproduce` as a program of this tree (fcn_caffe_repro/cli/reproduce.py)."""
import sys

from fcn_caffe_repro.cli.reproduce import *  # noqa: F401,F403  (tests import the parser and helpers from here)
from fcn_caffe_repro.cli.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
