"""Queries and upkeep of the plan a net runs: each step's path, the fast steps' call counts, the
buffer pool's state, and re-packing weights written around PyTorch's version counter."""
from .conv import FastConv
from .lrn import FastLRN
from .precision import Cast
from ..border import inner_steps
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
    if isinstance(m, Cast):
        return f"layer/{m.layer.spec.type}"
    return f"layer/{m.spec.type}"


def step_dtype(step):
    """The dtype a step computes in, as a word: a fast step's own, a converting wrapper's, or "as given"."""
    m = step.module
    dtype = m.dtype if isinstance(m, (FastConv, FusedDeconvCropSum, Cast)) else None
    return "as given" if dtype is None else str(dtype).replace("torch.", "")


def describe(net, dtypes=False):
    """[(step name, path)] for every step of the net's current plan (a trunk's steps each, see
    border.py); dtypes=True: [(name, path, dtype)] (step_dtype)."""
    if dtypes:
        return [(s.name, step_path(s), step_dtype(s)) for s in inner_steps(net.plan)]
    return [(s.name, step_path(s)) for s in inner_steps(net.plan)]


def calls(net):
    """{step name: {path: times run}} for the convolution (and LRN) steps of the fast plan."""
    return {s.name: dict(s.module.calls) for s in inner_steps(net.plan) if isinstance(s.module, (FastConv, FastLRN))}


def _shared(net, attr):
    """What the plan's convolution steps share under `attr` ("pool": the BufferPool, "workspace":
    the Winograd workspace), or None."""
    return next((getattr(s.module, attr) for s in inner_steps(net.plan)
                 if isinstance(s.module, FastConv) and getattr(s.module, attr)), None)


def buffer_stats(net):
    """{"buffers": [bytes of each pooled buffer], "reused": n, "fresh": n} of the fast plan's pool."""
    pool = _shared(net, "pool")
    if pool is None:
        return {"buffers": [], "reused": 0, "fresh": 0}
    return {"buffers": [b[0].numel() * b[0].element_size() for b in pool.buffers], "reused": pool.reused,
            "fresh": pool.fresh}


def release_buffers(net):
    """Give the pooled output buffers and the Winograd workspace back (the next forward maps fresh ones)."""
    for shared in (_shared(net, "pool"), _shared(net, "workspace")):
        if shared is not None:
            shared.release()


def repack(net):
    """Re-pack every prepacked or converted weight now (needed only after writes through `param.data`)."""
    for s in inner_steps(net.plan):
        if isinstance(s.module, FastConv) and s.module.has_copies():
            s.module.pack()
        elif isinstance(s.module, FusedDeconvCropSum):
            s.module.forget_weights()
