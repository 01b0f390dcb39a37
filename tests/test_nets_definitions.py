"""The Python net definitions equal the release's prototxts, parsed, and prototxt/ is current."""
import difflib
from pathlib import Path

import pytest
import torch

from conftest import CAFFE_REF, REFERENCE
from fcn_caffe_repro import nets
from fcn_caffe_repro.caffe import prototxt
from fcn_caffe_repro.caffe.prototxt import Message
from fcn_caffe_repro.caffe.spec import NetSpec
from fcn_caffe_repro.errors import NetError

ORIGINALS = REFERENCE / "prototxt"
COMMITTED = Path(__file__).resolve().parent.parent / "prototxt"
# (net, phase, file stem) for every net prototxt the release has.
ORIGINAL_FILES = [(name, phase, stem) for name in nets.FCN_NETS
                  for phase, stem in nets.phase_files(name).items()
                  if (ORIGINALS / name / f"{stem}.prototxt").is_file()]
# caffe-ref shrinks the class count (its README): 21 -> 5, 60 -> 6, 40 -> 5, 33 -> 5.
SHRUNK_CLASSES = {"voc": 5, "pascalcontext": 6, "nyud": 5, "siftflow": 5}
CAFFE_REF_NETS = sorted(p.name for p in (CAFFE_REF / "nets").iterdir() if p.is_dir())


def _sorted_text(msg):
    """The message printed with fields grouped by key (protobuf equality ignores that order)."""
    def canon(m):
        fields = sorted(m.fields, key=lambda kv: kv[0])
        return Message([(k, canon(v) if isinstance(v, Message) else v) for k, v in fields])
    return prototxt.dumps(canon(msg)).splitlines()


def assert_same_layers(ours, ref, what, skip=0):
    """Layer by layer equality, with a unified diff of the first differing layer."""
    assert [l.name for l in ours.layers] == [l.name for l in ref.layers], f"{what}: layer names"
    for a, b in zip(ours.layers[skip:], ref.layers[skip:]):
        if a.msg != b.msg:
            diff = "\n".join(difflib.unified_diff(_sorted_text(b.msg), _sorted_text(a.msg),
                                                  "original", "ours", lineterm=""))
            pytest.fail(f"{what}: layer '{a.name}' differs\n{diff}")


@pytest.mark.parametrize("name,phase,stem", ORIGINAL_FILES,
                         ids=[f"{n}-{s}" for n, _, s in ORIGINAL_FILES])
def test_definition_equals_original(name, phase, stem):
    ours = nets.net_spec(name, phase)
    ref = NetSpec.from_prototxt(str(ORIGINALS / name / f"{stem}.prototxt"))
    assert_same_layers(ours, ref, f"{name} {stem}")
    assert ours == ref  # the whole NetParameter, as protobuf compares it
    # and through our own printer and parser
    assert NetSpec.from_prototxt(ours.to_prototxt()) == ref


def test_every_original_is_covered():
    files = {(p.parent.name, p.stem) for p in ORIGINALS.glob("*/*.prototxt") if p.stem != "solver"}
    assert files == {(n, s) for n, _, s in ORIGINAL_FILES}
    assert len({n for n, _ in files}) == 15 == len(nets.FCN_NETS)


@pytest.mark.parametrize("name", nets.FCN_NETS)
def test_solver_equals_original(name):
    assert nets.solver_spec(name) == prototxt.load(str(ORIGINALS / name / "solver.prototxt"))


def test_voc_fcn8s_deploy_equals_original():
    ref = NetSpec.from_prototxt(str(ORIGINALS / "voc-fcn8s" / "deploy.prototxt"))
    ours = nets.net_spec("voc-fcn8s", "deploy")
    assert_same_layers(ours, ref, "voc-fcn8s deploy")
    assert ours == ref


