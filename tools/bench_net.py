#!/usr/bin/env python
"""`fcn bench net` as a program of this tree (fcn_caffe_repro/bench/net.py)."""
import sys

from fcn_caffe_repro.bench.net import main

if __name__ == "__main__":
    sys.exit(main())
