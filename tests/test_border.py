"""The pass that runs a padded net's first layers on maps without most of the constant border (in
training and in the fast mode): the same outputs and gradients as the layers on the full maps, on
smaller maps."""
import copy

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fcn_caffe_repro as fcr
from conftest import randomize
from fcn_caffe_repro import border, ops, relu_pool
from fcn_caffe_repro.caffe.spec import L as S
from fcn_caffe_repro.caffe.spec import NetBuilder
from fcn_caffe_repro.net import CaffeNet
from fcn_caffe_repro.plan import layer_steps


def _training_steps(net, with_border):
    steps = relu_pool.fused_plan(layer_steps(net)) if ops.extension_available() else layer_steps(net)
    return border.trunk_plan(steps, keep=net.outputs) if with_border else steps


def _outputs_and_gradients(net, inputs, with_border, weights_of_outputs):
    """The net's outputs, the gradient of sum(output x fixed weights) + objective for every
    parameter and for the input `data`."""
    net.set_plan(_training_steps(net, with_border))
    for p in net.parameters():
        p.grad = None
    data = inputs["data"].clone().requires_grad_(True)
    out = net(**{**inputs, "data": data})
    total = sum((v * weights_of_outputs[k]).sum() for k, v in out.items() if k in weights_of_outputs)
    if net.loss_weights:
        total = total + net.objective(out)
    total.backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    grads["data"] = data.grad.clone()
    return {k: v.detach().clone() for k, v in out.items()}, grads


def _assert_as_close(short, full, rel, what):
    """`short` equal to `full` within `rel` of each tensor's magnitude."""
    assert short.keys() == full.keys(), what
    for k in full:
        scale = float(full[k].abs().max())
        err = float((short[k] - full[k]).abs().max())
        assert err <= rel * max(scale, 1e-30), f"{what} {k}: {err} apart, max {scale}"


def _compare(net, inputs, seed=0, dtype=torch.float64):
    """The border plan against the plain one in `dtype`. The two compute the same function and
    differ only in the order of their sums: in float64 they agree to ~1e-13 of the magnitude, so
    1e-9 is far from rounding and far below a wrong row or column (off by the values' own order);
    in float32 the sums' rounding over a few thousand terms reaches ~1e-5, so 1e-3 there."""
    net = copy.deepcopy(net).to(dtype)
    inputs = {k: v.to(dtype) for k, v in inputs.items()}
    g = torch.Generator().manual_seed(seed)
    shapes = {k: v.shape for k, v in net(**inputs).items()}
    weights = {k: torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for k, s in shapes.items()
               if k not in net.loss_weights}
    torch.manual_seed(seed)
    full = _outputs_and_gradients(net, inputs, False, weights)
    torch.manual_seed(seed)
    short = _outputs_and_gradients(net, inputs, True, weights)
    rel = 1e-9 if dtype == torch.float64 else 1e-3
    _assert_as_close(short[0], full[0], rel, "output")
    _assert_as_close(short[1], full[1], rel, "gradient")
    return full


def test_fcn8s_trains_on_short_maps_with_the_full_maps_gradients():
    net = fcr.build_net("voc-fcn8s", phase="train", num_classes=5, width_divisor=16)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
    inputs = dict(data=torch.randn(1, 3, 72, 88, generator=g) * 50,
                  label=torch.randint(0, 5, (1, 1, 72, 88), generator=g).float())
    _compare(net, inputs, dtype=torch.float32)
    _, grads = _compare(net, inputs)
    assert float(grads["conv1_1.weight"].abs().max()) > 0 and float(grads["conv3_2.weight"].abs().max()) > 0

    seen = {}

    def record(module, args):
        seen.setdefault("conv1_2", args[0].shape)

    hook = net.layer("conv1_2").register_forward_pre_hook(record)
    net.set_plan(_training_steps(net, True))
    net(**inputs)
    hook.remove()
    # conv1_1's output is 270 x 286 (pad 100); the rows and columns that see the image, plus a
    # few of the border's, are what conv1_2 computes on
    assert seen["conv1_2"][2] < 72 + 30 and seen["conv1_2"][3] < 88 + 30
    trunk = [s for s in net.plan if isinstance(s.module, border.Trunk)]
    assert len(trunk) == 1 and {"pool3", "pool4"} <= set(trunk[0].top)


