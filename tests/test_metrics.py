"""metrics.py against score.py's formulas re-derived with explicit loops, and paper.py's published rows."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fcn_caffe_repro as fcr
from fcn_caffe_repro import metrics, paper


def loop_hist(label, pred, n):
    """score.py's fast_hist, pixel by pixel."""
    hist = np.zeros((n, n), dtype=np.int64)
    for a, b in zip(np.ravel(label).tolist(), np.ravel(pred).tolist()):
        if 0 <= a < n:
            hist[a, b] += 1
    return hist


def loop_scores(hist):
    """score.py's four metrics class by class; 0/0 classes skipped as np.nanmean skips NaN."""
    n = len(hist)
    total = sum(hist[i][j] for i in range(n) for j in range(n))
    gt = [sum(hist[i][j] for j in range(n)) for i in range(n)]
    pr = [sum(hist[i][j] for i in range(n)) for j in range(n)]
    accs, ius, fw = [], [], 0.0
    for c in range(n):
        if gt[c]:
            accs.append(hist[c][c] / gt[c])
        union = gt[c] + pr[c] - hist[c][c]
        if union:
            ius.append(hist[c][c] / union)
        if gt[c]:
            fw += gt[c] / total * hist[c][c] / union
    nan = float("nan")
    return {"pixel_acc": sum(hist[c][c] for c in range(n)) / total if total else nan,
            "mean_acc": sum(accs) / len(accs) if accs else nan,
            "mean_iu": sum(ius) / len(ius) if ius else nan,
            "fwavacc": fw if total else nan}


def assert_scores_equal(got, want):
    for k in metrics.METRICS:
        assert isinstance(got[k], float)
        if math.isnan(want[k]):
            assert math.isnan(got[k]), k
        else:
            assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-15), k


def test_fast_hist_rows_are_ground_truth_and_void_is_ignored():
    label = np.array([[0, 1, 255], [2, 2, 1]], np.uint8)
    pred = np.array([[0, 2, 1], [2, 1, 1]])
    hist = fcr.metrics.fast_hist(label, pred, 3)
    assert hist.dtype == np.int64 and hist.shape == (3, 3)
    np.testing.assert_array_equal(hist, [[1, 0, 0], [0, 1, 1], [0, 1, 1]])


def test_fast_hist_ignores_negative_and_too_large_labels():
    label = np.array([-1, 0, 3, 7, 1, 255])
    pred = np.array([2, 1, 0, 0, 1, 2])
    np.testing.assert_array_equal(metrics.fast_hist(label, pred, 3), [[0, 1, 0], [0, 1, 0], [0, 0, 0]])


@pytest.mark.parametrize("n", [1, 2, 5, 21, 60])
def test_fast_hist_matches_loops_numpy_and_torch(n):
    rng = np.random.default_rng(n)
    label = rng.integers(0, n, (37, 23)).astype(np.uint8)
    label[rng.random(label.shape) < 0.2] = 255
    pred = rng.integers(0, n, label.shape)
    want = loop_hist(label, pred, n)
    np.testing.assert_array_equal(metrics.fast_hist(label, pred, n), want)
    got = metrics.fast_hist(torch.from_numpy(label), torch.from_numpy(pred), n)
    assert isinstance(got, np.ndarray) and got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(metrics.fast_hist(torch.from_numpy(label), pred, n), want)


