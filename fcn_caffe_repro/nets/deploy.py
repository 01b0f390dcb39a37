"""Deploy nets: the val/test net with an `Input` data layer, no Dropout and no loss.

This is how the release's voc-fcn8s/deploy.prototxt was made from its val.prototxt.
"""
from ..caffe.spec import LayerSpec, NetSpec
from ..data.release import LABEL_TOPS, TOP_CHANNELS
DROPPED = {"Dropout", "SoftmaxWithLoss"}


def input_layer(shapes):
    """An Input layer named "input" with one top per (name, shape) item."""
    return LayerSpec.make("input", "Input", top=list(shapes),
                          input_param=dict(shape=[dict(dim=list(s)) for s in shapes.values()]))


def with_input(spec, shapes):
    """spec with its data layer (the first, bottomless layer) replaced by input_layer(shapes)."""
    return NetSpec([input_layer(shapes)] + spec.layers[1:], spec.name, spec.extra, spec.file)


def deploy(spec, size):
    """The deploy form of a val/test spec; image tops get 1 x C x size[0] x size[1]."""
    images = [t for t in spec.layers[0].top if t in TOP_CHANNELS and t not in LABEL_TOPS]
    shapes = {t: (1, TOP_CHANNELS[t], *size) for t in images}
    kept = [l for l in with_input(spec, shapes).layers if l.type not in DROPPED]
    return NetSpec(kept, spec.name, spec.extra, spec.file).validate()
