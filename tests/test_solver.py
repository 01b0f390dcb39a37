"""SGDSolver: parity with real Caffe's solver, the update rule against an independent
re-implementation, lr policies, iter_size, lr_mult 0, snapshots (atomic, bit-exact resume, also
after a SIGKILL) and the non-finite-loss guard."""
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CAFFE_REF, needs_cuda, rel_err
from fcn_caffe_repro import ops
from fcn_caffe_repro.caffe import caffemodel
from fcn_caffe_repro.caffe.spec import L, NetBuilder, crop, max_pool
from fcn_caffe_repro.errors import CaffeError, PrototxtError
from fcn_caffe_repro.fusion import FusedDeconvCropSum, fuse
from fcn_caffe_repro.net import CaffeNet
from fcn_caffe_repro.plan import layer_steps
from fcn_caffe_repro.solver import (NonFiniteLoss, SGDSolver, SnapshotError, atomic_save, learning_rate,
                                    load_snapshot, seed_everything)

FIXTURE = CAFFE_REF / "solver-voc-fcn32s"
TOL = 1e-4  # the caffe-ref README's parameter tolerance
FCN_PARAM = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]


# --- a tiny FCN: conv, pool, conv, [dropout], score, fixed bilinear upscore, crop, loss ----------
def tiny_spec(dropout=True, classes=3, deploy=False, upscore_lr=0):
    """deploy=True: image input only, no loss (the TEST-phase net that validation runs);
    upscore_lr: the upsampling's lr_mult (0: fixed, as FCN's)."""
    n = NetBuilder()
    if deploy:
        n.data = L.Input(input_param=dict(shape=dict(dim=[1, 3, 16, 16])))
    else:
        n.data, n.label = L.Input(ntop=2, input_param=dict(shape=[dict(dim=[1, 3, 16, 16]),
                                                                  dict(dim=[1, 1, 16, 16])]))
    n.conv1 = L.Convolution(n.data, num_output=4, kernel_size=3, pad=8, param=FCN_PARAM)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = max_pool(n.relu1)
    n.fc = L.Convolution(n.pool1, num_output=6, kernel_size=3, param=FCN_PARAM)
    n.relu2 = L.ReLU(n.fc, in_place=True)
    top = n.relu2
    if dropout:
        n.drop = top = L.Dropout(n.relu2, dropout_ratio=0.5, in_place=True)
    n.score = L.Convolution(top, num_output=classes, kernel_size=1, param=FCN_PARAM)
    n.upscore = L.Deconvolution(n.score, param=[dict(lr_mult=upscore_lr)], convolution_param=dict(
        num_output=classes, kernel_size=4, stride=2, bias_term=False, weight_filler=dict(type="bilinear")))
    n.score_out = crop(n.upscore, n.data)
    if deploy:
        return n.to_spec("tiny")
    n.loss = L.SoftmaxWithLoss(n.score_out, n.label, loss_param=dict(ignore_label=255, normalize=False))
    return n.to_spec("tiny")


def tiny_net(seed=0, dropout=True, upscore_lr=0):
    """The tiny net in the TRAIN phase with seeded random weights; upscore is the class-wise
    bilinear interpolation of FCN's surgery.interp (the filler fills every channel pair)."""
    net = CaffeNet(tiny_spec(dropout, upscore_lr=upscore_lr), phase="train")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in net.layer_modules():
            if name != "upscore":
                for b in module.blobs():
                    b.copy_(torch.randn(b.shape, generator=g) * 0.3)
        up = net.upscore.weight
        kernel = up[0, 0].clone()
        up.zero_()
        for c in range(up.shape[0]):
            up[c, c] = kernel
    return net


