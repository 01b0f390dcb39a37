"""voc-fcn-alexnet: FCN-AlexNet (CaffeNet base, LRN, grouped convolutions; crop 18)."""
from functools import partial

from ..caffe.spec import L, NetBuilder, conv_relu, crop, max_pool
from .heads import loss, score, upscore
from .voc import voc_data

# AlexNet's convolution, as the reference writes it: no param specs, pad and group always written.
_conv_relu = partial(conv_relu, pad=0, group=1, param=None)


def fcn(split, num_classes=21, div=1):
    n = NetBuilder()
    n.data, n.label = voc_data(split)

    # the base net
    n.conv1, n.relu1 = _conv_relu(n.data, 96 // div, 11, stride=4, pad=100)
    n.pool1 = max_pool(n.relu1, 3, stride=2)
    n.norm1 = L.LRN(n.pool1, local_size=5, alpha=1e-4, beta=0.75)
    n.conv2, n.relu2 = _conv_relu(n.norm1, 256 // div, 5, pad=2, group=2)
    n.pool2 = max_pool(n.relu2, 3, stride=2)
    n.norm2 = L.LRN(n.pool2, local_size=5, alpha=1e-4, beta=0.75)
    n.conv3, n.relu3 = _conv_relu(n.norm2, 384 // div, 3, pad=1)
    n.conv4, n.relu4 = _conv_relu(n.relu3, 384 // div, 3, pad=1, group=2)
    n.conv5, n.relu5 = _conv_relu(n.relu4, 256 // div, 3, pad=1, group=2)
    n.pool5 = max_pool(n.relu5, 3, stride=2)

    # fully conv
    n.fc6, n.relu6 = _conv_relu(n.pool5, 4096 // div, 6)
    n.drop6 = L.Dropout(n.relu6, dropout_ratio=0.5, in_place=True)
    n.fc7, n.relu7 = _conv_relu(n.drop6, 4096 // div, 1)
    n.drop7 = L.Dropout(n.relu7, dropout_ratio=0.5, in_place=True)

    n.score_fr = score(n.drop7, num_classes)
    n.upscore = upscore(n.score_fr, num_classes, 63, 32)
    n.score = crop(n.upscore, n.data)
    n.loss = loss(n.score, n.label, normalize=True)
    return n.to_spec()
