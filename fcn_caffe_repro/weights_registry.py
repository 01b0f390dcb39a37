"""The release's weight files by name: where each was published, its checksum where a public source
records one, the net it fits, its classes and its published scores; identifying a file by its
checksum; the download cache that `--weights NAME` resolves through.

URLs: the release's `NET/caffemodel-url` files (shelhamer/fcn.berkeleyvision.org; nyud-fcn32s-color-d
has none, so it has no entry) and the classifiers its ilsvrc-nets/README.md links (VGG16: the VGG
team's Model Zoo gist; CaffeNet: BVLC's models/). A checksum is recorded only with its source;
`sha1=None` means no public record was found, and such a file can be fetched but not verified.
Sizes are not recorded: no public source gives them in bytes.
"""
import os
from dataclasses import dataclass
from pathlib import Path

from . import paper
from .data.release import RELEASE, family
from .download import sha1_of

BERKELEY = "http://dl.caffe.berkeleyvision.org/"
OPENCV_EXTRA = "opencv/opencv_extra testdata/dnn/download_models.py"
BVLC_CAFFENET = "BVLC/caffe models/bvlc_reference_caffenet/readme.md (sha1 front matter)"
BVLC_ALEXNET = "BVLC/caffe models/bvlc_alexnet/readme.md (sha1 front matter); also " + OPENCV_EXTRA
NO_RECORD = "no public record"


@dataclass(frozen=True)
class Weights:
    name: str                 # the file's stem as published
    url: str                  # as published
    net: str = None           # fcn_caffe_repro.nets registry name it loads into (None: not in the registry)
    phase: str = "deploy"     # the phase it was checked against (FCN weights fit train, val and deploy)
    sha1: str = None          # None: no public record
    sha1_source: str = NO_RECORD
    size: int = None          # bytes; None: not known
    classes: str = ""         # what the output means, when not the net family's class list
    notes: str = ""

    @property
    def filename(self):
        return self.name + ".caffemodel"

    def class_names(self):
        """The class names of the first output (from data/release.py for the FCN nets)."""
        if self.net and family(self.net) in RELEASE:
            return list(RELEASE[family(self.net)].classes)
        return []

    def scores(self):
        """The published records (fcn_caffe_repro.paper) of the net these weights belong to."""
        return paper.find(net=self.net) if self.net else []


def _fcn(net, name, **kw):
    return Weights(name, BERKELEY + name + ".caffemodel", net, **kw)


REGISTRY = {w.name: w for w in [
    _fcn("voc-fcn32s", "fcn32s-heavy-pascal"),
    _fcn("voc-fcn16s", "fcn16s-heavy-pascal"),
    _fcn("voc-fcn8s", "fcn8s-heavy-pascal", sha1="c449ea74dd7d83751d1357d6a8c323fcf4038962",
         sha1_source=OPENCV_EXTRA),
    _fcn("voc-fcn8s-atonce", "fcn8s-atonce-pascal"),
    _fcn("voc-fcn-alexnet", "fcn-alexnet-pascal"),
    _fcn("pascalcontext-fcn32s", "pascalcontext-fcn32s-heavy"),
    _fcn("pascalcontext-fcn16s", "pascalcontext-fcn16s-heavy"),
    _fcn("pascalcontext-fcn8s", "pascalcontext-fcn8s-heavy"),
    _fcn("nyud-fcn32s-color", "nyud-fcn32s-color-heavy"),
    _fcn("nyud-fcn32s-hha", "nyud-fcn32s-hha-heavy"),
    _fcn("nyud-fcn32s-color-hha", "nyud-fcn32s-color-hha-heavy"),
    _fcn("siftflow-fcn32s", "siftflow-fcn32s-heavy"),
    _fcn("siftflow-fcn16s", "siftflow-fcn16s-heavy"),
    _fcn("siftflow-fcn8s", "siftflow-fcn8s-heavy"),
    Weights("VGG_ILSVRC_16_layers", "http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/"
            "VGG_ILSVRC_16_layers.caffemodel", "vgg16", classes="ILSVRC 2012, 1000 classes",
            notes="the classifier FCN-32s and FCN-8s at once start from (V1 caffemodel)"),
    Weights("bvlc_reference_caffenet", BERKELEY + "bvlc_reference_caffenet.caffemodel",
            sha1="4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46", sha1_source=BVLC_CAFFENET,
            classes="ILSVRC 2012, 1000 classes", phase=None,
            notes="CaffeNet, the AlexNet variant the release names as FCN-AlexNet's base (not in the net registry)"),
    Weights("bvlc_alexnet", BERKELEY + "bvlc_alexnet.caffemodel",
            sha1="9116a64c0fbe4459d18f4bb6b56d647b63920377", sha1_source=BVLC_ALEXNET,
            classes="ILSVRC 2012, 1000 classes", phase=None, notes="AlexNet as published (not in the net registry)"),
]}


def get(name):
    """The entry of a release file by name, with or without .caffemodel."""
    key = name[:-len(".caffemodel")] if name.endswith(".caffemodel") else name
    try:
        return REGISTRY[key]
    except KeyError:
        raise KeyError(f"no release file named '{name}'; `fcn weights list` shows them") from None


def cache_dir():
    """Where fetched files live: $FCN_CACHE, else $XDG_CACHE_HOME/fcn_caffe_repro, else ~/.cache/fcn_caffe_repro."""
    if os.environ.get("FCN_CACHE"):
        return Path(os.environ["FCN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fcn_caffe_repro"


def cached_path(name, cache=None):
    return Path(cache or cache_dir()) / get(name).filename


def resolve(text, cache=None):
    """A --weights value as a path: an existing file as given; a release name (fcn weights list) as
    its file in the cache (FileNotFoundError naming the fetch command when it is not there yet);
    anything else as given, for the loader to report."""
    path = Path(text).expanduser()
    if path.is_file():
        return path
    try:
        entry = get(str(text))
    except KeyError:
        return path
    cached = cached_path(entry.name, cache)
    if not cached.is_file():
        raise FileNotFoundError(f"'{text}' is a release file not in the cache ({cached.parent}): "
                                f"run `fcn weights fetch {entry.name}` first")
    return cached


def identify(path):
    """(entry or None, the file's sha1): the release file whose recorded checksum it has."""
    digest = sha1_of(path)
    for entry in REGISTRY.values():
        if entry.sha1 == digest:
            return entry, digest
    return None, digest
