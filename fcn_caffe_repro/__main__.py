"""`python -m fcn_caffe_repro ...` is the `fcn` command."""
import sys

from .cli.main import main

sys.exit(main())
