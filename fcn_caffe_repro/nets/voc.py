"""PASCAL VOC nets: voc-fcn32s, -16s, -8s and -8s-atonce (reference voc-fcn*/net.py)."""
from ..caffe.spec import L, NetBuilder
from ..data.release import RELEASE, SEED
from .heads import fcn_head, loss
from .vgg import fcn_base

SPLITS = {"train": "train", "val": "seg11valid"}


def voc_data(split, root="../data"):
    """The release's Python data layer: SBDD for training, VOC2011 seg11valid for validation.

    param_str keys are in the order Python 2 printed the reference's dict.
    """
    if split == 'train':
        params = dict(sbdd_dir=root + '/sbdd/dataset', seed=SEED, split=split, mean=RELEASE['voc'].mean)
        pylayer = 'SBDDSegDataLayer'
    else:
        params = dict(voc_dir=root + '/pascal/VOC2011', seed=SEED, split=split, mean=RELEASE['voc'].mean)
        pylayer = 'VOCSegDataLayer'
    return L.Python(module='voc_layers', layer=pylayer, ntop=2, param_str=str(params))


def fcn(split, stride, num_classes=21, div=1, root="../data", scale_skips=False):
    n = NetBuilder()
    n.data, n.label = voc_data(split, root)
    fcn_base(n, 'data', div)
    fcn_head(n, stride, num_classes, 'data', scale_skips=scale_skips)
    n.loss = loss(n.score, n.label)
    return n.to_spec()
