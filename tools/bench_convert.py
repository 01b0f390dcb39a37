#!/usr/bin/env python
"""`fcn bench convert` as a program of this tree (fcn_caffe_repro/bench/convert.py)."""
import sys

from fcn_caffe_repro.bench.convert import main

if __name__ == "__main__":
    sys.exit(main())
