"""A net out of PyTorch: ONNX (TorchScript-traced exporter) or a torch.export program (.pt2).

The net is exported on its plain layer plan: a fused skip path (fusion.fuse, the C++ op) or the
fast mode is lowered back to the layers it replaced (conv_transpose2d, slicing, add), which every
runtime has. Inputs are the net's input tops in order, outputs its output blobs in order, under
their Caffe names. With dynamic=True (ONNX only) height and width are free: every Crop offset and
pooling size follows the input, as in the net itself. `check_onnx` runs the file in onnxruntime
and measures it against the net, as max |theirs - ours| / max |ours| per output.
"""
import io
import warnings

import torch
from torch import nn

from .atomic import atomic_write
from .errors import CaffeError

FORMATS = ("onnx", "torch.export")
OPSET = 17


class ExportError(CaffeError, ValueError):
    """A net that cannot be exported as asked."""


class Exportable(nn.Module):
    """The net with positional inputs and a tuple of outputs, on its plain layer plan (the net's
    own plan is reset to its layers: call net.fuse() or net.optimize() again to run it fast)."""

    def __init__(self, net):
        super().__init__()
        from .fusion import fuse

        self.net = fuse(net, enabled=False).eval()  # the fused op and the fast mode lowered to layers
        self.input_names = list(net.inputs)
        self.output_names = list(net.outputs)

    def forward(self, *inputs):
        outs = self.net(**dict(zip(self.input_names, inputs)))
        return tuple(outs[name] for name in self.output_names)


def example_inputs(net, height=None, width=None, seed=0):
    """Random inputs (images about ±50, as a mean-subtracted photo) at the net's declared size or
    the given one; the batch is 1."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for top, shape in net.inputs.items():
        if shape is None or len(shape) != 4:
            raise ExportError(f"input '{top}' has no 4-D declared shape (shape {shape}); export the deploy net")
        h, w = height or shape[2], width or shape[3]
        out.append(torch.randn(1, shape[1], h, w, generator=g) * 50)
    return out


def to_onnx(net, path, inputs, dynamic=False, opset=OPSET):
    """Write the net as ONNX (atomically); dynamic=True leaves height and width free."""
    model = Exportable(net)
    axes = {name: {2: "height", 3: "width"} for name in model.input_names + model.output_names} if dynamic else None
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer warns about every Python-level shape check
        torch.onnx.export(model, tuple(inputs), buffer, dynamo=False, input_names=model.input_names,
                          output_names=model.output_names, dynamic_axes=axes, opset_version=opset)
    with atomic_write(path) as f:
        f.write(buffer.getvalue())
    return path


def to_torch_export(net, path, inputs, dynamic=False):
    """Write the net as a torch.export program (torch.export.save; load with torch.export.load)."""
    if dynamic:
        raise ExportError("torch.export with free height and width is not supported: its shape solver "
                          "cannot prove Caffe's crop and pooling size rules for every size; give --height "
                          "and --width, or use --format onnx --dynamic")
    program = torch.export.export(Exportable(net), tuple(inputs))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    with atomic_write(path) as f:
        f.write(buffer.getvalue())
    return path


def export(net, path, fmt="onnx", height=None, width=None, dynamic=False):
    """Export in `fmt` (FORMATS); returns the example inputs it traced with."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; formats: {', '.join(FORMATS)}")
    inputs = example_inputs(net, height, width)
    (to_onnx if fmt == "onnx" else to_torch_export)(net, path, inputs, dynamic)
    return inputs


def reference_outputs(net, inputs):
    """The net's own outputs on its plain plan, as numpy arrays."""
    model = Exportable(net)
    with torch.no_grad():
        return [o.numpy() for o in model(*inputs)]


def check_onnx(path, net, inputs):
    """{output: max |onnxruntime - ours| / max |ours|} on these inputs."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    theirs = session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})
    ours = reference_outputs(net, inputs)
    out_names = [o.name for o in session.get_outputs()]
    return {n: float(np.abs(t - o).max() / max(np.abs(o).max(), 1e-30)) for n, t, o in zip(out_names, theirs, ours)}
