"""The zoo's download path against a local HTTP server on 127.0.0.1 (never the internet):
cache, progress, sha256 verification, atomic rename, and loading tiny models through it."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gandissect import Trace
from models import zoo
from models.progan import ProGAN
from models.stylegan2 import StyleGAN2
from models.zoo import DownloadError, ZooEntry, download, load_zoo_model, resolve_weights


class _Server:
    """Serves ``files[name]`` at ``/name``; ``/cut/name`` promises all bytes but sends half."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                server.hits.append(self.path)
                cut = self.path.startswith("/cut/")
                name = self.path.removeprefix("/cut/").lstrip("/")
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if cut else data)
                if cut:
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server() -> Iterator[_Server]:
    s = _Server()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(autouse=True)
def _cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANDISSECT_CACHE", str(tmp_path / "envcache"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert zoo.default_cache_dir() == tmp_path / "envcache"
    monkeypatch.delenv("GANDISSECT_CACHE")
    assert zoo.default_cache_dir() == Path.home() / ".cache" / "gandissect"


def test_download_verifies_caches_and_shows_progress(server: _Server, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    data = bytes(range(256)) * 1000
    server.files["w-1234.pth"] = data
    cache = tmp_path / "cache"
    path = download(server.url + "w-1234.pth", cache, _sha(data), progress=True)
    assert path == cache / "w-1234.pth" and path.read_bytes() == data
    err = capsys.readouterr().err
    assert "w-1234.pth" in err and "100%" in err
    assert sorted(p.name for p in cache.iterdir()) == ["w-1234.pth"]
    # cached: no second request; a prefix of the digest is accepted too
    again = download(server.url + "w-1234.pth", cache, _sha(data)[:8], progress=False)
    assert again == path and len(server.hits) == 1
    assert capsys.readouterr().err == ""


def test_default_cache_dir_is_used(server: _Server, tmp_path: Path) -> None:
    server.files["a.bin"] = b"abc"
    path = download(server.url + "a.bin", None, None, progress=False)
    assert path == tmp_path / "envcache" / "a.bin"


def test_hash_mismatch_leaves_nothing(server: _Server, tmp_path: Path) -> None:
    server.files["w.pth"] = b"x" * 5000
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="sha256"):
        download(server.url + "w.pth", cache, "0" * 64, progress=False)
    assert list(cache.iterdir()) == []


def test_cut_download_leaves_nothing(server: _Server, tmp_path: Path) -> None:
    server.files["w.pth"] = b"y" * 100_000
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="cut short|failed"):
        download(server.url + "cut/w.pth", cache, None, progress=False)
    assert list(cache.iterdir()) == []


