"""VGG16: the convolutional trunk shared by every VGG-based FCN, and the ILSVRC classifier.

`fcn_base` is the base net of the reference net.py files (conv1_1 padded by 100, fc6/fc7 cast
to convolutions with Dropout); `modality` suffixes every name, as nyud-fcn32s-color-hha's
`modality_fcn` does. `div` divides every width (the shrunken nets of tests/fixtures/caffe-ref).
"""
from functools import partial

from ..caffe.spec import L, NetBuilder, conv_relu, max_pool

# The classifier's convolution: no param specs, default stride (as in VGG's deploy file).
_plain_conv_relu = partial(conv_relu, stride=None, param=None)


# (width, convolutions) of VGG16's five blocks, each closed by a 2x2 max pooling
BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def convs(n, data, div=1, modality="", conv=conv_relu, pad1=100, conv1_1="conv1_1"):
    """conv1_1 ... pool5 on n[data]: 13 3x3 convolutions with ReLU, 5 max poolings."""
    m, bottom = modality, n[data]
    for b, (width, count) in enumerate(BLOCKS, start=1):
        for i in range(1, count + 1):
            name = conv1_1 if (b, i) == (1, 1) else f"conv{b}_{i}"
            pad = {"pad": pad1} if (b, i) == (1, 1) else {}
            n[name + m], n[f"relu{b}_{i}" + m] = conv(bottom, width // div, **pad)
            bottom = n[f"relu{b}_{i}" + m]
        n[f"pool{b}" + m] = bottom = max_pool(bottom)
    return bottom


def fcn_base(n, data, div=1, modality="", conv1_1="conv1_1"):
    """The FCN base net: the trunk, then fc6 (7x7) and fc7 (1x1) as convolutions with Dropout."""
    m = modality
    convs(n, data, div, m, conv1_1=conv1_1)
    n['fc6' + m], n['relu6' + m] = conv_relu(n['pool5' + m], 4096 // div, ks=7, pad=0)
    n['drop6' + m] = L.Dropout(n['relu6' + m], dropout_ratio=0.5, in_place=True)
    n['fc7' + m], n['relu7' + m] = conv_relu(n['drop6' + m], 4096 // div, ks=1, pad=0)
    n['drop7' + m] = L.Dropout(n['relu7' + m], dropout_ratio=0.5, in_place=True)
    return n['drop7' + m]


def classifier(num_classes=1000, div=1, phase="deploy", batch_size=32, source="ilsvrc12_train_lmdb"):
    """The VGG16 ILSVRC net (fc6/fc7 InnerProduct, fc8); fc8 is not divided.

    deploy: an Input of 1x3x224x224 and `prob`, as VGG's deploy file. train/val: a Data layer of
    `batch_size` mean-subtracted 224x224 crops with their labels, the learnable blobs' lr/decay
    multipliers of VGG's train_val, MSRA fillers and a SoftmaxWithLoss; val also has an Accuracy.
    """
    n = NetBuilder()
    if phase == "deploy":
        n.data = L.Input(shape=dict(dim=[1, 3, 224, 224]))
        conv, fc = _plain_conv_relu, _plain_inner_product
    else:
        n.data, n.label = L.Data(ntop=2, data_param=dict(source=source, batch_size=batch_size, backend="LMDB"),
                                 transform_param=dict(mirror=phase == "train", crop_size=224,
                                                      mean_value=[104, 117, 123]))
        conv, fc = _learnable_conv_relu, _learnable_inner_product
    convs(n, 'data', div, conv=conv, pad1=1)
    n.fc6 = fc(n.pool5, 4096 // div)
    n.relu6 = L.ReLU(n.fc6, in_place=True)
    n.drop6 = L.Dropout(n.relu6, dropout_ratio=0.5, in_place=True)
    n.fc7 = fc(n.drop6, 4096 // div)
    n.relu7 = L.ReLU(n.fc7, in_place=True)
    n.drop7 = L.Dropout(n.relu7, dropout_ratio=0.5, in_place=True)
    n.fc8 = fc(n.drop7, num_classes)
    if phase == "deploy":
        n.prob = L.Softmax(n.fc8)
    else:
        n.loss = L.SoftmaxWithLoss(n.fc8, n.label)
        if phase == "val":
            n.accuracy = L.Accuracy(n.fc8, n.label)
    return n.to_spec("VGG_ILSVRC_16_layers")


_LEARNABLE = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]  # VGG's train_val, as FCN's
_MSRA = dict(weight_filler=dict(type="msra"), bias_filler=dict(type="constant", value=0))


def _learnable_conv_relu(bottom, nout, pad=1):
    """The train phase's convolution: MSRA-filled (He et al. 2015: how a 16-layer net without
    normalisation trains from scratch), zero biases."""
    conv = L.Convolution(bottom, num_output=nout, pad=pad, kernel_size=3, param=_LEARNABLE, **_MSRA)
    return conv, L.ReLU(conv, in_place=True)


def _plain_inner_product(bottom, nout):
    return L.InnerProduct(bottom, num_output=nout)


def _learnable_inner_product(bottom, nout):
    return L.InnerProduct(bottom, num_output=nout, param=_LEARNABLE, **_MSRA)
