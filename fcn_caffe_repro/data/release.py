"""The release's data layers in one table: for each family of FCN nets (the registry name's
prefix), the datasets its train and val phases read, the mean its layers subtract, the seed they
shuffle with, the classes and the score blob of the first label; and the channel count of every
top a data layer gives. The net definitions (param_str), deploy inputs, the net's declared input
shapes, evaluation and the training tool all read these facts here."""
from dataclasses import dataclass

from .nyud import MEAN_BGR, NYUD_CLASSES
from .pascal_context import CONTEXT_CLASSES, CONTEXT_MEAN
from .siftflow import SEMANTIC_CLASSES, SIFTFLOW_MEAN
from .voc import VOC_CLASSES, VOC_MEAN

SEED = 1337  # every release data layer's `seed`
TOP_CHANNELS = {"data": 3, "color": 3, "hha": 3, "depth": 1, "label": 1, "sem": 1, "geo": 1}
LABEL_TOPS = ("label", "sem", "geo")


@dataclass(frozen=True)
class DataLayer:
    train: str       # data.DATASETS key of the train phase
    val: str         # ... of the val/test phase
    mean: tuple      # BGR mean of the colour image
    classes: tuple   # class names of the first label
    score: str       # the val net's score blob for the first label
    paper: str       # key of the published numbers (fcn_caffe_repro.paper)


RELEASE = {
    "voc": DataLayer("sbd", "voc", tuple(VOC_MEAN), tuple(VOC_CLASSES), "score", "voc"),
    "pascalcontext": DataLayer("pascal-context", "pascal-context", tuple(float(v) for v in CONTEXT_MEAN),
                               tuple(CONTEXT_CLASSES), "score", "pascalcontext"),
    "nyud": DataLayer("nyud", "nyud", tuple(float(v) for v in MEAN_BGR), tuple(NYUD_CLASSES), "score", "nyud"),
    "siftflow": DataLayer("siftflow", "siftflow", tuple(float(v) for v in SIFTFLOW_MEAN), tuple(SEMANTIC_CLASSES),
                          "score_sem", "siftflow"),
}
# The paper key of every dataset name: the family whose val phase reads it (SBD trains VOC's nets).
PAPER_KEYS = {**{d.val: d.paper for d in RELEASE.values()}, "sbd": "voc", "synthetic": "synthetic"}


def family(net_name):
    """'voc', 'pascalcontext', 'nyud' or 'siftflow' from a registry name."""
    return net_name.split("-", 1)[0]


def data_layer(net_name):
    """The release's data-layer facts of a registered FCN net."""
    return RELEASE[family(net_name)]