def test_interrupted_download_leaves_nothing(server: _Server, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import tqdm

    server.files["big.pth"] = b"z" * 300_000
    cache = tmp_path / "cache"

    def interrupt(self: object, n: float | None = 1) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tqdm.tqdm, "update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        download(server.url + "big.pth", cache, None, progress=True)
    assert list(cache.iterdir()) == []


def test_http_error_and_bad_arguments(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="404"):
        download(server.url + "missing.pth", tmp_path, None, progress=False)
    assert list(tmp_path.glob("*.part")) == [] and list(tmp_path.glob(".*")) == []
    with pytest.raises(ValueError, match="scheme"):
        download("ftp://127.0.0.1/x.pth", tmp_path)
    with pytest.raises(ValueError, match="hex"):
        download(server.url + "x.pth", tmp_path, sha256="not-a-hash")


def test_cached_file_with_wrong_hash_is_reported(tmp_path: Path) -> None:
    (tmp_path / "w.pth").write_bytes(b"old")
    with pytest.raises(DownloadError, match="delete it"):
        download("http://127.0.0.1:9/w.pth", tmp_path, _sha(b"new"), progress=False)


def test_zoo_entries_are_consistent() -> None:
    assert len(zoo.ZOO) >= 10
    for name, e in zoo.ZOO.items():
        assert e.name == name and e.family in zoo.FAMILIES
        assert e.url.startswith("http") and e.filename.endswith((".pth", ".pt"))
        assert e.sha256 is None or len(e.sha256) >= 8
        assert e.licence and e.layers
    assert zoo.ZOO["progan-church"].layers == tuple(f"layer{i}" for i in range(1, 15))
    assert zoo.ZOO["progan-celebhq"].layers[-1] == "layer18"
    assert zoo.ZOO["stylegan2-church"].layers[0] == "conv1"
    assert zoo.ZOO["stylegan2-church"].layers[-1] == "convs.11"
    assert zoo.ZOO["stylegan2-faces"].layers[-1] == "convs.15"


def test_resolve_weights_path_and_unknown(tmp_path: Path) -> None:
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    assert resolve_weights(str(f)) == f
    with pytest.raises(FileNotFoundError, match="progan-church"):
        resolve_weights("no-such-model")


def _tiny_progan_bytes(tmp_path: Path) -> tuple[ProGAN, bytes]:
    g = ProGAN([16, 8, 8, 4, 4], seed=3)  # 32x32, layer1..layer8
    torch.save(g.state_dict(), tmp_path / "p.pth")
    return g, (tmp_path / "p.pth").read_bytes()


def test_load_zoo_model_downloads_tiny_progan(server: _Server, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ref, data = _tiny_progan_bytes(tmp_path)
    server.files["proggan_tiny-abcd.pth"] = data
    entry = ZooEntry("progan-tiny", "progan", 32, server.url + "proggan_tiny-abcd.pth",
                     _sha(data)[:8], "test only", zoo.progan_layers(32))
    monkeypatch.setitem(zoo.ZOO, entry.name, entry)
    assert not zoo.is_cached("progan-tiny")
    gen = load_zoo_model("progan-tiny", "cpu", progress=False)
    assert zoo.is_cached("progan-tiny")
    z = gen.sample_latents(2, seed=7)
    with Trace(gen, "layer4") as tr:
        x = gen(z)
    assert x.shape == (2, 3, 32, 32) and tr["layer4"].shape == (2, 8, 8, 8)
    assert torch.equal(x, ref(z))


def test_zoo_rejects_checkpoint_of_other_size(server: _Server, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _, data = _tiny_progan_bytes(tmp_path)
    server.files["p.pth"] = data
    entry = ZooEntry("progan-x", "progan", 256, server.url + "p.pth", None, "test",
                     zoo.progan_layers(256))
    monkeypatch.setitem(zoo.ZOO, entry.name, entry)
    with pytest.raises(ValueError, match="256px"):
        load_zoo_model("progan-x", progress=False)


def test_load_zoo_model_stylegan2_safetensors_path(tmp_path: Path) -> None:
    g = StyleGAN2(16, 8, 2, [8, 4, 4], seed=2)
    save_file(g.state_dict(), str(tmp_path / "g.safetensors"))
    gen = load_zoo_model("stylegan2", path=tmp_path / "g.safetensors")
    z = gen.sample_latents(2, seed=1)
    assert torch.equal(gen(z), g(z)) and gen.layer_names == ["conv1", "convs.0", "convs.1",
                                                              "convs.2", "convs.3"]


def test_load_zoo_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown zoo model"):
        load_zoo_model("nope")
    with pytest.raises(ValueError, match="needs path"):
        load_zoo_model("progan")
    g = StyleGAN2(16, 8, 2, [8, 4, 4])
    torch.save({"g_ema": g.state_dict()}, tmp_path / "sg.pt")
    with pytest.raises(ValueError, match="not tensors"):
        load_zoo_model("progan", path=tmp_path / "sg.pt")
    torch.save(g.state_dict(), tmp_path / "flat.pt")
    with pytest.raises(ValueError, match="not a GAN Dissection ProGAN"):
        load_zoo_model("progan", path=tmp_path / "flat.pt")
    # a key/shape mismatch names the file it came from
    sd = {k: v for k, v in g.state_dict().items() if k != "to_rgbs.0.bias"}
    torch.save(sd, tmp_path / "cut.pt")
    with pytest.raises(ValueError, match=r"cut\.pt.*missing keys: to_rgbs\.0\.bias"):
        load_zoo_model("stylegan2", path=tmp_path / "cut.pt")


def test_cli_zoo_lists_and_downloads(server: _Server, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from gandissect.cli import main

    data = b"weights" * 100
    server.files["w-x.pth"] = data
    entry = ZooEntry("progan-cli", "progan", 32, server.url + "w-x.pth", _sha(data), "test",
                     zoo.progan_layers(32))
    monkeypatch.setitem(zoo.ZOO, entry.name, entry)
    cache = tmp_path / "c"
    assert main(["zoo", "--cache-dir", str(cache)]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("progan-cli")][0]
    assert line.split()[1:4] == ["progan", "32", "no"]
    assert main(["zoo", "--cache-dir", str(cache), "--download", "progan-cli", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "w-x.pth")
    assert main(["zoo", "--cache-dir", str(cache), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["progan-cli"]["cached"] is True and rows["progan-church"]["cached"] is False
    assert main(["zoo", "--download", "nope"]) == 2
