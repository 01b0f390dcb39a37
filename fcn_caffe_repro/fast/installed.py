"""Queries and upkeep of the plan a net runs: each step's path, the fast steps' call counts, the
buffer pool's state, and re-packing weights written around PyTorch's version counter."""
from .conv import FastConv
from .lrn import FastLRN
from ..fusion import FusedDeconvCropSum


def step_path(step):
    """The path a step takes in an inference forward, in words."""
    m = step.module
    if isinstance(m, FastConv):
        return f"conv{'+relu' if m.slope is not None else ''}/{m.impl}"
    if isinstance(m, FastLRN):
        return "lrn/nhwc-sum"
    if isinstance(m, FusedDeconvCropSum):
        return f"deconv_crop{'_sum' if m.with_skip else ''}/{m.impl}/{'depthwise' if m.is_depthwise else 'dense'}"
    return f"layer/{m.spec.type}"


def describe(net):
    """[(step name, path)] for every step of the net's current plan."""
    return [(s.name, step_path(s)) for s in net.plan]


def calls(net):
    """{step name: {path: times run}} for the convolution (and LRN) steps of the fast plan."""
    return {s.name: dict(s.module.calls) for s in net.plan if isinstance(s.module, (FastConv, FastLRN))}


def _pool(net):
    return next((s.module.pool for s in net.plan if isinstance(s.module, FastConv) and s.module.pool), None)


def buffer_stats(net):
    """{"buffers": [bytes of each pooled buffer], "reused": n, "fresh": n} of the fast plan's pool."""
    pool = _pool(net)
    if pool is None:
        return {"buffers": [], "reused": 0, "fresh": 0}
    return {"buffers": [b[0].numel() * b[0].element_size() for b in pool.buffers], "reused": pool.reused,
            "fresh": pool.fresh}


def release_buffers(net):
    """Give the pooled output buffers back (the next forward maps fresh ones)."""
    pool = _pool(net)
    if pool is not None:
        pool.release()


def repack(net):
    """Re-pack every prepacked weight now (needed only after writes through `param.data`)."""
    for s in net.plan:
        if isinstance(s.module, FastConv) and s.module.impl == "mkldnn":
            s.module.pack()