def _chain(size, layers, pad):
    """Input -> a convolution padded by `pad` -> `layers` (conv / pool specs) -> the last top out."""
    n = NetBuilder()
    n.data = S.Input(input_param=dict(shape=dict(dim=[1, 2, *size])))
    top = S.Convolution(n.data, num_output=3, kernel_size=3, pad=pad)
    n.conv0 = top
    top = n.relu0 = S.ReLU(top, in_place=True)
    for i, (kind, k, s, p, d) in enumerate(layers, 1):
        if kind == "conv":
            top = S.Convolution(top, num_output=3, kernel_size=k, stride=s, pad=p, dilation=d)
            setattr(n, f"conv{i}", top)
            top = S.ReLU(top, in_place=True)
            setattr(n, f"relu{i}", top)
        else:
            top = S.Pooling(top, pool=kind, kernel_size=k, stride=s, pad=p)
            setattr(n, f"pool{i}", top)
    return CaffeNet(n.to_spec("chain"), phase="train")


_layer = st.one_of(
    st.tuples(st.just("conv"), st.sampled_from([1, 3, 5]), st.sampled_from([1, 1, 2]), st.integers(0, 2),
              st.sampled_from([1, 1, 2])),
    st.tuples(st.sampled_from(["MAX", "AVE"]), st.sampled_from([2, 3]), st.sampled_from([1, 2]), st.integers(0, 1),
              st.just(1)))


@settings(max_examples=25, deadline=None)
@given(size=st.tuples(st.integers(3, 20), st.integers(3, 20)), pad=st.integers(3, 40),
       layers=st.lists(_layer, min_size=1, max_size=5), seed=st.integers(0, 2 ** 16))
def test_any_chain_of_convolutions_and_poolings_gives_the_full_maps_results(size, pad, layers, seed):
    fixed = []
    for kind, k, s, p, d in layers:  # Caffe needs the pooling pad below the kernel, conv pad within reason
        fixed.append((kind, k, s, min(p, k - 1), d))
    try:
        net = _chain(size, fixed, pad)
    except fcr.errors.CaffeError:  # a map shrunk below a window: not a net
        return
    randomize(net, seed)
    g = torch.Generator().manual_seed(seed)
    _compare(net, dict(data=torch.randn(1, 2, *size, generator=g)), seed)


def test_a_net_padded_within_its_window_keeps_its_plan():
    net = _chain((12, 12), [("conv", 3, 1, 1, 1), ("MAX", 2, 2, 0, 1)], pad=1)
    steps = _training_steps(net, False)
    assert border.trunk_plan(steps, keep=net.outputs) == steps


def test_the_fast_mode_runs_its_trunk_on_short_maps_and_still_gives_every_blob():
    net = fcr.build_net("voc-fcn8s", phase="deploy", num_classes=5, width_divisor=16)
    randomize(net, 4)
    x = torch.randn(1, 3, 72, 88, generator=torch.Generator().manual_seed(4)) * 50
    net.optimize()
    assert sum(isinstance(s.module, border.Trunk) for s in net.plan) == 1
    seen = {}
    conv1_2 = next(s.module for s in border.inner_steps(net.plan) if s.name.startswith("conv1_2"))
    hook = conv1_2.register_forward_pre_hook(lambda module, args: seen.setdefault("conv1_2", args[0].shape) and None)
    with torch.no_grad():
        short = net(data=x)["score"]
        every = net(return_blobs=True, data=x)
        inner = net(return_blobs=["conv3_3", "pool4"], data=x)
        net.set_plan(border.inner_steps(net.plan))
        full = net(data=x)["score"]
    hook.remove()
    assert seen["conv1_2"][2] < 72 + 30 and seen["conv1_2"][3] < 88 + 30  # the full map is 270 x 286
    assert every["conv1_2"].shape[2:] == (270, 286), "asked for every blob: the trunk's layers on the full maps"
    # float32 sums in another order at most: a misplaced row or column is off by the values' own order
    assert float((short - full).abs().max()) <= 1e-4 * float(full.abs().max())
    assert torch.equal(every["score"], full)
    assert set(inner) == {"score", "conv3_3", "pool4"} and torch.equal(inner["conv3_3"], every["conv3_3"])


