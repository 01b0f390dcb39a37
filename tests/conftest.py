"""Shared test helpers: fixture paths, Caffe's parity measure, seeded weights, a per-test seed."""
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
CAFFE_REF = FIXTURES / "caffe-ref"
REFERENCE = FIXTURES / "reference"

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def rel_err(ours, caffe):
    """max |ours - caffe| / max |caffe|: the caffe-ref README's parity measure."""
    ours = np.asarray(ours, dtype=np.float64)
    caffe = np.asarray(caffe, dtype=np.float64)
    assert ours.shape == caffe.shape, f"shape {ours.shape} != Caffe's {caffe.shape}"
    scale = np.abs(caffe).max() if caffe.size else 0.0
    return float(np.abs(ours - caffe).max() / scale) if scale > 0 else float(np.abs(ours).max())


def randomize(net, seed):
    """Every parameter of `net` drawn from N(0, 1) with a generator of its own seed; returns it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net


@pytest.fixture
def cuda_ieee_float32():
    """CUDA float32 as IEEE float32, as Caffe computes it: TF32 off in matmul and cuDNN for the
    test, restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def caffe_ref():
    return CAFFE_REF


@pytest.fixture(autouse=True)
def _seed_from_test_name(request):
    """Every test starts from a global torch RNG state of its own (a function of its name), so no
    outcome depends on which tests ran before it (pytest-randomly shuffles their order)."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