def test_fast_hist_rejects_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        metrics.fast_hist(np.zeros((2, 3)), np.zeros((3, 2)), 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        metrics.fast_hist(np.zeros(4, np.uint8), np.array([0, 1, 2, 0]), 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        metrics.fast_hist(torch.zeros(4, dtype=torch.uint8), torch.tensor([0, -1, 1, 0]), 2)


@pytest.mark.parametrize("seed", range(6))
def test_scores_match_reference_formulas_on_random_histograms(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 30))
    hist = rng.integers(0, 1000, (n, n))
    hist[rng.random(n) < 0.3] = 0  # classes absent from the labels
    hist[:, rng.random(n) < 0.3] = 0  # and from the predictions
    got = metrics.scores(hist)
    assert_scores_equal(got, loop_scores(hist.tolist()))
    assert got["iu"].shape == (n,)


def test_absent_class_is_left_out_and_predicted_only_class_counts_as_zero():
    hist = np.array([[5, 1, 0], [2, 8, 0], [0, 0, 0]])
    got = metrics.scores(hist)
    assert math.isnan(got["iu"][2]) and math.isnan(got["acc"][2])
    assert got["mean_iu"] == pytest.approx((5 / 8 + 8 / 11) / 2)
    hist[0, 2] = 3  # class 2 predicted but never labelled: IU 0 enters the mean, accuracy stays out
    got = metrics.scores(hist)
    assert got["iu"][2] == 0 and math.isnan(got["acc"][2])
    assert got["mean_iu"] == pytest.approx((5 / 11 + 8 / 11 + 0) / 3)
    assert got["mean_acc"] == pytest.approx((5 / 9 + 8 / 10) / 2)
    assert_scores_equal(got, loop_scores(hist.tolist()))


def test_all_void_image_gives_nan_without_warnings(recwarn):
    hist = metrics.fast_hist(np.full((4, 4), 255, np.uint8), np.zeros((4, 4), np.int64), 21)
    assert hist.sum() == 0
    got = metrics.scores(hist)
    assert all(math.isnan(got[k]) for k in metrics.METRICS)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_single_class():
    got = metrics.scores(np.array([[7]]))
    assert got == {**got, "pixel_acc": 1.0, "mean_acc": 1.0, "mean_iu": 1.0, "fwavacc": 1.0}
    label, pred = np.zeros((3, 3), np.uint8), np.ones((3, 3), np.int64)
    got = metrics.scores(metrics.fast_hist(label, pred, 2))
    assert got["pixel_acc"] == 0 and got["mean_iu"] == 0 and got["mean_acc"] == 0 and got["fwavacc"] == 0


def test_exclude_leaves_classes_out_of_the_means():
    hist = np.array([[5, 1, 0], [2, 8, 0], [0, 0, 4]])
    got = metrics.scores(hist, exclude=[2])
    assert got["mean_iu"] == pytest.approx((5 / 8 + 8 / 11) / 2)
    assert got["pixel_acc"] == pytest.approx(17 / 20)  # pixel accuracy keeps every pixel


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.lists(st.tuples(st.integers(0, 8), st.integers(0, 5)), max_size=60))
def test_accumulator_equals_one_histogram_of_everything(n, pixels):
    pixels = [(a if a < n else 255, b % n) for a, b in pixels]
    acc = metrics.Accumulator(n)
    for start in range(0, len(pixels), 7):
        chunk = pixels[start:start + 7]
        acc.update(np.array([a for a, _ in chunk], np.uint8), torch.tensor([b for _, b in chunk]))
    want = loop_hist([a for a, _ in pixels], [b for _, b in pixels], n)
    np.testing.assert_array_equal(acc.hist, want)
    assert_scores_equal(acc.scores(), loop_scores(want.tolist()))


def test_accumulator_state_round_trip():
    acc = metrics.Accumulator(3).update(np.array([0, 1, 2]), np.array([0, 2, 2]))
    again = metrics.Accumulator(3).load_state_dict(acc.state_dict())
    np.testing.assert_array_equal(again.hist, acc.hist)
    assert again.count == 1
    with pytest.raises(ValueError, match="shape"):
        metrics.Accumulator(4).load_state_dict(acc.state_dict())


def test_paper_release_scores():
    for net, miu in [("voc-fcn32s", 63.6), ("voc-fcn16s", 65.0), ("voc-fcn8s", 65.5), ("voc-fcn8s-atonce", 65.4),
                     ("voc-fcn-alexnet", 48.0)]:
        (rec,) = paper.find(net, "voc/seg11valid", source=paper.RELEASE)
        assert rec["metrics"] == {"mean_iu": miu}
    assert paper.lookup("voc-fcn8s", "voc", "seg12test")["mean_iu"] == 67.2


def test_paper_lookup_prefers_the_four_metric_row():
    got = paper.lookup("voc-fcn8s", "voc/seg11valid")
    assert got["mean_iu"] == 65.51 and got["pixel_acc"] == 91.23 and got["fwavacc"] == 84.55
    assert "pytorch-fcn" in got["source"]
    assert paper.lookup("voc-fcn8s", "voc/no-such-split") is None


def test_paper_cvpr_tables():
    t2 = {r["row"]: r["metrics"] for r in paper.find(table="Table 2")}
    assert t2["FCN-16s"] == {"pixel_acc": 90.0, "mean_acc": 75.7, "mean_iu": 62.4, "fwavacc": 83.0}
    assert paper.lookup("nyud-fcn16s-color-hha", "nyud/test") == {
        "pixel_acc": 65.4, "mean_acc": 46.1, "mean_iu": 34.0, "fwavacc": 49.5, "source": paper.CVPR,
        "table": "Table 4", "row": "FCN-16s RGB-HHA"}
    assert "mean_acc" not in paper.lookup("gupta-et-al", "nyud/test")
    assert paper.lookup("siftflow-fcn16s", "siftflow/test")["geo_acc"] == 94.3
    assert {r["table"] for r in paper.find(source=paper.CVPR)} == {
        f"Table {k}" for k in range(1, 6)}
    for r in paper.RECORDS:
        assert r["source"] and r["table"] and r["metrics"]
        assert set(r["metrics"]) <= {"pixel_acc", "mean_acc", "mean_iu", "fwavacc", "geo_acc"}
