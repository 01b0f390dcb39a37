"""Published numbers, each tagged with its source and table, for the side-by-side tables of tools/eval.py.

Metrics are percentages as published, under the keys of ``metrics.scores``: ``pixel_acc``, ``mean_acc``,
``mean_iu``, ``fwavacc`` (plus ``geo_acc`` for SIFT Flow's geometric task). A record names a net by its
registry name where the release has that net (``voc-fcn8s``), else by a descriptive key
(``fcn-googlenet``, ``sds``); ``row`` keeps the paper's own label.

Sources: the reference release's README (seg11valid and seg12test scores of the released weights);
wkentaro/pytorch-fcn's README, rows "Original" (all four metrics of the same released weights on
seg11valid); CVPR 2015 Tables 1-5 (Long, Shelhamer, Darrell, arXiv:1411.4038).

PAMI 2016 (Shelhamer, Long, Darrell, arXiv:1605.06211) is left out on purpose: its tables
(PASCAL-Context, at-once vs. staged training, updated NYUDv2 / SIFT Flow rows) could not be checked
against the paper when this module was written, and a number here must be citable by table. Add them
with table and page once verified from the paper itself.
"""

RELEASE = "fcn.berkeleyvision.org README (reference release)"
PYTORCH_FCN = "wkentaro/pytorch-fcn README, rows 'Original' (released Caffe weights)"
CVPR = "Long, Shelhamer, Darrell, CVPR 2015 (arXiv:1411.4038)"

_KEYS = ("pixel_acc", "mean_acc", "mean_iu", "fwavacc")


def _rec(net, dataset, split, values, source, table, row=None, **extra):
    metrics = {k: v for k, v in zip(_KEYS, values) if v is not None} if isinstance(values, tuple) else values
    return {"net": net, "dataset": dataset, "split": split, "metrics": metrics, "source": source, "table": table,
            "row": row or net, **extra}


_SUBSET = "seg11val-subset"  # the CVPR paper's "subset of VOC2011 val" for Tables 1 and 2

