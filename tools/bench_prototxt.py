#!/usr/bin/env python
"""`fcn bench prototxt` as a program of this tree (fcn_caffe_repro/bench/prototxt.py)."""
import sys

from fcn_caffe_repro.bench.prototxt import main

if __name__ == "__main__":
    sys.exit(main())