def test_a_step_reading_an_earlier_blob_ends_the_trunk():
    """The plan follows one chain of maps: a layer on an earlier blob (FCN's score_pool4 on pool4)
    runs after the trunk, on that blob widened back."""
    n = NetBuilder()
    n.data = S.Input(input_param=dict(shape=dict(dim=[1, 2, 9, 7])))
    n.conv0 = S.Convolution(n.data, num_output=3, kernel_size=3, pad=20)
    n.pool1 = S.Pooling(n.conv0, pool="MAX", kernel_size=2, stride=2)
    n.conv2 = S.Convolution(n.pool1, num_output=3, kernel_size=3, pad=1)
    n.side = S.Convolution(n.pool1, num_output=3, kernel_size=3, pad=2)
    net = CaffeNet(n.to_spec("branch"), phase="train")
    randomize(net, 5)
    trunk = [s.module for s in _training_steps(net, True) if isinstance(s.module, border.Trunk)]
    assert len(trunk) == 1 and [s.name for s in trunk[0].steps] == ["conv0", "pool1", "conv2"]
    _compare(net, dict(data=torch.randn(1, 2, 9, 7, generator=torch.Generator().manual_seed(5))), 5)


def test_the_solver_steps_on_the_short_maps():
    """SGDSolver.step asks the net for its loss tops only, so its forward runs the trunk (asking for
    every blob would run the trunk's layers on the full maps)."""
    net = fcr.build_net("voc-fcn8s", phase="train", num_classes=5, width_divisor=16)
    randomize(net, 6)
    solver = fcr.SGDSolver(net, base_lr=1e-12, lr_policy="fixed", momentum=0.9)
    seen = []
    conv1_2 = next(s.module for s in border.inner_steps(net.plan) if s.name == "conv1_2")
    hook = conv1_2.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[2:]) and None)
    g = torch.Generator().manual_seed(6)
    solver.step(data=torch.randn(1, 3, 72, 88, generator=g) * 50,
                label=torch.randint(0, 5, (1, 1, 72, 88), generator=g).float())
    hook.remove()
    if ops.extension_available():
        assert len(seen) == 1 and seen[0][0] < 72 + 30 and seen[0][1] < 88 + 30, seen


def test_a_length_is_planned_once_for_both_axes(monkeypatch):
    """Rows and columns are planned apart and FCN's windows are square: an image turned on its side
    (VOC's portrait and landscape 500 x 375) reuses both axes' plans, and the plan is the same."""
    def trunk_of(net):
        return next(s.module for s in net.optimize().plan if isinstance(s.module, border.Trunk))

    trunk, fresh = (trunk_of(fcr.build_net("voc-fcn8s", phase="deploy", num_classes=5, width_divisor=16))
                    for _ in range(2))
    planned = []
    real = border._plan_axis
    monkeypatch.setattr(border, "_plan_axis", lambda *a: planned.append(len(a[1])) or real(*a))
    trunk.plan((72, 88))
    trunk.plan((88, 72))
    trunk.plan((88, 100))
    assert planned == [72, 88, 100]

    def same(a, b):
        if isinstance(a, torch.Tensor):
            return torch.equal(a, b)
        if isinstance(a, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return a == b

    assert same(trunk.plan((88, 72)), fresh.plan((88, 72)))
    assert not same(fresh.plan((88, 72)), fresh.plan((72, 88)))
