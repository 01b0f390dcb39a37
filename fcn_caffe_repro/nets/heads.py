"""The FCN heads: class scoring, skip fusion and upsampling, as in the reference net.py files.

`fcn_head` builds FCN-32s, -16s or -8s on top of a base net that defines pool3, pool4 and
drop7 (with an optional name suffix, as SIFT Flow's `_sem` / `_geo` heads have). Every crop
offset comes from the graph through `crop` (coord_map); none is typed in.
"""
from ..caffe.spec import L, crop

LR = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]


def score(bottom, nclass):
    """1x1 class-scoring convolution."""
    return L.Convolution(bottom, num_output=nclass, kernel_size=1, pad=0, param=LR)


def upscore(bottom, nclass, ks, stride):
    """Deconvolution without bias and with a frozen (lr 0) kernel, bilinear by surgery.interp."""
    return L.Deconvolution(bottom, convolution_param=dict(
        num_output=nclass, kernel_size=ks, stride=stride, bias_term=False),
        param=[dict(lr_mult=0)])


def loss(score_top, label, normalize=False):
    return L.SoftmaxWithLoss(score_top, label,
                             loss_param=dict(normalize=normalize, ignore_label=255))


def fcn_head(n, stride, nclass, data, s="", scale_skips=False):
    """score_fr, the skips of FCN-`stride`s, the final upsampling and n['score' + s]."""
    n['score_fr' + s] = score(n.drop7, nclass)
    if stride == 32:
        n['upscore' + s] = upscore(n['score_fr' + s], nclass, 64, 32)
        n['score' + s] = crop(n['upscore' + s], n[data])
        return n['score' + s]

    n['upscore2' + s] = upscore(n['score_fr' + s], nclass, 4, 2)
    fused = _skip(n, 'pool4', n['upscore2' + s], nclass, s, 0.01 if scale_skips else None)
    if stride == 16:
        n['upscore16' + s] = upscore(fused, nclass, 32, 16)
        n['score' + s] = crop(n['upscore16' + s], n[data])
        return n['score' + s]

    n['upscore_pool4' + s] = upscore(fused, nclass, 4, 2)
    fused = _skip(n, 'pool3', n['upscore_pool4' + s], nclass, s, 0.0001 if scale_skips else None)
    n['upscore8' + s] = upscore(fused, nclass, 16, 8)
    n['score' + s] = crop(n['upscore8' + s], n[data])
    return n['score' + s]


def _skip(n, pool, up, nclass, s, scale):
    """score_POOL (optionally on a fixed Scale, as FCN-8s at-once), cropped to up and summed."""
    bottom = n[pool]
    if scale is not None:  # "scale pool skip for compatibility" (voc-fcn8s-atonce)
        n['scale_' + pool] = L.Scale(n[pool], filler=dict(type='constant', value=scale),
                                     param=[dict(lr_mult=0)])
        bottom = n['scale_' + pool]
    n['score_' + pool + s] = score(bottom, nclass)
    n['score_' + pool + s + 'c'] = crop(n['score_' + pool + s], up)
    n['fuse_' + pool + s] = L.Eltwise(up, n['score_' + pool + s + 'c'], operation='SUM')
    return n['fuse_' + pool + s]
