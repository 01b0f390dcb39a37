"""prototxt/NET/*.prototxt from the Python definitions, and the check that they are current."""
from pathlib import Path

from ..caffe import prototxt


def rendered():
    """{relative path: text} of every file prototxt/ should hold."""
    from . import NETS, net_spec, phase_files, solver_spec, CLASSIFIER

    files = {}
    for name in NETS:
        for phase, stem in phase_files(name).items():
            files[f"{name}/{stem}.prototxt"] = net_spec(name, phase).to_prototxt()
        if name != CLASSIFIER:
            files[f"{name}/solver.prototxt"] = prototxt.dumps(solver_spec(name))
    return files


def emit_all(directory):
    """Write every net's prototxts under directory; returns the paths written."""
    written = []
    for rel, text in rendered().items():
        path = Path(directory) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def stale_files(directory):
    """Relative paths under directory that are missing, differ from what we would emit, or
    are prototxts we would not emit at all."""
    root, files = Path(directory), rendered()
    stale = [rel for rel, text in files.items()
             if not (root / rel).is_file() or (root / rel).read_text() != text]
    extra = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.prototxt"))
    return stale + [rel for rel in extra if rel not in files]