@pytest.mark.parametrize("name", nets.FCN_NETS)
def test_deploy_is_val_with_input_and_without_dropout_and_loss(name):
    val, dep = nets.net_spec(name, "val"), nets.net_spec(name, "deploy")
    head = dep.layers[0]
    assert (head.name, head.type) == ("input", "Input")
    channels = {"data": 3, "color": 3, "hha": 3, "depth": 1}
    images = [t for t in val.layers[0].top if t in channels]
    assert head.top == images and images
    size = [256, 256] if name.startswith("siftflow") else [500, 500]
    shapes = [s.getall_int("dim") for s in head.params.getall("shape")]
    assert shapes == [[1, channels[t], *size] for t in images]
    kept = [l for l in val.layers[1:] if l.type not in ("Dropout", "SoftmaxWithLoss")]
    assert [l.msg for l in dep.layers[1:]] == [l.msg for l in kept]
    assert len(kept) < len(val.layers) - 1


def test_phase_aliases():
    for name in ("nyud-fcn32s-color", "siftflow-fcn8s", "voc-fcn32s"):
        assert nets.net_spec(name, "trainval") == nets.net_spec(name, "train")
        assert nets.net_spec(name, "test") == nets.net_spec(name, "val")
    assert nets.net_spec("voc-fcn8s", "train") != nets.net_spec("voc-fcn8s", "val")


@pytest.mark.parametrize("name", CAFFE_REF_NETS)
def test_width_divided_equals_caffe_ref(name):
    """caffe-ref nets: our net at width / 16 with the shrunk class count, data layer aside."""
    ref = NetSpec.from_prototxt(str(CAFFE_REF / "nets" / name / "net.prototxt"))
    ours = nets.net_spec(name, "val", num_classes=SHRUNK_CLASSES[name.split("-")[0]],
                         width_divisor=16)
    assert_same_layers(ours, ref, f"{name} width/16", skip=1)
    assert (ours.layers[0].type, ref.layers[0].type) == ("Python", "Input")
    assert ours.layers[0].top == ref.layers[0].top


def test_vgg16_classifier_equals_caffe_ref():
    ref = NetSpec.from_prototxt(str(CAFFE_REF / "v1-vgg16-transplant/vgg16/net.prototxt"))
    ours = nets.net_spec("vgg16", "deploy", width_divisor=16)
    assert_same_layers(ours, ref, "vgg16 width/16")
    assert ours == ref
    full = nets.net_spec("vgg16")
    widths = {l.name: l.params.get_int("num_output") for l in full.layers if l.params.has("num_output")}
    assert (widths["conv1_1"], widths["conv5_3"], widths["fc6"], widths["fc7"], widths["fc8"]) == (
        64, 512, 4096, 4096, 1000)


def test_num_classes_override():
    def outputs(spec):
        return {l.name: l.params.get_int("num_output") for l in spec.layers
                if l.type in ("Convolution", "Deconvolution") and l.name.startswith(("score", "up"))}
    voc = outputs(nets.net_spec("voc-fcn8s", num_classes=7))
    assert set(voc.values()) == {7} and len(voc) == 6
    sift = outputs(nets.net_spec("siftflow-fcn16s", num_classes=9))
    assert {v for k, v in sift.items() if "_geo" in k} == {3}  # geometric classes stay 3
    assert {v for k, v in sift.items() if "_sem" in k} == {9}
    default = outputs(nets.net_spec("pascalcontext-fcn32s"))
    assert set(default.values()) == {60}


def test_committed_prototxt_is_not_stale(tmp_path):
    written = nets.emit_all(tmp_path)
    fresh = {p.relative_to(tmp_path).as_posix() for p in written}
    committed = {p.relative_to(COMMITTED).as_posix() for p in COMMITTED.glob("*/*.prototxt")}
    assert fresh == committed, f"missing: {sorted(fresh - committed)}, extra: {sorted(committed - fresh)}"
    stale = [rel for rel in sorted(fresh)
             if (COMMITTED / rel).read_text() != (tmp_path / rel).read_text()]
    assert not stale, f"stale, run tools/make_prototxt.py: {stale}"
    assert nets.stale_files(COMMITTED) == []


