"""Resumable downloads: bytes go to NAME.part beside the target, a later call continues with an HTTP
Range request, the checksum (when known) is checked over the whole file, and only then is the
file renamed into place; a corrupted download is deleted, never left under the final name."""
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from .atomic import fsync_dir
from .errors import CaffeError


class DownloadError(CaffeError, OSError):
    """A download that did not complete or did not check out: names the URL and what happened."""


def sha1_of(path, chunk=1 << 22):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _open(url, start, timeout):
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # the range starts at the end: the part is complete
            return None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url}: {getattr(e, 'reason', e)}") from None


def _expected_total(response, start):
    """The whole file's size from Content-Range (206) or Content-Length (200), or None."""
    match = re.match(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
    if response.status == 206:
        if not match or int(match.group(1)) != start:
            raise DownloadError(f"{response.url}: the server answered a range other than the one asked for")
        return int(match.group(2))
    length = response.headers.get("Content-Length")
    return int(length) if length is not None else None


def fetch(url, dest, sha1=None, timeout=60, chunk=1 << 20, progress=None):
    """Download `url` to `dest` (resuming DEST.part), check `sha1`, rename; returns dest.

    progress(done, total) is called after every chunk. A cut connection raises DownloadError and
    keeps the part for the next call; a checksum mismatch deletes it and raises."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    response = _open(url, start, timeout)
    if response is not None:
        with response:
            total = _expected_total(response, start)
            if response.status == 200:
                start = 0  # the server ignored the range: start over
            done = start
            with open(part, "ab" if start else "wb") as f:
                try:
                    while block := response.read(chunk):
                        f.write(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
                except (http.client.HTTPException, OSError) as e:
                    raise DownloadError(f"{url}: connection lost after {done} bytes ({type(e).__name__}); "
                                        f"run again to resume from {part}") from None
        if total is not None and done != total:
            raise DownloadError(f"{url}: got {done} of {total} bytes; run again to resume from {part}")
    if sha1 is not None:
        digest = sha1_of(part)
        if digest != sha1:
            part.unlink()
            raise DownloadError(f"{url}: sha1 {digest} is not the recorded {sha1}; the download was deleted")
    with open(part, "rb") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest
