#!/usr/bin/env python
"""`fcn bench winograd` as a program of this tree (fcn_caffe_repro/bench/winograd.py)."""
import sys

from fcn_caffe_repro.bench.winograd import main

if __name__ == "__main__":
    sys.exit(main())
