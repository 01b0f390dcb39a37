"""voc-fcn-alexnet: FCN-AlexNet (CaffeNet base, LRN, grouped convolutions; crop 18)."""
from ..caffe.spec import L, NetBuilder, crop
from .heads import loss, score, upscore
from .voc import voc_data


def conv_relu(bottom, ks, nout, stride=1, pad=0, group=1):
    """AlexNet's convolution: no param specs, group always written (as the reference)."""
    conv = L.Convolution(bottom, kernel_size=ks, stride=stride, num_output=nout, pad=pad,
                         group=group)
    return conv, L.ReLU(conv, in_place=True)


def max_pool(bottom, ks, stride=1):
    return L.Pooling(bottom, pool='MAX', kernel_size=ks, stride=stride)


def fcn(split, num_classes=21, div=1):
    n = NetBuilder()
    n.data, n.label = voc_data(split)

    # the base net
    n.conv1, n.relu1 = conv_relu(n.data, 11, 96 // div, stride=4, pad=100)
    n.pool1 = max_pool(n.relu1, 3, stride=2)
    n.norm1 = L.LRN(n.pool1, local_size=5, alpha=1e-4, beta=0.75)
    n.conv2, n.relu2 = conv_relu(n.norm1, 5, 256 // div, pad=2, group=2)
    n.pool2 = max_pool(n.relu2, 3, stride=2)
    n.norm2 = L.LRN(n.pool2, local_size=5, alpha=1e-4, beta=0.75)
    n.conv3, n.relu3 = conv_relu(n.norm2, 3, 384 // div, pad=1)
    n.conv4, n.relu4 = conv_relu(n.relu3, 3, 384 // div, pad=1, group=2)
    n.conv5, n.relu5 = conv_relu(n.relu4, 3, 256 // div, pad=1, group=2)
    n.pool5 = max_pool(n.relu5, 3, stride=2)

    # fully conv
    n.fc6, n.relu6 = conv_relu(n.pool5, 6, 4096 // div)
    n.drop6 = L.Dropout(n.relu6, dropout_ratio=0.5, in_place=True)
    n.fc7, n.relu7 = conv_relu(n.drop6, 1, 4096 // div)
    n.drop7 = L.Dropout(n.relu7, dropout_ratio=0.5, in_place=True)

    n.score_fr = score(n.drop7, num_classes)
    n.upscore = upscore(n.score_fr, num_classes, 63, 32)
    n.score = crop(n.upscore, n.data)
    n.loss = loss(n.score, n.label, normalize=True)
    return n.to_spec()
