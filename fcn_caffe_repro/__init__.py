"""fcn_caffe_repro: Caffe-faithful Fully Convolutional Networks on PyTorch.

Public API: CaffeNet, build_net, and the submodules caffemodel, surgery, metrics, data, ops, errors.
Submodules load on first use so that importing the package stays cheap.
"""
import importlib

__version__ = "0.1.0"

from . import errors  # noqa: E402
from .errors import CaffeError, CaffemodelError, NetError, PrototxtError  # noqa: E402

_SUBMODULES = {
    "caffemodel": "fcn_caffe_repro.caffe.caffemodel",
    "prototxt": "fcn_caffe_repro.caffe.prototxt",
    "spec": "fcn_caffe_repro.caffe.spec",
    "surgery": "fcn_caffe_repro.surgery",
    "metrics": "fcn_caffe_repro.metrics",
    "data": "fcn_caffe_repro.data",
    "ops": "fcn_caffe_repro.ops",
    "paper": "fcn_caffe_repro.paper",
    "solver": "fcn_caffe_repro.solver",
    "nets": "fcn_caffe_repro.nets",
    "training": "fcn_caffe_repro.training",
    "distributed": "fcn_caffe_repro.distributed",
    "evaluate": "fcn_caffe_repro.evaluate",
    "visualize": "fcn_caffe_repro.visualize",
    "fusion": "fcn_caffe_repro.fusion",
    "reproduce": "fcn_caffe_repro.reproduce",
    "weight_formats": "fcn_caffe_repro.weight_formats",
    "weights_registry": "fcn_caffe_repro.weights_registry",
}
_ATTRS = {
    "CaffeNet": ("fcn_caffe_repro.net", "CaffeNet"),
    "build_net": ("fcn_caffe_repro.nets", "build_net"),
    "NetSpec": ("fcn_caffe_repro.caffe.spec", "NetSpec"),
    "SGDSolver": ("fcn_caffe_repro.solver", "SGDSolver"),
    "flops": ("fcn_caffe_repro.cost", "flops"),
}

__all__ = ["CaffeNet", "build_net", "NetSpec", "SGDSolver", "errors", "CaffeError", "CaffemodelError",
           "NetError", "PrototxtError", *_SUBMODULES]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    if name in _ATTRS:
        module, attr = _ATTRS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'fcn_caffe_repro' has no attribute '{name}'")
