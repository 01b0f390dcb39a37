"""SIFT Flow nets: two heads on one base, semantic (33 classes) and geometric (3 classes)."""
from ..caffe.spec import L, NetBuilder
from ..data.release import SEED
from .heads import fcn_head, loss
from .vgg import fcn_base

SPLITS = {"train": "trainval", "val": "test"}
GEOMETRIC_CLASSES = 3


def fcn(split, stride, num_classes=33, div=1):
    n = NetBuilder()
    # param_str keys in the order Python 2 printed the reference's dict
    n.data, n.sem, n.geo = L.Python(module='siftflow_layers', layer='SIFTFlowSegDataLayer',
                                    ntop=3, param_str=str(dict(siftflow_dir='../data/sift-flow',
                                                               seed=SEED, split=split)))
    fcn_base(n, 'data', div)
    fcn_head(n, stride, num_classes, 'data', s='_sem')
    # loss to make score happy (o.w. loss_sem)
    n.loss = loss(n.score_sem, n.sem)
    fcn_head(n, stride, GEOMETRIC_CLASSES, 'data', s='_geo')
    n.loss_geo = loss(n.score_geo, n.geo)
    return n.to_spec()
