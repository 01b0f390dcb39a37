"""Atomic file writes (snapshots, caffemodels, converted weights, JSON results): readers see the old file or the
complete new one, never a partial file, even if the writer is killed."""
import contextlib
import os
import shutil
import stat

from .errors import CaffeError

__all__ = ["atomic_write", "atomic_dir", "write_json", "check_not_source", "open_regular", "remove_stale",
           "recover_aside", "fsync_dir"]

TMP_SUFFIX = ".tmp"
ASIDE_SUFFIX = ".replaced"  # .NAME.replaced: folder NAME moved aside while atomic_dir replaces it


def check_not_source(out, sources):
    """Refuse to write `out` when it is one of `sources` (the same file by device and inode, so a
    hard link or another spelling of the path counts): writing would destroy the input."""
    try:
        target = os.stat(out)
    except OSError:
        return
    for src in sources:
        if src is None or not isinstance(src, (str, bytes, os.PathLike)):
            continue
        try:
            st = os.stat(src)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            raise CaffeError(f"{os.fspath(out)}: the output is the input {os.fspath(src)} (same file); "
                             "refusing to overwrite it, choose another output path")


def open_regular(path, error=CaffeError):
    """`open(path, 'rb')` for a regular file only: a FIFO, device or directory is refused with
    `error(message)` before it can block the reader (opened non-blocking, checked with fstat, then
    made blocking); a missing or unreadable file gives `error` too."""

    def opener(name, flags):
        try:
            fd = os.open(name, flags | getattr(os, "O_NONBLOCK", 0))
        except OSError as e:
            raise error(f"cannot open: {e.strerror or e}") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise error(f"not a regular file ({'a directory' if stat.S_ISDIR(mode) else 'a FIFO, socket or device'})")
        os.set_blocking(fd, True)
        return fd

    return open(path, "rb", opener=opener)


def _tmp_name(path):
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}{TMP_SUFFIX}")


def remove_stale(folder):
    """Remove the temporaries (`.NAME.PID.RANDOM.tmp`, files or folders) a killed writer left in `folder`;
    returns their paths."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(folder):
            if name.startswith(".") and name.endswith(TMP_SUFFIX):
                p = os.path.join(folder, name)
                _remove(p)
                removed.append(p)
    return removed


def fsync_dir(folder):
    """Make the renames in `folder` durable (best effort: some file systems refuse)."""
    with contextlib.suppress(OSError):  # make a rename durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path, sources=()):
    """Yields a binary file in the target's folder; on success it is fsynced and replaces `path`
    (os.replace), on any error it is removed and `path` is left as it was. `sources`: the files the
    content is made from; `path` may not be one of them (check_not_source)."""
    path = os.fspath(path)
    check_not_source(path, sources)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = _tmp_name(os.path.join(folder, os.path.basename(path)))
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
    fsync_dir(folder)


@contextlib.contextmanager
def atomic_dir(path):
    """Yields a fresh temporary folder beside `path`; on success its files are fsynced and the
    folder is renamed to `path` in one step (replacing an existing `path`: _replace_dir), so
    readers see no folder or a complete one. On error the temporary is removed."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _tmp_name(path)
    os.mkdir(tmp)
    try:
        yield tmp
        _fsync_files(tmp)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_files(folder):
    for name in os.listdir(folder):
        fd = os.open(os.path.join(folder, name), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(folder)


def _aside_name(path):
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}{ASIDE_SUFFIX}")


def _replace_dir(tmp, path):
    """Rename folder `tmp` to `path` with a complete folder of that name on disk at every step,
    in place or aside: an existing `path` is first renamed to .NAME.replaced (recover_aside puts
    it back when the writer is killed before the new one is in place) and removed only once the
    new one is there."""
    aside = _aside_name(path)
    if os.path.lexists(path):
        _remove(aside)  # an older replace's, left after its new folder was in place
        os.rename(path, aside)
    try:
        os.rename(tmp, path)
    except BaseException:
        if os.path.lexists(aside) and not os.path.lexists(path):
            os.rename(aside, path)
        raise
    fsync_dir(os.path.dirname(path))
    _remove(aside)


def _remove(path):
    """Remove a file or folder (a link as a file); nothing when there is none."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def recover_aside(folder):
    """Settle the folders a killed atomic_dir left moved aside in `folder` (.NAME.replaced): put
    back where NAME is missing (the replacement never arrived), removed where NAME is there.
    Returns the paths put back."""
    put_back = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(folder):
            if not (entry.startswith(".") and entry.endswith(ASIDE_SUFFIX)):
                continue
            aside, target = os.path.join(folder, entry), os.path.join(folder, entry[1:-len(ASIDE_SUFFIX)])
            if os.path.lexists(target):
                _remove(aside)
            else:
                os.rename(aside, target)
                put_back.append(target)
    if put_back:
        fsync_dir(folder)
    return put_back


def write_json(path, obj, **dumps_options):
    """`obj` as JSON (indent 1, NaN refused) written atomically to `path`."""
    import json

    with atomic_write(path) as f:
        f.write(json.dumps(obj, **{"indent": 1, "allow_nan": False, **dumps_options}).encode())
