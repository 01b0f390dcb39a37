"""The training pass that joins each ReLU read only by a MAX pooling to that pooling, and turns the
other in-place ReLUs after a convolution in place: same results and gradients as the layers, less
kept for the backward, and only where nothing else reads what it changes."""
import pytest
import torch

from conftest import randomize
import fcn_caffe_repro as fcr
from fcn_caffe_repro import border, ops, relu_pool
from fcn_caffe_repro.caffe.spec import L as S
from fcn_caffe_repro.caffe.spec import NetBuilder, max_pool
from fcn_caffe_repro.net import CaffeNet
from fcn_caffe_repro.plan import layer_steps

pytestmark = pytest.mark.skipif(not ops.extension_available(), reason="needs the C++ extension (not built)")


def small_fcn(seed=0):
    """Width/16 FCN-32s in the TRAIN phase with seeded random weights (score layers included)."""
    net = fcr.build_net("voc-fcn32s", phase="train", num_classes=5, width_divisor=16)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
    return net


def inputs(seed=1, size=48):
    g = torch.Generator().manual_seed(seed)
    return dict(data=torch.randn(1, 3, size, size, generator=g) * 50,
                label=torch.randint(0, 5, (1, 1, size, size), generator=g).float())


def gradients(net, batch, hook=None):
    """(loss, blobs, {parameter: gradient}) of one forward and backward; `hook`: saved-tensor
    pack hook (the forward's saved tensors pass through it)."""
    for p in net.parameters():
        p.grad = None
    if hook:
        with torch.autograd.graph.saved_tensors_hooks(hook, lambda t: t):
            blobs = net(return_blobs=True, **batch)
    else:
        blobs = net(return_blobs=True, **batch)
    loss = net.objective(blobs)
    values = {k: v.detach().clone() for k, v in blobs.items()}
    loss.backward()
    return float(loss.detach()), values, {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


def test_vgg_blocks_end_in_fused_steps_and_their_other_relus_run_in_place():
    net = small_fcn()
    plan = relu_pool.fused_plan(layer_steps(net))
    fused = [s.name for s in plan if isinstance(s.module, relu_pool.ReLUMaxPool)]
    assert fused == [f"relu{b}_{n}+pool{b}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))]
    assert all(s.module.in_place for s in plan if isinstance(s.module, relu_pool.ReLUMaxPool))
    in_place = {s.name for s in plan if isinstance(s.module, relu_pool.InPlaceReLU)}
    assert {"relu1_1", "relu2_1", "relu3_1", "relu3_2", "relu4_1", "relu5_2", "relu6", "relu7"} <= in_place
    assert len(plan) == len(layer_steps(net)) - 5


def test_fused_training_step_gives_the_layers_loss_blobs_and_gradients_exactly():
    net, batch = small_fcn(), inputs()
    torch.manual_seed(3)  # dropout's masks
    want = gradients(net, batch)
    net.set_plan(relu_pool.fused_plan(layer_steps(net)))
    torch.manual_seed(3)
    got = gradients(net, batch)
    assert got[0] == want[0]
    assert got[1].keys() == want[1].keys()
    for k in want[1]:
        assert torch.equal(got[1][k], want[1][k]), k  # the ReLU tops included: relu'd, in place or not
    assert got[2].keys() == want[2].keys()
    for k in want[2]:
        assert torch.equal(got[2][k], want[2][k]), k
    assert want[2]["conv1_1.weight"].abs().sum() > 0


def test_the_backward_keeps_no_relu_top_before_a_pooling():
    net, batch = small_fcn(), inputs()

    def saved_bytes():
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        gradients(net, batch, pack)
        return sum(storages.values())

    unfused = saved_bytes()
    with torch.no_grad():
        blobs = net(return_blobs=True, **batch)
    before_pools = sum(blobs[f"conv{b}_{n}"].numel() * 4 for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)))
    net.set_plan(relu_pool.fused_plan(layer_steps(net)))
    fused = saved_bytes()
    # the five ReLU tops go; one byte per pooled element (about a quarter of a top's elements) comes
    assert unfused - fused >= before_pools * (1 - 1 / 8)


def _relu_pool_net(in_place=True, slope=0.0, second_reader=False, pool="MAX", relu_on_input=False):
    n = NetBuilder()
    n.data = S.Input(input_param=dict(shape=dict(dim=[1, 3, 8, 8])))
    if relu_on_input:
        n.relu = S.ReLU(n.data, in_place=True)
        n.pool = max_pool(n.relu)
    else:
        n.conv = S.Convolution(n.data, num_output=4, kernel_size=3, pad=1)
        n.relu = S.ReLU(n.conv, in_place=in_place, negative_slope=slope)
        n.pool = S.Pooling(n.relu, pool=pool, kernel_size=2, stride=2)
        if second_reader:
            n.other = S.Convolution(n.relu, num_output=2, kernel_size=1)
    return randomize(CaffeNet(n.to_spec("r"), phase="train"), 4)


@pytest.mark.parametrize("case", [dict(slope=0.1), dict(second_reader=True), dict(pool="AVE")])
def test_a_leaky_relu_a_second_reader_or_average_pooling_stays_as_it_is(case):
    net = _relu_pool_net(**case)
    assert not any(isinstance(s.module, relu_pool.ReLUMaxPool) for s in relu_pool.fused_plan(layer_steps(net)))


def test_a_relu_not_in_place_keeps_the_convolutions_top():
    net = _relu_pool_net(in_place=False)
    plan = relu_pool.fused_plan(layer_steps(net))
    step = next(s for s in plan if isinstance(s.module, relu_pool.ReLUMaxPool))
    assert not step.module.in_place
    net.set_plan(plan)
    blobs = net(return_blobs=True, data=torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(5)))
    assert (blobs["conv"] < 0).any() and torch.equal(blobs["relu"], blobs["conv"].clamp_min(0))


def test_a_relu_on_a_net_input_does_not_overwrite_it():
    net = _relu_pool_net(relu_on_input=True)
    net.set_plan(relu_pool.fused_plan(layer_steps(net)))
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    kept = x.detach().clone()
    blobs = net(return_blobs=True, data=x)
    blobs["pool"].sum().backward()
    assert torch.equal(x.detach(), kept)
    assert torch.equal(x.grad, torch.autograd.grad(torch.nn.functional.max_pool2d(kept.requires_grad_().relu(), 2)
                                                   .sum(), kept)[0])


def test_a_non_finite_gradient_at_a_non_positive_winner_is_nan_as_in_caffe():
    x = torch.tensor([[[[-1.0, -2.0], [-3.0, -4.0]]]], requires_grad=True)
    _, pooled = ops.relu_max_pool(x * 1.0, (2, 2), (2, 2), in_place=True)
    (dx,) = torch.autograd.grad(pooled, x, torch.tensor([[[[float("inf")]]]]))
    assert torch.isnan(dx[0, 0, 0, 0]) and (dx.flatten()[1:] == 0).all()  # Caffe: inf x (bottom > 0) = NaN


def test_the_solver_trains_on_the_fused_plan():
    net = small_fcn()
    solver = fcr.SGDSolver(net, base_lr=1e-9, lr_policy="fixed", momentum=0.9)
    # the first steps run inside the border pass's Trunk (border.py)
    steps = border.inner_steps(net.plan)
    assert sum(isinstance(s.module, relu_pool.ReLUMaxPool) for s in steps) == 5
    solver.step(**inputs())
    assert solver.iter == 1
