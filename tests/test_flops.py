"""FLOP counts from the NetSpec's shapes, checked against hand counts."""
import fcn_caffe_repro as fcr
from fcn_caffe_repro import surgery


def test_fcn8s_counts_by_hand():
    net = fcr.build_net("voc-fcn8s", phase="deploy")
    cost = fcr.flops(net, (1, 3, 500, 500))
    rows = {r.name: r for r in cost.rows}
    assert rows["conv1_1"].out_shape == (1, 64, 698, 698)  # the 100-pixel pad
    assert rows["conv1_1"].flops == 2 * 64 * 698 * 698 * 3 * 9
    n, c, h, w = rows["pool5"].out_shape
    assert rows["fc6"].flops == 2 * 4096 * (h - 6) * (w - 6) * 512 * 49
    assert rows["upscore8"].flops == 2 * 21 * 21 * 70 * 70 * 16 * 16 and rows["upscore8"].out_shape == (1, 21, 568, 568)
    assert rows["pool1"].flops == 0 and rows["pool1"].bytes == 4 * 64 * (698 * 698 + 349 * 349)
    assert 355e9 < cost.total < 370e9  # the "about 361 GFLOP"
    assert "| **total** |" in cost.table()


def test_depthwise_count_only_for_diagonal_weights():
    spec = fcr.nets.net_spec("voc-fcn32s", "deploy", width_divisor=16)
    net = fcr.CaffeNet(spec)
    with __import__("torch").no_grad():
        net.upscore.weight.normal_()
    assert fcr.flops(net, (1, 3, 64, 64)).rows[-2].flops_depthwise is None
    surgery.interp(net, ["upscore"])
    with __import__("torch").no_grad():
        net.upscore.weight.mul_(__import__("torch").eye(21)[:, :, None, None])
    row = [r for r in fcr.flops(net, (1, 3, 64, 64)).rows if r.name == "upscore"][0]
    assert row.flops_depthwise * 21 == row.flops
    assert fcr.flops(spec, {"data": (2, 3, 64, 64)}).total == 2 * fcr.flops(spec, (1, 3, 64, 64)).total
