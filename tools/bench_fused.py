#!/usr/bin/env python
"""`fcn bench fused` as a program of this tree (fcn_caffe_repro/bench/fused.py)."""
import sys

from fcn_caffe_repro.bench.fused import main

if __name__ == "__main__":
    sys.exit(main())