def tiny_batch(i, classes=3):
    """Image i of a deterministic toy set: sizes vary, some pixels are ignore_label 255."""
    g = torch.Generator().manual_seed(1000 + i)
    h, w = 12 + i % 5, 14 + (3 * i) % 7
    label = torch.randint(0, classes, (1, 1, h, w), generator=g).float()
    label[0, 0, 0, : w // 2] = 255
    return {"data": torch.randn(1, 3, h, w, generator=g), "label": label}


def weights(net):
    return {f"{l}/{i}": b.detach().clone() for l, m in net.layer_modules() for i, b in enumerate(m.blobs())}


# --- parity with Caffe ----------------------------------------------------------------------------
def run_fixture(mutate=None, device="cpu"):
    solver = SGDSolver.from_prototxt(FIXTURE / "solver.prototxt", weights=FIXTURE / "init.caffemodel")
    if device != "cpu":
        solver = SGDSolver(solver.net.to(device), **solver.params)
    if mutate:
        mutate(solver)
    steps = np.load(FIXTURE / "steps.npz")
    losses = [solver.step(data=torch.from_numpy(steps[f"data_{k}"]).to(device),
                          label=torch.from_numpy(steps[f"label_{k}"]).to(device)) for k in range(5)]
    final = caffemodel.read(FIXTURE / "final.caffemodel")
    errs = {(name, i): rel_err(b.detach().cpu().numpy(), final[name][i].reshape(b.shape))
            for name, blobs in solver.net.params_by_layer().items() for i, b in enumerate(blobs)}
    return solver, losses, [float(steps[f"loss_{k}"]) for k in range(5)], errs


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_five_steps_match_caffe(device, request):
    if device == "cuda":
        request.getfixturevalue("cuda_ieee_float32")
    solver, losses, caffe_losses, errs = run_fixture(device=device)
    for k, (ours, theirs) in enumerate(zip(losses, caffe_losses)):
        assert abs(ours - theirs) <= 1e-4 * abs(theirs), f"step {k}: loss {ours} vs Caffe's {theirs}"
    worst = max(errs, key=errs.get)
    assert errs[worst] < TOL, f"{worst}: {errs[worst]:.2e} relative to Caffe after five steps"
    assert solver.iter == 5
    # the fixture is not trivial: the weights moved far more than the tolerance
    init, final = caffemodel.read(FIXTURE / "init.caffemodel"), caffemodel.read(FIXTURE / "final.caffemodel")
    assert max(rel_err(init[n][0], final[n][0]) for n in final if final[n]) > 100 * TOL
    assert np.array_equal(init["upscore"][0], final["upscore"][0])  # lr_mult 0 in Caffe too


@pytest.mark.parametrize("mutation", ["momentum 0.9", "lr_mult ignored"])
def test_fixture_detects_a_wrong_update(mutation):
    """A solver with a wrong momentum or ignoring lr_mult misses Caffe by far more than the
    tolerance. (The fixture's weight decay, 5e-4 at base_lr 1e-7, moves weights by ~1e-10
    relative: test_update_rule_matches_reference covers weight decay and decay_mult.)"""
    def mutate(solver):
        if mutation == "momentum 0.9":
            solver.params["momentum"] = 0.9
        else:
            solver.learnable = [(l, i, w, 1.0, dm) for l, i, w, _, dm in solver.learnable]
    _, _, _, errs = run_fixture(mutate)
    assert max(errs.values()) > 50 * TOL


# --- the update rule against an independent re-implementation --------------------------------------
def reference_run(spec, start, batches, p, lr_of):
    """Caffe's SGD written out in float64 numpy, gradients from a separate net."""
    net = CaffeNet(spec, phase="train")
    mults = {f"{l}/{i}": lm for l, m in net.layer_modules() for i, lm in enumerate(m.lr_mults)}
    w = {k: v.double().numpy().copy() for k, v in start.items()}
    hist = {k: np.zeros_like(v) for k, v in w.items()}
    for t, step_batches in enumerate(batches):
        net.load_caffemodel({l: [w[f"{l}/{i}"].astype(np.float32) for i in range(len(m.blobs()))]
                             for l, m in net.layer_modules() if m.blobs()})
        net.zero_grad()
        for b in step_batches:
            net.objective(net(return_blobs=True, **b)).backward()
        grads = {f"{l}/{i}": bl.grad.double().numpy() for l, m in net.layer_modules()
                 for i, bl in enumerate(m.blobs()) if mults[f"{l}/{i}"][0] != 0}
        norm = math.sqrt(sum((g ** 2).sum() for g in grads.values()))
        scale = p["clip_gradients"] / norm if 0 <= p["clip_gradients"] < norm else 1.0
        for k, g in grads.items():
            lr_mult, decay_mult = mults[k]
            g = g * scale / p["iter_size"]
            reg = w[k] if p["regularization_type"] == "L2" else np.sign(w[k])
            g = g + p["weight_decay"] * decay_mult * reg
            hist[k] = p["momentum"] * hist[k] + lr_of(t) * lr_mult * g
            w[k] = w[k] - hist[k]
    return w


UPDATE_CASES = {
    "L2, iter_size 1, step policy": dict(base_lr=1e-3, lr_policy="step", gamma=0.5, stepsize=2, momentum=0.9,
                                         weight_decay=0.5, iter_size=1),
    "L1, iter_size 3, clipped, inv": dict(base_lr=0.02, lr_policy="inv", gamma=0.1, power=0.75, momentum=0.8,
                                          weight_decay=0.05, regularization_type="L1", iter_size=3,
                                          clip_gradients=5.0),
}


@pytest.mark.parametrize("case", list(UPDATE_CASES))
def test_update_rule_matches_reference(case):
    params = UPDATE_CASES[case]
    full = dict(SGDSolver(tiny_net(dropout=False), **params).params)
    n, steps = params["iter_size"], 4
    batches = [[tiny_batch(t * n + j) for j in range(n)] for t in range(steps)]
    results = {}
    for wd in (params["weight_decay"], 0.0):
        net = tiny_net(seed=3, dropout=False)
        start = weights(net)
        solver = SGDSolver(net, **{**params, "weight_decay": wd})
        for b in batches:
            loss = solver.step(b) if n > 1 else solver.step(**b[0])
            assert math.isfinite(loss)
        results[wd] = weights(net)
    ref = reference_run(tiny_spec(False), start, batches, full, lambda t: learning_rate(full, t))
    for k, w in results[params["weight_decay"]].items():
        moved = ref[k] - start[k].double().numpy()
        if not moved.any():
            assert k == "upscore/0" and torch.equal(w, start[k])
            continue
        assert rel_err(w.double().numpy() - start[k].double().numpy(), moved) < 1e-4, k
    # weight decay matters here: leaving it out misses the reference by far more than the tolerance
    worst = max(rel_err(results[0.0][k].double().numpy() - start[k].double().numpy(),
                        ref[k] - start[k].double().numpy()) for k in ref if k != "upscore/0")
    assert worst > 1e-2


def test_lr_mult_zero_blob_never_touched():
    net = tiny_net(dropout=True)
    before = net.upscore.weight.detach().clone()
    solver = SGDSolver(net, base_lr=0.1, lr_policy="fixed", momentum=0.9, weight_decay=0.5)
    for i in range(3):
        solver.step(**tiny_batch(i))
    assert torch.equal(net.upscore.weight, before)
    assert not net.upscore.weight.requires_grad and net.score.weight.requires_grad
    assert not torch.equal(net.score.weight, weights(tiny_net())["score/0"])


@pytest.mark.parametrize("upscore_lr", [0, 1])
def test_the_upsampling_trains_through_the_fused_op_with_the_same_steps(upscore_lr):
    """The solver runs Deconvolution -> Crop as one fused step (depthwise when frozen, the full
    C x C product with its weight gradient when learned); three steps move every weight as the
    layer-by-layer plan does."""
    if not ops.extension_available():
        pytest.skip(f"the fused op is not built: {ops.extension_problem()}")
    after = {}
    for fused in (True, False):
        net = tiny_net(dropout=False, upscore_lr=upscore_lr)
        solver = SGDSolver(net, base_lr=0.05, lr_policy="fixed", momentum=0.9, weight_decay=5e-4)
        assert any(isinstance(s.module, FusedDeconvCropSum) for s in net.plan)
        assert "upscore" not in net(return_blobs=True, **tiny_batch(0))  # fused away: never materialised
        if not fused:
            net.set_plan(layer_steps(net))
        for i in range(3):
            solver.step(**tiny_batch(i))
        after[fused] = weights(net)
    start = weights(tiny_net(dropout=False, upscore_lr=upscore_lr))
    for key, value in after[False].items():
        scale = float((value - start[key]).abs().max()) + 1e-30
        assert float((after[True][key] - value).abs().max()) <= 1e-5 * scale + 1e-7 * float(value.abs().max()), key
    moved = not torch.equal(after[True]["upscore/0"], start["upscore/0"])
    assert moved == bool(upscore_lr)


def test_a_net_off_the_cpu_trains_on_its_layers():
    """A net fused by a solver on the CPU and then moved (make_solver with a solver file does
    that) trains on its layer plan: the fused op runs in training on the CPU only."""
    net = tiny_net(dropout=False)
    SGDSolver(net, base_lr=0.01, lr_policy="fixed")
    assert any(isinstance(s.module, FusedDeconvCropSum) for s in net.plan) == ops.extension_available()
    net.to("meta")
    SGDSolver(net, base_lr=0.01, lr_policy="fixed")
    assert not any(isinstance(s.module, FusedDeconvCropSum) for s in net.plan)
    assert [s.name for s in net.plan] == [s.name for s in layer_steps(net)]


def test_a_cpu_net_keeps_its_own_fused_plan_without_the_extension(monkeypatch):
    """Without the extension the solver leaves a CPU net's plan as the user set it: a plan
    fused with the torch implementation is not put back on its layers."""
    monkeypatch.setattr(ops, "extension_available", lambda: False)
    net = tiny_net(dropout=False)
    fuse(net, impl="torch")
    plan = [s.name for s in net.plan]
    SGDSolver(net, base_lr=0.01, lr_policy="fixed")
    assert [s.name for s in net.plan] == plan
    assert any(isinstance(s.module, FusedDeconvCropSum) for s in net.plan)


# --- learning-rate policies against Caffe's formulas -----------------------------------------------
def caffe_multistep(p, it):
    """Caffe's stateful multistep: current_step_ advances at most once per GetLearningRate call."""
    step = 0
    for i in range(it + 1):
        if step < len(p["stepvalue"]) and i >= p["stepvalue"][step]:
            step += 1
    return p["base_lr"] * p["gamma"] ** step


POLICIES = {
    "fixed": (dict(), lambda p, i: p["base_lr"]),
    "step": (dict(gamma=0.1, stepsize=7), lambda p, i: p["base_lr"] * p["gamma"] ** (i // 7)),
    "exp": (dict(gamma=0.97), lambda p, i: p["base_lr"] * 0.97 ** i),
    "inv": (dict(gamma=1e-3, power=0.75), lambda p, i: p["base_lr"] * (1 + 1e-3 * i) ** -0.75),
    "multistep": (dict(gamma=0.5, stepvalue=[3, 5, 5, 20]), caffe_multistep),
    "poly": (dict(power=0.9, max_iter=50), lambda p, i: p["base_lr"] * (1 - i / 50) ** 0.9),
    "sigmoid": (dict(gamma=0.2, stepsize=25), lambda p, i: p["base_lr"] / (1 + math.exp(-0.2 * (i - 25)))),
}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_lr_policy(policy):
    extra, formula = POLICIES[policy]
    solver = SGDSolver(tiny_net(dropout=False), base_lr=0.01, lr_policy=policy, **extra)
    for it in [0, 1, 2, 3, 4, 5, 6, 7, 13, 14, 21, 25, 49]:
        want = formula(solver.params, it)
        assert solver.lr(it) == pytest.approx(want, rel=1e-6, abs=0), f"{policy} at iteration {it}"
    assert solver.lr() == solver.lr(0)


def test_bad_solver_parameters():
    net = tiny_net(dropout=False)
    with pytest.raises(CaffeError, match="lr_policy"):
        SGDSolver(net, base_lr=0.1)
    with pytest.raises(CaffeError, match="stepsize"):
        SGDSolver(net, base_lr=0.1, lr_policy="step", gamma=0.1)
    with pytest.raises(CaffeError, match="only SGD"):
        SGDSolver(net, base_lr=0.1, lr_policy="fixed", type="Adam")
    with pytest.raises(CaffeError, match="unknown solver parameter"):
        SGDSolver(net, base_lr=0.1, lr_policy="fixed", momentun=0.9)
    solver = SGDSolver(net, base_lr=0.1, lr_policy="fixed", iter_size=2)
    with pytest.raises(CaffeError, match="iter_size is 2"):
        solver.step(**tiny_batch(0))
    with pytest.raises(CaffeError, match="list of iter_size = 2"):
        solver.step([tiny_batch(0)])


# --- reading solver files ----------------------------------------------------------------------------
def test_from_prototxt_reads_fields_and_relative_train_net(tmp_path):
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "train.prototxt").write_text(tiny_spec().to_prototxt())
    (tmp_path / "solver.prototxt").write_text(textwrap.dedent("""\
        train_net: "nets/train.prototxt"
        test_net: "nets/val.prototxt"
        test_iter: 736
        test_interval: 999999999
        base_lr: 1e-10  lr_policy: "multistep"  gamma: 0.1
        stepvalue: 10 stepvalue: 20
        momentum: 0.99  weight_decay: 0.0005  iter_size: 2  max_iter: 100000
        average_loss: 20  display: 20  snapshot: 4000  snapshot_prefix: "snapshot/train"
        test_initialization: false  random_seed: 7  solver_mode: GPU
        """))
    solver = SGDSolver.from_prototxt(tmp_path / "solver.prototxt")
    p = solver.params
    assert (p["base_lr"], p["momentum"], p["weight_decay"], p["iter_size"]) == (1e-10, 0.99, 0.0005, 2)
    assert p["stepvalue"] == [10, 20] and p["lr_policy"] == "multistep" and p["snapshot"] == 4000
    assert solver.net.phase == "train" and "drop" in dict(solver.net.layer_modules())
    assert solver.lr(10) == pytest.approx(1e-11) and solver.lr(9) == pytest.approx(1e-10)
    # random_seed seeds the net's fillers: the same file gives the same net
    again = SGDSolver.from_prototxt(tmp_path / "solver.prototxt")
    assert torch.equal(again.net.fc.weight, solver.net.fc.weight)

    # `weights` entries (relative to the solver file) initialise the net, as Caffe's solver does
    trained = tiny_net(seed=8)
    trained.save_caffemodel(tmp_path / "nets" / "init.caffemodel")
    text = (tmp_path / "solver.prototxt").read_text()
    (tmp_path / "solver.prototxt").write_text(text + 'weights: "nets/init.caffemodel"\n')
    assert torch.equal(SGDSolver.from_prototxt(tmp_path / "solver.prototxt").net.fc.weight, trained.fc.weight)

    (tmp_path / "bad.prototxt").write_text('train_net: "nets/train.prototxt"\nbase_lr: 0.1\n'
                                           'lr_policy: "fixed"\nmomentun: 0.9\n')
    with pytest.raises(PrototxtError, match=r"bad.prototxt:4.*momentun"):
        SGDSolver.from_prototxt(tmp_path / "bad.prototxt")
    (tmp_path / "nonet.prototxt").write_text('base_lr: 0.1\nlr_policy: "fixed"\n')
    with pytest.raises(PrototxtError, match="exactly one of"):
        SGDSolver.from_prototxt(tmp_path / "nonet.prototxt")


# --- snapshots --------------------------------------------------------------------------------------
SOLVER = dict(base_lr=1e-3, lr_policy="step", gamma=0.5, stepsize=3, momentum=0.9, weight_decay=5e-3,
              average_loss=4)


def test_resume_is_bit_exact_with_dropout(tmp_path):
    torch.manual_seed(11)
    straight = SGDSolver(tiny_net(), **SOLVER)
    for i in range(6):
        straight.step(**tiny_batch(i))

    torch.manual_seed(11)
    first = SGDSolver(tiny_net(), **SOLVER)
    for i in range(3):
        first.step(**tiny_batch(i))
    path = first.snapshot(tmp_path / "s.pt")
    for i in range(3, 5):  # the first run goes on (and changes the RNG) before it "dies"
        first.step(**tiny_batch(i))

    torch.manual_seed(999)  # a different process state, a different initial net
    resumed = SGDSolver(tiny_net(seed=5), **SOLVER).restore(path)
    assert resumed.iter == 3
    for i in range(3, 6):
        resumed.step(**tiny_batch(i))
    for k, w in weights(straight.net).items():
        assert torch.equal(w, weights(resumed.net)[k]), k
    assert all(torch.equal(a, b) for a, b in zip(straight.history, resumed.history))
    assert resumed.smoothed_loss == straight.smoothed_loss
    # dropout really was on: without the RNG state the run differs
    torch.manual_seed(11)
    no_rng = SGDSolver(tiny_net(seed=5), **SOLVER).restore(path)
    torch.manual_seed(12345)
    for i in range(3, 6):
        no_rng.step(**tiny_batch(i))
    assert not torch.equal(no_rng.net.fc.weight, straight.net.fc.weight)
    # the snapshot alone rebuilds net and solver
    rebuilt = SGDSolver.from_snapshot(path)
    assert rebuilt.iter == 3 and rebuilt.params["momentum"] == 0.9
    assert torch.equal(rebuilt.history[0], load_snapshot(path)["history"]["conv1/0"])


def test_snapshot_from_another_process_count_keeps_the_generators(tmp_path):
    """A snapshot of two processes restored in one: weights and iteration come back, the RNG states
    do not, and the warning names the caller of restore."""
    solver = SGDSolver(tiny_net(), **SOLVER)
    solver.step(**tiny_batch(0))
    state = load_snapshot(solver.snapshot(tmp_path / "s.pt"))
    state["rng"] = state["rng"] * 2
    atomic_save(state, tmp_path / "two.pt")
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    with pytest.warns(UserWarning, match="2 process.*resuming with 1") as record:
        resumed = SGDSolver(tiny_net(seed=5), **SOLVER).restore(tmp_path / "two.pt")
    assert record[0].filename == __file__
    assert resumed.iter == 1 and torch.equal(resumed.net.fc.weight, solver.net.fc.weight)
    assert torch.equal(torch.rand(4), expected)


def test_seed_everything_adds_the_rank():
    def draws():
        return torch.rand(3).tolist(), float(np.random.rand()), random.random()
    seed_everything(7, rank=2)
    seed_plus_rank = draws()
    seed_everything(9)  # outside torch.distributed this process is rank 0
    assert draws() == seed_plus_rank
    seed_everything(9, rank=0)
    assert draws() == seed_plus_rank


CHILD = textwrap.dedent("""
    import sys, torch
    sys.path[:0] = [{tests!r}, {root!r}]
    torch.set_num_threads(1)
    from test_solver import SOLVER, SGDSolver, tiny_batch, tiny_net
    mode, path, until = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def run(resume_from=None, snapshot_to=None):
        torch.manual_seed(11)
        solver = SGDSolver(tiny_net(), **dict(SOLVER, lr_policy="fixed", base_lr=3e-4))
        if resume_from:
            solver.restore(resume_from)
        while solver.iter < until:
            solver.step(**tiny_batch(solver.iter))
            if snapshot_to:
                solver.snapshot(snapshot_to)
        return solver

    if mode == "killed":
        run(snapshot_to=path)
        open(path + ".finished", "w").close()
    else:  # the uninterrupted run, then the resumed one, in one process
        run().snapshot(path + ".straight")
        run(resume_from=path).snapshot(path + ".resumed")
""")


def test_resume_after_sigkill_is_bit_exact(tmp_path):
    """A training process killed at an arbitrary moment (mid-step or mid-snapshot) resumes from
    its last snapshot to the same weights, bit for bit, as a run never interrupted."""
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).parent), root=str(Path(__file__).parents[1])))
    snap, until = str(tmp_path / "last.pt"), 120
    proc = subprocess.Popen([sys.executable, str(script), "killed", snap, str(until)])
    deadline = time.monotonic() + 40
    try:
        while time.monotonic() < deadline:
            if os.path.exists(snap) and load_snapshot(snap)["iter"] >= 10:
                break
            time.sleep(0.01)
        time.sleep(0.05 * np.random.rand())
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert not os.path.exists(snap + ".finished"), "the child finished before it was killed"
    killed_at = load_snapshot(snap)["iter"]
    assert 10 <= killed_at < until
    subprocess.run([sys.executable, str(script), "compare", snap, str(until)], check=True, timeout=60)
    a, b = load_snapshot(snap + ".resumed"), load_snapshot(snap + ".straight")
    assert a["iter"] == b["iter"] == until
    for k in b["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    for k in b["history"]:
        assert torch.equal(a["history"][k], b["history"][k]), k


def test_snapshot_is_atomic(tmp_path, monkeypatch):
    solver = SGDSolver(tiny_net(), **SOLVER)
    solver.step(**tiny_batch(0))
    path = solver.snapshot(tmp_path / "s.pt")
    good = path_bytes = Path(path).read_bytes()
    solver.step(**tiny_batch(1))

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a snapshot")
        raise KeyboardInterrupt("killed while writing")
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        solver.snapshot(path)
    monkeypatch.undo()
    assert Path(path).read_bytes() == good == path_bytes
    assert os.listdir(tmp_path) == ["s.pt"]  # no temporary left behind
    assert load_snapshot(path)["iter"] == 1

    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(SnapshotError, match="cut.pt: cannot read snapshot"):
        solver.restore(tmp_path / "cut.pt")
    with pytest.raises(SnapshotError, match="no such snapshot"):
        solver.restore(tmp_path / "absent.pt")
    other = SGDSolver(CaffeNet(tiny_spec(classes=4), phase="train"), **SOLVER)
    before = weights(other.net)
    with pytest.raises(SnapshotError, match="shape"):
        other.restore(path)
    assert all(torch.equal(w, weights(other.net)[k]) for k, w in before.items())  # nothing half-loaded


def test_non_finite_loss_stops_before_the_update(tmp_path):
    solver = SGDSolver(tiny_net(), **SOLVER)
    solver.step(**tiny_batch(0))
    path = solver.snapshot(tmp_path / "good.pt")
    before = weights(solver.net)
    history = [h.clone() for h in solver.history]
    bad = tiny_batch(1)
    bad["data"][0, 0, 2, 2] = float("nan")
    with pytest.raises(NonFiniteLoss, match=r"iteration 1: the loss is nan; weights not updated; "
                                            r"the last good snapshot is .*good.pt") as e:
        solver.step(**bad)
    assert e.value.iteration == 1 and isinstance(e.value, CaffeError)
    assert solver.iter == 1
    assert all(torch.equal(w, weights(solver.net)[k]) for k, w in before.items())
    assert all(torch.equal(a, b) for a, b in zip(history, solver.history))
    assert load_snapshot(path)["iter"] == 1
    # overflowing weights are caught too
    huge = SGDSolver(tiny_net(), **SOLVER)
    with torch.no_grad():
        huge.net.score.weight.mul_(1e38)
    with pytest.raises(NonFiniteLoss, match="not finite|the loss is"):
        huge.step(**tiny_batch(0))


@pytest.mark.parametrize("clip", [-1.0, 1e6])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_non_finite_gradient_with_a_finite_loss_is_named(clip, value):
    """With clip_gradients on, finiteness is read off the clip's L2 norm (finite exactly when every
    float32 gradient is); off, from each blob's max |g|. Either way the blob is named, nothing moves."""
    solver = SGDSolver(tiny_net(), **{**SOLVER, "clip_gradients": clip})
    before = weights(solver.net)

    def poison(s, loss):
        s.net.score.weight.grad[0, 0, 0, 0] = value
        return loss

    solver.gradient_hooks.append(poison)
    with pytest.raises(NonFiniteLoss, match=r"the gradient of layer 'score' blob 0 is not finite"):
        solver.step(**tiny_batch(0))
    assert solver.iter == 0 and all(torch.equal(w, weights(solver.net)[k]) for k, w in before.items())


def _score_gradient_near_float32_max(solver, loss):
    """A gradient hook: every element of score's weight gradient 3e38, finite, while the norm
    of the blob passes float32's range."""
    solver.net.score.weight.grad.fill_(3e38)
    return loss


def test_a_finite_gradient_past_float32s_norm_range_is_clipped_not_refused():
    """Each gradient is finite but the norm of score's passes float32's range: the clip scales
    it down (its norm summed again in float64) instead of calling it non-finite."""
    solver = SGDSolver(tiny_net(), **{**SOLVER, "clip_gradients": 1.0, "base_lr": 1.0, "momentum": 0.0,
                                      "weight_decay": 0.0})
    before = weights(solver.net)

    solver.gradient_hooks.append(_score_gradient_near_float32_max)
    solver.step(**tiny_batch(0))
    moved = {k: float((w - before[k]).double().norm()) for k, w in weights(solver.net).items()}
    assert math.isclose(moved["score/0"], 1.0, rel_tol=1e-4)  # the whole step has norm clip = 1
    assert sum(v * v for v in moved.values()) == pytest.approx(1.0, rel=1e-4)


def test_a_finite_gradient_past_float32s_norm_range_is_applied_without_a_clip():
    """Without a clip the finiteness check reads the same norm: an overflowing float32 norm of
    finite gradients is checked again in float64, and the step is taken."""
    solver = SGDSolver(tiny_net(), **{**SOLVER, "clip_gradients": -1.0, "base_lr": 1e-30, "momentum": 0.0,
                                      "weight_decay": 0.0})
    before = weights(solver.net)["score/0"]

    solver.gradient_hooks.append(_score_gradient_near_float32_max)
    solver.step(**tiny_batch(0))
    assert solver.iter == 1
    assert torch.allclose(weights(solver.net)["score/0"], before - 3e8, rtol=1e-6)


def test_export_caffemodel(tmp_path):
    solver = SGDSolver(tiny_net(), **SOLVER)
    solver.step(**tiny_batch(0))
    solver.export_caffemodel(tmp_path / "w.caffemodel")
    back = caffemodel.read(tmp_path / "w.caffemodel")
    for k, w in weights(solver.net).items():
        layer, i = k.split("/")
        assert np.array_equal(back[layer][int(i)].reshape(w.shape), w.numpy()), k


def test_an_inline_net_param_with_an_unknown_field_is_refused(tmp_path):
    from fcn_caffe_repro.errors import PrototxtError

    net = tiny_spec().to_prototxt().replace('name: "fc"', 'name: "fc"\n  kernal_size: 5', 1)
    assert "kernal_size" in net
    body = "\n".join("  " + line for line in net.splitlines())
    (tmp_path / "solver.prototxt").write_text(f"net_param {{\n{body}\n}}\nbase_lr: 0.01\nlr_policy: \"fixed\"\nmax_iter: 2\n")
    with pytest.raises(PrototxtError, match=r"solver.prototxt:\d+:\d+: unknown field 'kernal_size' in LayerParameter"):
        SGDSolver.from_prototxt(tmp_path / "solver.prototxt")
