#!/usr/bin/env python
"""`fcn bench train` as a program of this tree (fcn_caffe_repro/bench/train.py)."""
import sys

from fcn_caffe_repro.bench.train import main

if __name__ == "__main__":
    sys.exit(main())