def test_stale_files_reports_changes(tmp_path):
    nets.emit_all(tmp_path)
    (tmp_path / "voc-fcn8s" / "val.prototxt").write_text("layer {}\n")
    (tmp_path / "voc-fcn32s" / "deploy.prototxt").unlink()
    (tmp_path / "voc-fcn32s" / "old.prototxt").write_text("")
    assert sorted(nets.stale_files(tmp_path)) == [
        "voc-fcn32s/deploy.prototxt", "voc-fcn32s/old.prototxt", "voc-fcn8s/val.prototxt"]


def test_committed_files_equal_originals():
    """What a user reads in prototxt/ is the release's net, parsed."""
    for name, _, stem in ORIGINAL_FILES[:4]:
        ours = NetSpec.from_prototxt(str(COMMITTED / name / f"{stem}.prototxt"))
        assert ours == NetSpec.from_prototxt(str(ORIGINALS / name / f"{stem}.prototxt"))


def test_registry_errors():
    with pytest.raises(NetError, match=r"unknown net 'voc-fcn4s'.*voc-fcn8s.*siftflow-fcn8s.*vgg16"):
        nets.net_spec("voc-fcn4s")
    with pytest.raises(NetError, match=r"unknown phase 'testing'.*train, val, deploy"):
        nets.net_spec("voc-fcn8s", "testing")
    with pytest.raises(NetError, match="unknown net"):
        nets.solver_spec("fcn8s")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(NetError, match="num_classes"):
            nets.net_spec("voc-fcn32s", num_classes=bad)
    for bad in (0, 3, 128, 1.0):
        with pytest.raises(NetError, match="width_divisor"):
            nets.net_spec("voc-fcn32s", width_divisor=bad)
    with pytest.raises(NetError, match="width_divisor"):  # AlexNet's 96 is not a multiple of 64
        nets.net_spec("voc-fcn-alexnet", width_divisor=64)
    with pytest.raises(NetError, match="unknown net"):
        nets.build_net("nope")


def test_registry_names():
    assert nets.NETS == (
        "voc-fcn32s", "voc-fcn16s", "voc-fcn8s", "voc-fcn8s-atonce", "voc-fcn-alexnet",
        "pascalcontext-fcn32s", "pascalcontext-fcn16s", "pascalcontext-fcn8s",
        "nyud-fcn32s-color", "nyud-fcn32s-hha", "nyud-fcn32s-color-d", "nyud-fcn32s-color-hha",
        "siftflow-fcn32s", "siftflow-fcn16s", "siftflow-fcn8s", "vgg16")


def test_build_net_runs_and_crops_back_to_the_input():
    net = nets.build_net("voc-fcn16s", phase="deploy", num_classes=3, width_divisor=16)
    out = net(data=torch.randn(2, 3, 23, 41))
    assert list(out) == ["score"] and out["score"].shape == (2, 3, 23, 41)
    net = nets.build_net("nyud-fcn32s-color-d", phase="deploy", num_classes=4, width_divisor=32)
    out = net(color=torch.randn(1, 3, 17, 9), depth=torch.randn(1, 1, 17, 9))
    assert out["score"].shape == (1, 4, 17, 9)


def test_vgg16_trains_as_vgg_did():
    """The classifier's train phase: a Data layer of batch_size 224-pixel crops, one label each,
    a normalised SoftmaxWithLoss; val adds Accuracy; VGG's solver (lr 0.01, momentum 0.9, step)."""
    from fcn_caffe_repro.solver import solver_params

    train = nets.build_net("vgg16", "train", num_classes=5, width_divisor=16)
    assert train.inputs == {"data": (32, 3, 224, 224), "label": (32,)}
    assert train.loss_weights == {"loss": 1.0}
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    loss = train(data=x, label=torch.tensor([0.0, 4.0]))["loss"]
    assert loss.shape == () and loss.item() > 0
    val = nets.build_net("vgg16", "val", num_classes=5, width_divisor=16)
    assert set(val(data=x, label=torch.tensor([0.0, 4.0]))) == {"loss", "accuracy"}
    params, _ = solver_params(nets.solver_spec("vgg16"))
    assert (params["base_lr"], params["momentum"], params["lr_policy"]) == (0.01, 0.9, "step")
    assert [l.name for l in nets.net_spec("vgg16", "train").layers][-2:] == ["fc8", "loss"]
