"""The FCN nets of the release, plus the VGG16 classifier, as Python definitions by name.

    net_spec("voc-fcn8s", phase="val")       # NetSpec equal to the release's val.prototxt
    build_net("voc-fcn8s", phase="deploy")   # CaffeNet
    solver_spec("voc-fcn8s")                 # SolverParameter Message

Phases are "train", "val" and "deploy"; NYUDv2 and SIFT Flow call theirs "trainval" and
"test", accepted as aliases. `num_classes` overrides the class count (SIFT Flow's geometric
head keeps 3); `width_divisor` divides every base-net width (the shrunken nets of
tests/fixtures/caffe-ref use 16).
"""
import ast
from dataclasses import dataclass
from functools import partial
from typing import Callable

from ..errors import NetError
from . import alexnet, nyud, pascalcontext, siftflow, voc, vgg
from .deploy import deploy, with_input
from .solvers import solver, vgg_solver

PHASES = ("train", "val", "deploy")
ALIASES = {"trainval": "train", "test": "val"}


@dataclass(frozen=True)
class Net:
    build: Callable        # build(split, num_classes=..., div=...) -> NetSpec
    num_classes: int
    splits: dict           # our phase -> the split the reference passes to its fcn()
    files: tuple = ("train", "val")  # the release's prototxt names for train and val
    size: tuple = (500, 500)         # deploy input height, width
    width_gcd: int = 64              # width_divisor must divide this (all widths are multiples)


_VOC = dict(splits=voc.SPLITS)
_PC = dict(splits=pascalcontext.SPLITS)
_NYUD = dict(num_classes=40, splits=nyud.SPLITS, files=("trainval", "test"))
_SF = dict(num_classes=33, splits=siftflow.SPLITS, files=("trainval", "test"), size=(256, 256))

REGISTRY = {
    "voc-fcn32s": Net(partial(voc.fcn, stride=32), 21, **_VOC),
    "voc-fcn16s": Net(partial(voc.fcn, stride=16, root="../../data"), 21, **_VOC),
    "voc-fcn8s": Net(partial(voc.fcn, stride=8), 21, **_VOC),
    "voc-fcn8s-atonce": Net(partial(voc.fcn, stride=8, scale_skips=True), 21, **_VOC),
    "voc-fcn-alexnet": Net(alexnet.fcn, 21, width_gcd=32, **_VOC),
    "pascalcontext-fcn32s": Net(partial(pascalcontext.fcn, stride=32), 60, **_PC),
    "pascalcontext-fcn16s": Net(partial(pascalcontext.fcn, stride=16), 60, **_PC),
    "pascalcontext-fcn8s": Net(partial(pascalcontext.fcn, stride=8), 60, **_PC),
    "nyud-fcn32s-color": Net(partial(nyud.fcn, tops=["color", "label"]), **_NYUD),
    "nyud-fcn32s-hha": Net(partial(nyud.fcn, tops=["hha", "label"]), **_NYUD),
    "nyud-fcn32s-color-d": Net(nyud.fcn_color_d, **_NYUD),
    "nyud-fcn32s-color-hha": Net(nyud.fcn_color_hha, **_NYUD),
    "siftflow-fcn32s": Net(partial(siftflow.fcn, stride=32), **_SF),
    "siftflow-fcn16s": Net(partial(siftflow.fcn, stride=16), **_SF),
    "siftflow-fcn8s": Net(partial(siftflow.fcn, stride=8), **_SF),
}
FCN_NETS = tuple(REGISTRY)
CLASSIFIER = "vgg16"  # the ILSVRC classifier: deploy as VGG released it, train/val as its train_val
NETS = FCN_NETS + (CLASSIFIER,)


def _phase(phase):
    phase = ALIASES.get(phase, phase)
    if phase not in PHASES:
        raise NetError(f"unknown phase {phase!r}; valid phases: {', '.join(PHASES)} "
                       f"(aliases: {', '.join(f'{a}={p}' for a, p in ALIASES.items())})")
    return phase


def _check_name(name):
    if name not in NETS:
        raise NetError(f"unknown net {name!r}; valid nets: {', '.join(NETS)}")


def _check_args(num_classes, width_divisor, width_gcd):
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                    or num_classes < 1):
        raise NetError(f"num_classes must be a positive integer, got {num_classes!r}")
    if (not isinstance(width_divisor, int) or isinstance(width_divisor, bool) or width_divisor < 1
            or width_gcd % width_divisor):
        raise NetError(f"width_divisor must be a positive integer dividing {width_gcd} "
                       f"(so that every base-net width divides), got {width_divisor!r}")


def net_spec(name, phase="val", num_classes=None, width_divisor=1):
    """The NetSpec of a registered net in a phase (train / val / deploy)."""
    _check_name(name)
    phase = _phase(phase)
    if name == CLASSIFIER:
        _check_args(num_classes, width_divisor, 64)
        spec = vgg.classifier(num_classes or 1000, width_divisor, phase)
        return with_input(spec, {"data": (1, 3, 224, 224)}) if phase == "deploy" else spec
    net = REGISTRY[name]
    _check_args(num_classes, width_divisor, net.width_gcd)
    split = net.splits["train" if phase == "train" else "val"]
    spec = net.build(split, num_classes=num_classes or net.num_classes, div=width_divisor)
    return deploy(spec, net.size) if phase == "deploy" else spec


def data_layer_params(name, phase="val"):
    """(tops, param_str as a dict) of the first layer of a registered net in a phase: the
    release's Python data layer (an empty dict for other data layers)."""
    layer = net_spec(name, phase).layers[0]
    raw = layer.params.get_str("param_str", "{}") if layer.type == "Python" else "{}"
    return layer.top, ast.literal_eval(raw)


def phase_files(name):
    """{phase: file stem} of the prototxts the release has (or we emit) for a net."""
    _check_name(name)
    if name == CLASSIFIER:
        return {"train": "train", "val": "val", "deploy": "deploy"}
    train, val = REGISTRY[name].files
    return {"train": train, "val": val, "deploy": "deploy"}


def solver_spec(name):
    """The release's SolverParameter for a net, as a Message."""
    _check_name(name)
    if name == CLASSIFIER:
        return vgg_solver("train.prototxt", "val.prototxt")
    train, val = REGISTRY[name].files
    return solver(name, f"{train}.prototxt", f"{val}.prototxt")


def build_net(name, phase="val", num_classes=None, width_divisor=1, weights=None, **kwargs):
    """A CaffeNet of a registered net; phase "train" runs in Caffe's TRAIN phase, others TEST."""
    from ..net import CaffeNet

    spec = net_spec(name, phase, num_classes, width_divisor)
    caffe_phase = "train" if _phase(phase) == "train" else "test"
    return CaffeNet(spec, phase=caffe_phase, weights=weights, **kwargs)


from .emit import emit_all, stale_files  # noqa: E402  (uses the registry above)

__all__ = ["NETS", "FCN_NETS", "PHASES", "net_spec", "solver_spec", "build_net", "phase_files", "data_layer_params",
           "emit_all", "stale_files"]
