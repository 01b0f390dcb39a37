"""PASCAL-Context nets (59 classes + background): pascalcontext-fcn32s, -16s, -8s."""
from ..caffe.spec import L, NetBuilder
from ..data.release import SEED
from .heads import fcn_head, loss
from .vgg import fcn_base

SPLITS = {"train": "train", "val": "val"}


def fcn(split, stride, num_classes=60, div=1):
    n = NetBuilder()
    # param_str keys in the order Python 2 printed the reference's dict
    n.data, n.label = L.Python(module='pascalcontext_layers',
                               layer='PASCALContextSegDataLayer', ntop=2,
                               param_str=str(dict(context_dir='../../data/pascal-context',
                                                  seed=SEED, split=split,
                                                  voc_dir='../../data/pascal')))
    fcn_base(n, 'data', div)
    fcn_head(n, stride, num_classes, 'data')
    n.loss = loss(n.score, n.label)
    return n.to_spec()
