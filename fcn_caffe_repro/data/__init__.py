"""Datasets that feed the nets exactly what the release's Python data layers fed Caffe.

Every loader is a ``torch.utils.data.Dataset`` whose items are tuples ordered like the data layer's
tops (``ds.tops``): float32 C×H×W inputs (BGR minus ``ds.mean``) and uint8 H×W labels with void 255.
``ds.classes`` names the classes, ``ds.tasks`` maps each label top to its class names.
"""
from .common import DatasetError, DatasetFileError, SegDataset, caffe_input, to_rgb
from .folder import Folder
from .nyud import NYUD
from .pascal_context import PascalContext
from .sbd import SBD
from .siftflow import SIFTFlow
from .synthetic import Synthetic
from .voc import VOC

DATASETS = {"voc": VOC, "sbd": SBD, "pascal-context": PascalContext, "nyud": NYUD, "siftflow": SIFTFlow,
            "synthetic": Synthetic, "folder": Folder}

__all__ = ["Folder", "VOC", "SBD", "PascalContext", "NYUD", "SIFTFlow", "Synthetic", "SegDataset", "DatasetError",
           "DatasetFileError", "DATASETS", "caffe_input", "to_rgb"]
