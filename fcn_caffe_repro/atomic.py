"""Atomic file writes (snapshots, caffemodels, converted weights, JSON results): readers see the old file or the
complete new one, never a partial file, even if the writer is killed."""
import contextlib
import os

__all__ = ["atomic_write", "write_json"]


@contextlib.contextmanager
def atomic_write(path):
    """Yields a binary file in the target's folder; on success it is fsynced and replaces `path`
    (os.replace), on any error it is removed and `path` is left as it was."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path, obj, **dumps_options):
    """`obj` as JSON (indent 1, NaN refused) written atomically to `path`."""
    import json

    with atomic_write(path) as f:
        f.write(json.dumps(obj, **{"indent": 1, "allow_nan": False, **dumps_options}).encode())
