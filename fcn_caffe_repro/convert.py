"""Convert weights (.caffemodel, .safetensors or .pt) into a state_dict file (.safetensors, or .pt by
name) for a known net, checked by a forward pass."""
import time

import torch
from tqdm import tqdm

from .atomic import check_not_source
from .errors import NetError
from .weight_formats import write_state


def load_net(model, net=None, prototxt=None, num_classes=None):
    """The deploy net (by registry name or prototxt path) with the file's weights, strict."""
    from . import nets
    from .net import CaffeNet

    if (net is None) == (prototxt is None):
        raise NetError("give exactly one of a registry net name or a prototxt")
    if prototxt is not None:
        return CaffeNet.from_prototxt(prototxt, weights=model, phase="test")
    return nets.build_net(net, phase="deploy", num_classes=num_classes, weights=model)


def verify(net, size=64):
    """A forward on a random input: every output finite, and the net's output shapes sane."""
    shapes = {top: (1, s[1] if s and len(s) > 1 else 3, size, size) for top, s in net.inputs.items()}
    labels = ("label", "sem", "geo")  # label tops of val nets get class 0, images noise
    with torch.no_grad():
        outs = net(**{top: torch.zeros(*s) if top in labels else torch.randn(*s) * 50
                      for top, s in shapes.items()})
    bad = [k for k, v in outs.items() if not torch.isfinite(v).all()]
    if bad:
        raise NetError(f"the converted net gives non-finite outputs {bad} on a random input")
    return {k: tuple(v.shape) for k, v in outs.items()}


def layer_table(net):
    """Rows (layer, blob, shape, mean |w|) for the net's parameters."""
    rows = []
    for name, blobs in net.params_by_layer().items():
        module = net.layer(name)
        for blob_name, b in zip(module.blob_names, blobs):
            rows.append((name, blob_name, tuple(b.shape), float(b.detach().abs().mean())))
    return rows


def convert(model, out, net=None, prototxt=None, num_classes=None, check=True, progress=True):
    """Load, verify, save; returns (rows, output shapes, timings). `out` may not be an input file."""
    sources = [model, prototxt]
    check_not_source(out, sources)  # before the work, not only at the write
    t0 = time.perf_counter()
    with tqdm(total=3, desc="convert", disable=not progress, unit="step") as steps:  # closed on errors too
        steps.set_postfix_str("loading")
        caffe_net = load_net(model, net, prototxt, num_classes)
        steps.update()
        t1 = time.perf_counter()
        steps.set_postfix_str("verifying")
        shapes = verify(caffe_net) if check else {}
        steps.update()
        t2 = time.perf_counter()
        steps.set_postfix_str("saving")
        write_state(out, caffe_net.state_dict(), metadata={"net": net or str(prototxt), "source": str(model)},
                    sources=sources)
        steps.update()
    t3 = time.perf_counter()
    return layer_table(caffe_net), shapes, {"load": t1 - t0, "verify": t2 - t1, "save": t3 - t2, "total": t3 - t0}
