"""Shared test helpers: fixture paths and Caffe's parity measure."""
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
CAFFE_REF = FIXTURES / "caffe-ref"
REFERENCE = FIXTURES / "reference"


def rel_err(ours, caffe):
    """max |ours - caffe| / max |caffe|: the caffe-ref README's parity measure."""
    ours = np.asarray(ours, dtype=np.float64)
    caffe = np.asarray(caffe, dtype=np.float64)
    assert ours.shape == caffe.shape, f"shape {ours.shape} != Caffe's {caffe.shape}"
    scale = np.abs(caffe).max() if caffe.size else 0.0
    return float(np.abs(ours - caffe).max() / scale) if scale > 0 else float(np.abs(ours).max())


@pytest.fixture
def caffe_ref():
    return CAFFE_REF
