"""`fcn bench net`'s runners (fcn_caffe_repro/bench/net.py, opencv.py, precision.py) on small nets:
OpenCV's dnn and ours compute the same scores, the stream is VOC-sized and seeded, and the
bfloat16 mean IU measurement scores the same images as the main job."""
import sys
import types

import numpy as np
import pytest
import torch

from conftest import CAFFE_REF, rel_err
import fcn_caffe_repro as fcr
from fcn_caffe_repro import layers as L
from fcn_caffe_repro import surgery
from fcn_caffe_repro.bench import net as bench
from fcn_caffe_repro.bench import opencv, precision
from fcn_caffe_repro.reproduce import Config

OPENCV_TOL = 1e-5  # float32, another summation order (measured 2.5e-6 at this size)
BF16_TOL = 2 ** -5  # as tests/test_fast.py: of the largest score, 4 x bfloat16's epsilon


def small(name="voc-fcn8s", size=64):
    return bench.build(name, "deploy", 1, size, "cpu", width_divisor=16)


def test_opencv_runner_computes_our_scores():
    if opencv.problem():  # opencv-python-headless<5, in [test]
        pytest.skip(opencv.problem())
    net, inputs = small()
    run_cv, cv = bench.runner("opencv", net, 1)
    theirs = run_cv(inputs)
    assert bench.opencv_error(cv, net, inputs) <= OPENCV_TOL
    for path, tol in (("fast", OPENCV_TOL), ("bf16", BF16_TOL)):
        ours_net, _ = small()
        forward, none = bench.runner(path, ours_net, 1)
        ours = forward(inputs)
        assert none is None and ours["score"].dtype == torch.float32
        assert rel_err(ours["score"].numpy(), theirs["score"]) <= tol, path
    # a different input gives different scores: OpenCV runs the input it is given, not a cached one
    other = {"data": inputs["data"].flip(3)}
    assert rel_err(run_cv(other)["score"], theirs["score"]) > 1e-3


def test_opencv_missing_is_a_message_not_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    assert "OpenCV is not installed" in opencv.problem() and "opencv-python-headless" in opencv.problem()


def test_opencv_without_caffe_importer_is_a_message_not_an_error(monkeypatch):
    """OpenCV 5.x has a dnn module but no readNetFromCaffe: the benchmark must leave its rows out
    with that reason, not fail in the worker (seen on a machine with opencv-python-headless 5.0.0)."""
    fake = types.ModuleType("cv2")
    fake.__version__ = "5.0.0"
    fake.dnn = types.SimpleNamespace(readNetFromONNX=lambda *a: None)
    monkeypatch.setitem(sys.modules, "cv2", fake)
    why = opencv.problem()
    assert why is not None and "5.0.0" in why and "readNetFromCaffe" in why and "<5" in why
    fake.dnn.readNetFromCaffe = lambda *a: None
    assert opencv.problem() is None


def test_stream_is_seeded_and_voc_sized():
    a, b, c = bench.stream_images(12, seed=3), bench.stream_images(12, seed=3), bench.stream_images(12, seed=4)
    sizes = [tuple(x.shape) for x in a]
    assert sizes == [tuple(x.shape) for x in b] and all(torch.equal(x, y) for x, y in zip(a, b))
    assert sizes != [tuple(x.shape) for x in c]
    assert all(s[:2] == (1, 3) and max(s[2:]) == 500 and 333 <= min(s[2:]) <= 375 for s in sizes)
    assert {s[2] == 500 for s in sizes} == {True, False}, "both orientations"


def random_fcn8s_weights(path, cfg):
    """The main job's FCN-8s deploy net (cfg's classes and width) with random He-scaled weights."""
    torch.manual_seed(0)
    net = fcr.build_net("voc-fcn8s", phase="deploy", num_classes=cfg.num_classes, width_divisor=cfg.width_divisor)
    with torch.no_grad():
        for _, m in net.layer_modules():
            if isinstance(m, L.Convolution):
                m.weight.normal_(0.0, (2.0 / m.weight[0].numel()) ** 0.5)
                m.bias.uniform_(-0.1, 0.1)
    surgery.interp(net, surgery.upsampling_layers(net))
    net.save_caffemodel(path)


def test_bf16_mean_iu_is_within_half_a_point_of_float32(tmp_path):
    cfg = Config()
    random_fcn8s_weights(tmp_path / "w.caffemodel", cfg)
    r = precision.bf16_miou(tmp_path / "w.caffemodel", cfg, limit=4)
    assert r["images"] == 4
    main, f32, bf = r["float32 (the main job's path)"], r["fast float32"], r["fast bfloat16"]
    assert 0 < f32 < 1 and abs(main - f32) <= 1e-4  # float32 fast mode: the same predictions
    assert abs(bf - f32) <= 0.005 and r["agreement"] >= 0.99
    assert "mean IU" in precision.report(r)


def test_caffe_ref_measurement_covers_every_score_map(tmp_path):
    for name in ("voc-fcn8s", "siftflow-fcn8s"):
        (tmp_path / name).symlink_to(CAFFE_REF / "nets" / name)
    rows = precision.caffe_ref(tmp_path)
    assert [(n, k) for n, k, *_ in rows] == [("siftflow-fcn8s", "score_geo"), ("siftflow-fcn8s", "score_sem"),
                                             ("voc-fcn8s", "score")]
    for n, k, pixels, agree, err, close, weights_agree in rows:
        assert pixels == (1024 if n.startswith("siftflow") else 3200)
        assert 2 ** -12 < err <= BF16_TOL, "bfloat16 ran, within the bound"
        assert 1 - agree <= close, "flips only where the margin is within the error"
        assert weights_agree >= 0.99, "the weights-only run is the float32 net, its weights rounded"
    # voc-fcn8s has near-ties that rounding its weights alone flips: the column measures something
    assert rows[-1][-1] < 1
    assert "| voc-fcn8s | score | 3200 |" in precision.caffe_ref_report(rows)
