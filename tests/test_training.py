"""The training loop (fcn_caffe_repro.training) and tools/train.py on the tiny net: resume is
bit-exact through the loop's own snapshots, Ctrl-C stops cleanly with a snapshot, a non-finite
loss stops with the last good snapshot kept, validation scores with the paper's metrics."""
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fcn_caffe_repro.data import Synthetic
from fcn_caffe_repro.net import CaffeNet
from fcn_caffe_repro.solver import NonFiniteLoss, SGDSolver, load_snapshot
from fcn_caffe_repro.training import Trainer, sample_index, validate
from test_solver import SOLVER, tiny_net, tiny_spec, weights

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
import train as train_tool  # noqa: E402

DATA = dict(n=12, size=16, num_classes=3)


def trainer(tmp_path, max_iter, **kwargs):
    torch.manual_seed(5)
    solver = SGDSolver(tiny_net(), **dict(SOLVER, base_lr=1e-5, display=2))
    return Trainer(solver, Synthetic(**DATA), tmp_path, seed=1337, max_iter=max_iter, workers=0,
                   progress=False, **kwargs)


def records(path):
    return [json.loads(line) for line in (Path(path) / "log.jsonl").read_text().splitlines()]


def test_sample_index_is_a_pure_uniform_draw():
    draws = [sample_index(1337, s, 5) for s in range(2000)]
    assert draws == [sample_index(1337, s, 5) for s in range(2000)]
    assert draws != [sample_index(1338, s, 5) for s in range(2000)]
    counts = np.bincount(draws, minlength=5)
    assert counts.min() > 300  # about 400 each


def test_loop_resumes_bit_exact_from_its_snapshots(tmp_path):
    straight = trainer(tmp_path / "a", 8, snapshot_every=4)
    straight.run()
    first = trainer(tmp_path / "b", 4, snapshot_every=4)
    first.run()
    assert first.latest_snapshot().name == "train_iter_4.solverstate.pt"
    again = trainer(tmp_path / "b", 8, snapshot_every=4)
    with torch.no_grad():  # a different start, overwritten by the resume
        again.solver.net.fc.weight.add_(1.0)
    assert again.resume()
    again.run()
    for k, w in weights(straight.solver.net).items():
        assert torch.equal(w, weights(again.solver.net)[k]), k
    events = [r.get("event") for r in records(tmp_path / "b")]
    assert events.count("resume") == 1 and events[-1] == "done"
    logged = [r for r in records(tmp_path / "a") if "loss" in r]
    assert [r["iter"] for r in logged] == [2, 4, 6, 8] and all(r["images_per_s"] > 0 for r in logged)
    assert (tmp_path / "a" / "snapshots" / "train_iter_8" / "train_iter_8.caffemodel").is_file()


class Interrupting(Synthetic):
    """Sends this process SIGINT (Ctrl-C) while loading the fifth image."""

    loaded = 0

    def __getitem__(self, i):
        Interrupting.loaded += 1
        if Interrupting.loaded == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return super().__getitem__(i)


def test_ctrl_c_stops_after_the_iteration_with_a_snapshot(tmp_path):
    t = trainer(tmp_path, 10 ** 6)
    t.dataset = Interrupting(**DATA)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the runner started us in the background
    t.run()  # returns instead of raising KeyboardInterrupt
    assert t.solver.iter == 5  # the interrupted iteration was completed, no further one begun
    assert load_snapshot(t.snapshot_path(5))["iter"] == 5
    assert records(tmp_path)[-1] == {"event": "stop", "iter": 5}
    assert signal.getsignal(signal.SIGINT) is before  # handler given back


class Poisoned(Synthetic):
    """Image 3 is NaN: the loss of any iteration that draws it is NaN."""

    def __getitem__(self, i):
        image, label = super().__getitem__(i)
        return (image * float("nan"), label) if i == 3 else (image, label)


def test_non_finite_loss_keeps_the_last_good_snapshot(tmp_path):
    t = trainer(tmp_path, 200, snapshot_every=1)
    t.dataset = Poisoned(**DATA)
    bad_iter = next(s for s in range(200) if sample_index(1337, s, DATA["n"]) == 3)
    with pytest.raises(NonFiniteLoss, match=f"iteration {bad_iter}: the loss is nan"):
        t.run()
    assert t.solver.iter == bad_iter > 0
    last = t.latest_snapshot()
    assert load_snapshot(last)["iter"] == bad_iter
    assert all(torch.equal(w, load_snapshot(last)["weights"][k]) for k, w in weights(t.solver.net).items())
    assert records(tmp_path)[-1]["event"] == "nonfinite"


def test_validation_scores_the_deploy_net(tmp_path):
    val_net = CaffeNet(tiny_spec(deploy=True), phase="test")
    val = Synthetic(seed=9, n=4, size=16, num_classes=3)
    t = trainer(tmp_path, 2, val=val, val_net=val_net, val_every=2)
    t.run()
    logged = [r for r in records(tmp_path) if r.get("event") == "val"]
    assert len(logged) == 1 and logged[0]["iter"] == 2
    scores = logged[0]["results"]["label"]
    # the deploy net got the trained weights: scoring it directly gives the same numbers
    assert validate(val_net, val) == {"label": scores}
    assert torch.equal(val_net.fc.weight, t.solver.net.fc.weight)
    assert 0 <= scores["mean_iu"] <= scores["pixel_acc"] <= 1


def test_tool_trains_and_resumes(tmp_path, capsys):
    (tmp_path / "train.prototxt").write_text(tiny_spec().to_prototxt())
    (tmp_path / "solver.prototxt").write_text(
        'train_net: "train.prototxt"\nbase_lr: 1e-3\nlr_policy: "fixed"\nmomentum: 0.9\n'
        'weight_decay: 5e-4\nmax_iter: 100\ndisplay: 1\nrandom_seed: 3\n')
    args = ["--solver", str(tmp_path / "solver.prototxt"), "--dataset", "synthetic", "--data-opt", "n=6",
            "--data-opt", "size=16", "--data-opt", "num_classes=3", "--out", str(tmp_path / "run"),
            "--workers", "0", "--quiet", "--device", "cpu"]
    assert train_tool.main(args + ["--max-iter", "3"]) == 0
    assert train_tool.main(args + ["--max-iter", "5", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "done at iteration 3" in out and "done at iteration 5" in out
    events = [r.get("event") for r in records(tmp_path / "run")]
    assert events.count("resume") == 1
    assert load_snapshot(tmp_path / "run" / "snapshots" / "train_iter_5" / "train_iter_5.solverstate.pt")["iter"] == 5


class Broken(Synthetic):
    """Item 7 cannot be read (a corrupt file)."""

    def __getitem__(self, i):
        if i == 7:
            raise OSError("image file is truncated")
        return super().__getitem__(i)


def test_a_bad_item_in_a_worker_stops_with_a_snapshot(tmp_path):
    from fcn_caffe_repro.data.common import DatasetError

    t = trainer(tmp_path, 200)
    t.dataset, t.workers = Broken(**DATA), 1
    bad_iter = next(s for s in range(200) if sample_index(1337, s, DATA["n"]) == 7)
    with pytest.raises(DatasetError, match=rf"iteration {bad_iter}: a training item failed to load .*truncated.*snapshot"):
        t.run()
    assert t.solver.iter == bad_iter > 0
    assert load_snapshot(t.latest_snapshot())["iter"] == bad_iter
    assert records(tmp_path)[-1]["event"] == "data_error"