RECORDS = [
    # Four metrics of the released weights on seg11valid.
    _rec("voc-fcn32s", "voc", "seg11valid", (90.49, 76.48, 63.63, 83.47), PYTORCH_FCN, "README", "FCN-32s"),
    _rec("voc-fcn16s", "voc", "seg11valid", (91.00, 78.07, 65.01, 84.27), PYTORCH_FCN, "README", "FCN-16s"),
    _rec("voc-fcn8s", "voc", "seg11valid", (91.23, 77.61, 65.51, 84.55), PYTORCH_FCN, "README", "FCN-8s"),
    _rec("voc-fcn8s-atonce", "voc", "seg11valid", (91.13, 78.50, 65.40, 84.44), PYTORCH_FCN, "README",
         "FCN-8s at-once"),
    # The release's own mean IU.
    _rec("voc-fcn32s", "voc", "seg11valid", {"mean_iu": 63.6}, RELEASE, "README", "FCN-32s PASCAL"),
    _rec("voc-fcn16s", "voc", "seg11valid", {"mean_iu": 65.0}, RELEASE, "README", "FCN-16s PASCAL"),
    _rec("voc-fcn8s", "voc", "seg11valid", {"mean_iu": 65.5}, RELEASE, "README", "FCN-8s PASCAL"),
    _rec("voc-fcn8s", "voc", "seg12test", {"mean_iu": 67.2}, RELEASE, "README", "FCN-8s PASCAL"),
    _rec("voc-fcn8s-atonce", "voc", "seg11valid", {"mean_iu": 65.4}, RELEASE, "README", "FCN-8s PASCAL at-once"),
    _rec("voc-fcn-alexnet", "voc", "seg11valid", {"mean_iu": 48.0}, RELEASE, "README", "FCN-AlexNet PASCAL"),
    # CVPR 2015 Table 1: classifiers made fully convolutional.
    _rec("voc-fcn-alexnet", "voc", _SUBSET, {"mean_iu": 39.8}, CVPR, "Table 1", "FCN-AlexNet",
         forward_ms=50, conv_layers=8, params="57M", rf_size=355, max_stride=32),
    _rec("voc-fcn32s", "voc", _SUBSET, {"mean_iu": 56.0}, CVPR, "Table 1", "FCN-VGG16",
         forward_ms=210, conv_layers=16, params="134M", rf_size=404, max_stride=32),
    _rec("fcn-googlenet", "voc", _SUBSET, {"mean_iu": 42.5}, CVPR, "Table 1", "FCN-GoogLeNet",
         forward_ms=59, conv_layers=22, params="6M", rf_size=907, max_stride=32),
    # CVPR 2015 Table 2: skip nets.
    _rec("voc-fcn32s-fixed", "voc", _SUBSET, (83.0, 59.7, 45.4, 72.0), CVPR, "Table 2", "FCN-32s-fixed"),
    _rec("voc-fcn32s", "voc", _SUBSET, (89.1, 73.3, 59.4, 81.4), CVPR, "Table 2", "FCN-32s"),
    _rec("voc-fcn16s", "voc", _SUBSET, (90.0, 75.7, 62.4, 83.0), CVPR, "Table 2", "FCN-16s"),
    _rec("voc-fcn8s", "voc", _SUBSET, (90.3, 75.9, 62.7, 83.2), CVPR, "Table 2", "FCN-8s"),
    # CVPR 2015 Table 3: PASCAL VOC test sets, mean IU.
    _rec("voc-fcn8s", "voc", "seg11test", {"mean_iu": 62.7}, CVPR, "Table 3", "FCN-8s", inference="~175 ms"),
    _rec("voc-fcn8s", "voc", "seg12test", {"mean_iu": 62.2}, CVPR, "Table 3", "FCN-8s", inference="~175 ms"),
    _rec("r-cnn", "voc", "seg11test", {"mean_iu": 47.9}, CVPR, "Table 3", "R-CNN"),
    _rec("sds", "voc", "seg11test", {"mean_iu": 52.6}, CVPR, "Table 3", "SDS", inference="~50 s"),
    _rec("sds", "voc", "seg12test", {"mean_iu": 51.6}, CVPR, "Table 3", "SDS", inference="~50 s"),
    # CVPR 2015 Table 4: NYUDv2, 40 classes, test.
    _rec("gupta-et-al", "nyud", "test", (60.3, None, 28.6, 47.0), CVPR, "Table 4", "Gupta et al."),
    _rec("nyud-fcn32s-color", "nyud", "test", (60.0, 42.2, 29.2, 43.9), CVPR, "Table 4", "FCN-32s RGB"),
    _rec("nyud-fcn32s-color-d", "nyud", "test", (61.5, 42.4, 30.5, 45.5), CVPR, "Table 4", "FCN-32s RGBD"),
    _rec("nyud-fcn32s-hha", "nyud", "test", (57.1, 35.2, 24.2, 40.4), CVPR, "Table 4", "FCN-32s HHA"),
    _rec("nyud-fcn32s-color-hha", "nyud", "test", (64.3, 44.9, 32.8, 48.0), CVPR, "Table 4", "FCN-32s RGB-HHA"),
    _rec("nyud-fcn16s-color-hha", "nyud", "test", (65.4, 46.1, 34.0, 49.5), CVPR, "Table 4", "FCN-16s RGB-HHA"),
    # CVPR 2015 Table 5: SIFT Flow, test; cow, desert and moon (absent from test) left out of the means.
    _rec("siftflow-fcn16s", "siftflow", "test",
         {"pixel_acc": 85.2, "mean_acc": 51.7, "mean_iu": 39.5, "fwavacc": 76.1, "geo_acc": 94.3},
         CVPR, "Table 5", "FCN-16s"),
]


def _split_key(dataset, split):
    if split is None and dataset is not None and "/" in dataset:
        dataset, split = dataset.split("/", 1)
    return dataset, split


def find(net=None, dataset=None, split=None, table=None, source=None):
    """All records matching every given field; ``dataset`` may be "dataset/split"."""
    dataset, split = _split_key(dataset, split)
    want = {"net": net, "dataset": dataset, "split": split, "table": table, "source": source}
    return [r for r in RECORDS if all(v is None or r[k] == v for k, v in want.items())]


def lookup(net, dataset, split=None, table=None):
    """{metric: value (percent), "source", "table", "row"} of the published row for a net on a split, or None.

    ``dataset`` is "voc/seg11valid" or "voc" with ``split``. Among several matches the record with the
    most metrics wins, then the earliest (the released weights before the CVPR paper's rows).
    """
    matches = find(net, dataset, split, table)
    if not matches:
        return None
    best = max(matches, key=lambda r: (len(r["metrics"]), -matches.index(r)))
    return {**best["metrics"], "source": best["source"], "table": best["table"], "row": best["row"]}
