"""The step arena (csrc/cpu/step_arena.cpp, step_arena.py): each test reads one scripted training
run, made in a fresh process (the arena is the process's allocator, installed once), beside the
same run with the arena off. The script: four steps at one input size, a step after which the
caller keeps a large weight gradient alive through the next step, then steps at another size."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import CAFFE_REF
from fcn_caffe_repro import ops

pytestmark = pytest.mark.skipif(not ops.extension_available(), reason="needs the C++ extension (not built)")

RUN = textwrap.dedent("""
    import contextlib, json, sys, torch
    from fcn_caffe_repro import step_arena
    from fcn_caffe_repro.caffe.spec import L, NetBuilder
    from fcn_caffe_repro.net import CaffeNet
    from fcn_caffe_repro.solver import SGDSolver

    class WithoutArena(SGDSolver):
        @staticmethod
        def _memory_policy(net):
            return contextlib.nullcontext

    mode, out = sys.argv[1:]
    n = NetBuilder()
    n.data, n.label = L.Input(ntop=2, input_param=dict(shape=[dict(dim=[1, 3, 64, 64]), dict(dim=[1, 1, 64, 64])]))
    n.conv1 = L.Convolution(n.data, num_output=512, kernel_size=3, pad=1)  # 8.4 MB tops at 64x64
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.conv2 = L.Convolution(n.relu1, num_output=640, kernel_size=1)  # a 1.3 MB weight (and gradient)
    n.relu2 = L.ReLU(n.conv2, in_place=True)
    n.score = L.Convolution(n.relu2, num_output=3, kernel_size=1)
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    torch.manual_seed(0)
    net = CaffeNet(n.to_spec("arena"), phase="train")
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    cls = SGDSolver if mode == "arena" else WithoutArena
    solver = cls(net, base_lr=1e-3, lr_policy="fixed", momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(1)
    def batch(size):
        return dict(data=torch.randn(1, 3, size, size, generator=g),
                    label=torch.randint(0, 3, (1, 1, size, size), generator=g).float())
    steps, held, held_copy = [], None, None
    for k, size in enumerate([64] * 6 + [80] * 5):
        loss = solver.step(**batch(size))
        steps.append(dict(size=size, loss=loss, **(step_arena.stats() if mode == "arena" else {})))
        if k == 4:  # kept through step 5, whose ClearParamDiffs no longer frees it
            held = net.conv2.weight.grad
            held_copy = held.clone()
        if k == 5:
            steps[-1]["held_intact"] = torch.equal(held, held_copy)
    torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, out)
    print(json.dumps(steps))
""")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{mode: (steps, final weights)} for the arena and for the same run without it."""
    folder = tmp_path_factory.mktemp("arena")
    out = {}
    for mode in ("arena", "none"):
        path = folder / f"{mode}.pt"
        res = subprocess.run([sys.executable, "-c", RUN, mode, str(path)], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1",
                                               "PYTHONPATH": str(CAFFE_REF.parents[2])})
        assert res.returncode == 0, res.stderr[-3000:]
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1]), torch.load(path)
    return out


def test_training_on_the_arena_is_bit_equal(runs):
    (arena, weights), (plain, plain_weights) = runs["arena"], runs["none"]
    assert [s["loss"] for s in arena] == [s["loss"] for s in plain]
    assert weights.keys() == plain_weights.keys()
    for name in weights:
        assert torch.equal(weights[name], plain_weights[name]), name


def test_steps_are_recorded_then_served_from_the_plan(runs):
    steps, _ = runs["arena"]
    first, recorded = steps[0], steps[1]
    assert first["recordings"] == 0 and first["served"] == 0 and first["mapped"] > 0
    assert recorded["recordings"] == 1 and recorded["served"] == 0
    planned = recorded["planned_blocks"]
    assert planned == recorded["mapped"] > 0
    for s in steps[2:5]:
        assert (s["served"], s["mapped"], s["diverged"]) == (planned, 0, False), s
    # blocks whose lifetimes do not overlap share bytes of the region
    assert 0 < recorded["region_bytes"] < recorded["planned_bytes"]


def test_a_block_kept_alive_by_the_caller_is_not_handed_out_again(runs):
    steps, _ = runs["arena"]
    kept = steps[5]
    assert kept["held_intact"]
    assert kept["diverged"] and kept["mapped"] > 0  # its place was taken: the rest was mapped


def test_another_input_size_records_a_new_plan(runs):
    steps, _ = runs["arena"]
    bigger = [s for s in steps if s["size"] == 80]
    # the step with the kept gradient and the first at 80 diverge: two in a row, so the next records
    assert bigger[0]["diverged"] and bigger[1]["recordings"] == 2
    assert bigger[1]["planned_blocks"] == bigger[1]["mapped"] > 0
    for s in bigger[2:]:
        assert (s["served"], s["mapped"], s["diverged"]) == (bigger[1]["planned_blocks"], 0, False), s
