"""FLOPs of a net at an input size: multiply-adds x 2 per layer, from the layers' shapes.

Convolution, Deconvolution and InnerProduct count arithmetic; a Deconvolution whose weights are
channel-diagonal also reports the depthwise count the fused op does. Pooling, Eltwise, Crop and
the pointwise layers count bytes moved (bottoms read + tops written), not FLOPs.
"""
from dataclasses import dataclass, field

import numpy as np

from . import layers as L


@dataclass
class LayerCost:
    name: str
    type: str
    out_shape: tuple
    flops: int = 0
    flops_depthwise: int = None  # Deconvolution with diagonal weights
    bytes: int = 0


@dataclass
class NetCost:
    rows: list = field(default_factory=list)

    @property
    def total(self):
        return sum(r.flops for r in self.rows)

    @property
    def total_fused(self):
        """Total with diagonal deconvolutions counted depthwise, as the fused op runs them."""
        return sum(r.flops if r.flops_depthwise is None else r.flops_depthwise for r in self.rows)

    @property
    def bytes(self):
        return sum(r.bytes for r in self.rows)

    def table(self):
        lines = ["| layer | type | top shape | GFLOP | depthwise GFLOP | MB moved |", "|---|---|---|---:|---:|---:|"]
        for r in self.rows:
            dw = "" if r.flops_depthwise is None else f"{r.flops_depthwise / 1e9:.3f}"
            lines.append(f"| {r.name} | {r.type} | {'x'.join(map(str, r.out_shape))} | {r.flops / 1e9:.3f} | "
                         f"{dw} | {r.bytes / 1e6:.1f} |")
        lines.append(f"| **total** | | | **{self.total / 1e9:.2f}** | {self.total_fused / 1e9:.2f} | "
                     f"{self.bytes / 1e6:.0f} |")
        return "\n".join(lines)


def flops(net, input_shape, itemsize=4):
    """Cost of one forward. `net`: a CaffeNet or NetSpec; `input_shape`: a shape for the first
    input or {input top: shape}."""
    from .caffe.spec import NetSpec
    from .net import CaffeNet

    if isinstance(net, NetSpec):
        net = CaffeNet(net, phase="test")
    if not isinstance(input_shape, dict):
        first = next(iter(net.inputs))
        input_shape = {first: tuple(input_shape)}
        for top, declared in net.inputs.items():  # other inputs (labels) follow the first's size
            if top != first:
                input_shape[top] = (input_shape[first][0], declared[1]) + tuple(input_shape[first][2:])
    shapes = net.shapes_for(input_shape)
    cost = NetCost()
    for spec in net.spec.layers:
        m = net.layer(spec.name)
        if isinstance(m, L.Input):
            continue
        outs = [shapes[t] for t in spec.top]
        ins = [shapes[b] for b in spec.bottom]
        row = LayerCost(spec.name, spec.type, outs[0] if outs else ())
        if isinstance(m, L.Convolution):
            n, cout, h, w = outs[0]
            row.flops = 2 * n * cout * h * w * (m.channels // m.group) * int(np.prod(m.kernel))
        elif isinstance(m, L.Deconvolution):
            n, cin, h, w = ins[0]
            row.flops = 2 * n * cin * h * w * (m.num_output // m.group) * int(np.prod(m.kernel))
            if m.is_diagonal():
                row.flops_depthwise = 2 * n * cin * h * w * int(np.prod(m.kernel))
        elif isinstance(m, L.InnerProduct):
            row.flops = 2 * int(np.prod(ins[0][:m.axis])) * m.k * m.num_output
        else:
            row.bytes = itemsize * (sum(int(np.prod(s)) for s in ins) + sum(int(np.prod(s)) for s in outs))
        cost.rows.append(row)
    return cost
