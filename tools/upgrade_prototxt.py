#!/usr/bin/env python
"""`fcn upgrade` as a program of this tree (fcn_caffe_repro/cli/upgrade.py)."""
import sys

from fcn_caffe_repro.cli.upgrade import *  # noqa: F401,F403  (tests import the parser and helpers from here)
from fcn_caffe_repro.cli.upgrade import main

if __name__ == "__main__":
    sys.exit(main())
