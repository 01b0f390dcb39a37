"""weights_registry.py and download.py: the release's files by name, `fcn weights verify`, and
fetch against an HTTP server on loopback that cuts, corrupts or ignores ranges."""
import hashlib
import http.server
import shutil
import threading

import pytest

from conftest import CAFFE_REF
from fcn_caffe_repro import nets, paper
from fcn_caffe_repro import weights_registry as registry
from fcn_caffe_repro.cli import main as fcn
from fcn_caffe_repro.download import DownloadError, fetch

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA1 = hashlib.sha1(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /file with Range support; /cut sends half and drops the connection the
    first time; /corrupt flips a byte; /norange answers every request with the whole file (200)."""
    cuts = set()
    ranges = []

    def do_GET(self):  # noqa: N802  (http.server's naming)
        self.ranges.append(self.headers.get("Range", ""))
        body = bytearray(PAYLOAD)
        if self.path == "/corrupt":
            body[1000] ^= 0xFF
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes=") and self.path != "/norange":
            start = int(ranged[6:].split("-")[0])
        if start >= len(body):
            self.send_response(416)
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        chunk = body[start:]
        if self.path == "/cut" and "cut" not in self.cuts:
            self.cuts.add("cut")
            self.wfile.write(chunk[:len(chunk) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(chunk)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.cuts, Handler.ranges = set(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_registry_names_every_release_file():
    fcn_entries = [w for w in registry.REGISTRY.values() if w.url.startswith(registry.BERKELEY) and w.net]
    # the release's 14 caffemodel-url files: every FCN net but nyud-fcn32s-color-d, which has none
    assert sorted(w.net for w in fcn_entries) == sorted(n for n in nets.FCN_NETS if n != "nyud-fcn32s-color-d")
    assert registry.get("VGG_ILSVRC_16_layers").net == nets.CLASSIFIER
    for w in registry.REGISTRY.values():
        assert w.url.endswith("/" + w.filename)
        assert (w.sha1 is None) == (w.sha1_source == registry.NO_RECORD)
        assert w.sha1 is None or len(w.sha1) == 40 and int(w.sha1, 16) >= 0
    fcn8s = registry.get("fcn8s-heavy-pascal.caffemodel")
    assert fcn8s.sha1 == "c449ea74dd7d83751d1357d6a8c323fcf4038962" and "opencv_extra" in fcn8s.sha1_source
    assert len(fcn8s.class_names()) == 21 and fcn8s.class_names()[0] == "background"
    assert any(r["metrics"].get("mean_iu") == 65.5 and r["source"] == paper.RELEASE for r in fcn8s.scores())
    with pytest.raises(KeyError, match="fcn weights list"):
        registry.get("fcn9s")


def test_weights_list(capsys):
    assert fcn.main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "http://dl.caffe.berkeleyvision.org/fcn8s-heavy-pascal.caffemodel" in out
    assert "c449ea74dd7d83751d1357d6a8c323fcf4038962" in out and "no public record" in out


def test_verify_names_a_release_file_by_checksum(tmp_path, monkeypatch, capsys):
    genuine = tmp_path / "downloaded.bin"
    genuine.write_bytes(PAYLOAD)
    entry = registry.REGISTRY["fcn8s-heavy-pascal"]
    monkeypatch.setitem(registry.REGISTRY, entry.name, registry.Weights(entry.name, entry.url, entry.net, sha1=SHA1,
                                                                        sha1_source="this test"))
    assert fcn.main(["weights", "verify", str(genuine)]) == 0
    assert "fcn8s-heavy-pascal" in capsys.readouterr().out
    other = tmp_path / "fcn32s-heavy-pascal.caffemodel"
    other.write_bytes(PAYLOAD[:-1])
    assert fcn.main(["weights", "verify", str(other)]) == 1
    out = capsys.readouterr().out
    assert "unknown file" in out and "no public record" in out


def test_fetch_resumes_a_cut_download(server, tmp_path):
    dest = tmp_path / "w.caffemodel"
    with pytest.raises(DownloadError, match="run again to resume"):
        fetch(server + "/cut", dest, SHA1)
    part = tmp_path / "w.caffemodel.part"
    have = part.stat().st_size
    assert not dest.exists() and 0 < have < len(PAYLOAD)
    seen = []
    fetch(server + "/cut", dest, SHA1, progress=lambda done, total: seen.append((done, total)))
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert Handler.ranges == ["", f"bytes={have}-"]  # the second request asked for the rest only
    assert seen[0][0] > have and seen[-1] == (len(PAYLOAD), len(PAYLOAD))


def test_fetch_rejects_a_corrupted_download(server, tmp_path):
    dest = tmp_path / "w.caffemodel"
    with pytest.raises(DownloadError, match="is not the recorded"):
        fetch(server + "/corrupt", dest, SHA1)
    assert not dest.exists() and not (tmp_path / "w.caffemodel.part").exists()


def test_fetch_starts_over_when_the_server_ignores_ranges(server, tmp_path):
    dest = tmp_path / "w.caffemodel"
    (tmp_path / "w.caffemodel.part").write_bytes(b"garbage")
    fetch(server + "/norange", dest, SHA1)
    assert dest.read_bytes() == PAYLOAD


def test_fetch_command_and_weights_by_name(server, tmp_path, monkeypatch, capsys):
    """fcn weights fetch NAME fills the cache; --weights NAME then resolves through it (here the
    caffe-ref net's weights stand in for the release file)."""
    monkeypatch.setenv("FCN_CACHE", str(tmp_path / "cache"))
    assert fcn.main(["weights", "fetch", "fcn8s-heavy-pascal", "--url", server + "/file", "--quiet"]) == 1
    assert "is not the recorded" in capsys.readouterr().err  # the payload is not the release's file
    monkeypatch.setitem(registry.REGISTRY, "fcn32s-heavy-pascal",
                        registry.Weights("fcn32s-heavy-pascal", "unused", "voc-fcn32s"))
    assert fcn.main(["weights", "fetch", "fcn32s-heavy-pascal", "--url", server + "/file", "--quiet"]) == 0
    assert (tmp_path / "cache" / "fcn32s-heavy-pascal.caffemodel").read_bytes() == PAYLOAD
    assert "not checked: no public checksum" in capsys.readouterr().out
    shutil.copy(CAFFE_REF / "nets/voc-fcn8s/weights.caffemodel", tmp_path / "cache/fcn32s-heavy-pascal.caffemodel")
    assert registry.resolve("fcn32s-heavy-pascal") == tmp_path / "cache/fcn32s-heavy-pascal.caffemodel"
    out = tmp_path / "by_name.safetensors"
    assert fcn.main(["convert", "fcn32s-heavy-pascal", "--prototxt", str(CAFFE_REF / "nets/voc-fcn8s/net.prototxt"),
                     "-o", str(out), "--no-verify"]) == 0 and out.is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # a release name not fetched yet: the message names the command
        fcn.main(["convert", "fcn16s-heavy-pascal", "--net", "voc-fcn16s"])
    assert e.value.code == 2 and "fcn weights fetch fcn16s-heavy-pascal" in capsys.readouterr().err
