"""NYUDv2 nets (40 classes), all FCN-32s: color, HHA, early fusion color-D, late fusion color-HHA."""
from ..caffe.spec import L, NetBuilder, crop
from ..data.release import SEED
from .heads import fcn_head, loss, score, upscore
from .vgg import fcn_base

SPLITS = {"train": "trainval", "val": "test"}


def nyud_data(split, tops):
    # param_str keys in the order Python 2 printed the reference's dict
    return L.Python(module='nyud_layers', layer='NYUDSegDataLayer', ntop=len(tops),
                    param_str=str(dict(tops=tops, seed=SEED, nyud_dir='../data/nyud',
                                       split=split)))


def fcn(split, tops, num_classes=40, div=1):
    """One stream on one modality (tops ['color', 'label'] or ['hha', 'label'])."""
    n = NetBuilder()
    n.data, n.label = nyud_data(split, tops)
    fcn_base(n, 'data', div)
    return _fcn32s_head(n, num_classes)


def fcn_color_d(split, num_classes=40, div=1):
    """Early fusion: color and depth concatenated into a 4-channel input."""
    n = NetBuilder()
    n.color, n.depth, n.label = nyud_data(split, ['color', 'depth', 'label'])
    n.data = L.Concat(n.color, n.depth)
    fcn_base(n, 'data', div, conv1_1='conv1_1_bgrd')
    return _fcn32s_head(n, num_classes)


def fcn_color_hha(split, num_classes=40, div=1):
    """Late fusion: one stream per modality, class scores averaged."""
    n = NetBuilder()
    n.color, n.hha, n.label = nyud_data(split, ['color', 'hha', 'label'])
    for modality in ('color', 'hha'):
        fcn_base(n, modality, div, modality=modality)
        n['score_fr' + modality] = score(n['drop7' + modality], num_classes)
    n.score_fused = L.Eltwise(n.score_frcolor, n.score_frhha, operation='SUM', coeff=[0.5, 0.5])
    n.upscore = upscore(n.score_fused, num_classes, 64, 32)
    n.score = crop(n.upscore, n.color)
    n.loss = loss(n.score, n.label)
    return n.to_spec()


def _fcn32s_head(n, num_classes):
    """The FCN-32s head and loss on a one-stream base net: the finished NetSpec."""
    fcn_head(n, 32, num_classes, 'data')
    n.loss = loss(n.score, n.label)
    return n.to_spec()
