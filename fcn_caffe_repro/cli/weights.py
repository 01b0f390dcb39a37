"""fcn weights: the release's weight files by name (fcn_caffe_repro/weights_registry.py).

    fcn weights list                          # every file: net, URL, checksum and its source, scores
    fcn weights verify ~/Downloads/fcn8s-heavy-pascal.caffemodel   # which release file is it?
    fcn weights fetch fcn8s-heavy-pascal      # download into the cache (resumable), checksum checked
    fcn eval --net voc-fcn8s --weights fcn8s-heavy-pascal ...      # then use it by name anywhere

The cache is $FCN_CACHE, else $XDG_CACHE_HOME/fcn_caffe_repro, else ~/.cache/fcn_caffe_repro.
`verify` exits 0 for a release file whose checksum matches the record, 1 for an unknown file.
"""
from pathlib import Path

from .. import paper
from .. import weights_registry as registry
from ..download import fetch
from .common import UsageError, parser, run_main

SOURCES = {paper.RELEASE: "the release", paper.PYTORCH_FCN: "pytorch-fcn", paper.CVPR: "CVPR 2015"}


def build_parser(prog=None):
    p = parser(prog, __doc__)
    p.add_argument("--cache-dir", type=Path, help="the download cache (default: see above)")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every release file")
    v = sub.add_parser("verify", help="name a file from its checksum, or say it is unknown")
    v.add_argument("file", type=Path)
    f = sub.add_parser("fetch", help="download a release file into the cache")
    f.add_argument("names", nargs="+", metavar="NAME")
    f.add_argument("--url", help="download from this mirror instead of the published URL")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def list_weights(cache):
    for w in registry.REGISTRY.values():
        scores = "; ".join(f"{r['dataset']}/{r['split']} mean IU {r['metrics']['mean_iu']} ({r['table']}, "
                           f"{SOURCES.get(r['source'], r['source'])})" for r in w.scores() if "mean_iu" in r["metrics"])
        classes = w.classes or f"{len(w.class_names())} classes ({', '.join(w.class_names()[:3])}, ...)"
        here = registry.cached_path(w.name, cache)
        print(f"{w.name}\n  net: {w.net or '-'} (phase {w.phase or '-'}); {classes}\n  url: {w.url}\n"
              f"  sha1: {w.sha1 or '-'} ({w.sha1_source}); size: {w.size or 'not recorded'}\n"
              f"  cached: {here if here.is_file() else 'no'}" + (f"\n  published: {scores}" if scores else "")
              + (f"\n  {w.notes}" if w.notes else ""))
    return 0


def verify(path):
    entry, digest = registry.identify(path)
    if entry is not None:
        print(f"{path}: {entry.name} (net {entry.net or '-'}), sha1 {digest} matches {entry.sha1_source}")
        return 0
    print(f"{path}: unknown file (sha1 {digest})")
    try:
        named = registry.get(path.name)
    except KeyError:
        return 1
    if named.sha1 is None:
        print(f"  its name is the release's {named.name}, whose checksum has no public record: it cannot be checked")
    else:
        print(f"  its name is the release's {named.name}, but the release file's sha1 is {named.sha1}")
    return 1


def fetch_all(names, cache, url, quiet):
    if url and len(names) > 1:
        raise UsageError("--url takes one NAME")
    entries = [registry.get(n) for n in names]
    for entry in entries:
        dest = registry.cached_path(entry.name, cache)
        if dest.is_file() and (entry.sha1 is None or registry.sha1_of(dest) == entry.sha1):
            print(f"{entry.name}: already in {dest}")
            continue
        from tqdm import tqdm

        bar = tqdm(desc=entry.name, unit="B", unit_scale=True, disable=quiet)

        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        try:
            fetch(url or entry.url, dest, entry.sha1, progress=progress)
        finally:
            bar.close()
        note = "sha1 checked" if entry.sha1 else "not checked: no public checksum"
        print(f"{entry.name}: {dest} ({note})")
    return 0


def run(args):
    if args.action == "list":
        return list_weights(args.cache_dir)
    if args.action == "verify":
        return verify(args.file)
    try:
        return fetch_all(args.names, args.cache_dir, args.url, args.quiet)
    except KeyError as e:
        raise UsageError(e.args[0]) from None


def main(argv=None, prog=None):
    return run_main(build_parser, run, argv, prog)
