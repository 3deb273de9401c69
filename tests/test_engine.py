"""The ONNX Runtime feature engine: parity with torch, batches, provider, threads, quiet start."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from stylefu.core.engines.torch.vggnet import load_torch_model
from stylefu.core.errors import UserError
from stylefu.core.network.forward import (
    MAX_THREADS,
    FeatureEngine,
    cuda_is_usable,
    engine_threads,
    usable_cores,
)
from stylefu.core.network.vgg import EXPORTED_LAYERS

# ONNX Runtime and torch run the same float32 convolutions with different kernels: the largest
# difference per output, relative to that output's largest magnitude, stays far below this
# (measured about 1e-6 at relu5_1).
PARITY_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def engines(model_path):
    return FeatureEngine(model_path, device="cpu"), load_torch_model(model_path)


@pytest.mark.parametrize("n,h,w", [(1, 16, 16), (1, 37, 53), (1, 64, 48), (3, 40, 33)])
def test_onnx_runtime_matches_torch(engines, n, h, w):
    engine, net = engines
    batch = np.random.default_rng(h * w).random((n, 3, h, w), dtype=np.float32)
    ort_out = engine.features(batch)
    with torch.no_grad():
        torch_out = net(torch.from_numpy(batch))
    assert set(ort_out) == set(EXPORTED_LAYERS)
    for name in EXPORTED_LAYERS:
        a, b = ort_out[name], torch_out[name].numpy()
        assert a.shape == b.shape and a.shape[0] == n
        assert np.abs(b).max() > 0, name  # a dead layer would make the comparison empty
        assert np.abs(a - b).max() / np.abs(b).max() < PARITY_TOLERANCE, name


def test_a_batch_gives_each_image_its_own_features(engines):
    engine, _ = engines
    batch = np.random.default_rng(1).random((2, 3, 37, 53), dtype=np.float32)
    together = engine.features(batch, ("relu3_1", "relu4_2"))
    for i in range(2):
        alone = engine.features(batch[i:i + 1], ("relu3_1", "relu4_2"))
        for name, value in alone.items():
            np.testing.assert_allclose(together[name][i:i + 1], value, rtol=1e-5, atol=1e-6)
    # Requested layers only, in the order asked for.
    assert list(together) == ["relu3_1", "relu4_2"]


def test_calls_are_counted_and_bad_inputs_refused(engines):
    engine, _ = engines
    before = engine.calls
    engine.image_features(np.zeros((20, 30, 3), np.float32), ("relu1_1",))
    assert engine.calls == before + 1
    with pytest.raises(UserError, match="at least 16 px"):
        engine.features(np.zeros((1, 3, 15, 40), np.float32))
    with pytest.raises(ValueError):
        engine.features(np.zeros((3, 20, 20), np.float32))
    with pytest.raises(ValueError, match="unknown layers"):
        engine.features(np.zeros((1, 3, 20, 20), np.float32), ("conv9_9",))
    assert engine.calls == before + 1  # refused inputs never reach ONNX Runtime


def test_provider_is_the_one_that_really_runs(model_path):
    engine = FeatureEngine(model_path)
    assert engine.provider == engine.session.get_providers()[0]
    if cuda_is_usable():
        assert engine.provider == "CUDAExecutionProvider"
    else:
        assert engine.session.get_providers() == ["CPUExecutionProvider"]
        assert engine.describe() == (f"ONNX Runtime on CPUExecutionProvider with "
                                     f"{engine.threads} thread(s)")
    assert FeatureEngine(model_path, device="cpu").provider == "CPUExecutionProvider"


def test_thread_counts_suit_small_and_large_machines(monkeypatch, model_path):
    monkeypatch.delenv("STYLEFU_THREADS", raising=False)
    assert engine_threads(1) == 1
    assert engine_threads(2) == 2
    assert engine_threads(64) == MAX_THREADS == 16
    monkeypatch.setenv("STYLEFU_THREADS", "3")
    assert engine_threads(64) == 3
    assert FeatureEngine(model_path, device="cpu").threads == 3
    monkeypatch.setenv("STYLEFU_THREADS", "many")
    with pytest.raises(UserError, match="STYLEFU_THREADS"):
        engine_threads()


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux's CPU topology")
def test_cores_are_physical_and_within_the_affinity(monkeypatch, tmp_path):
    """A 2-core laptop with hyperthreading shows 4 CPUs: 2 threads, not 4 (nor 1 per CPU where
    the topology is hidden)."""
    for cpu, siblings in enumerate(("0,2", "1,3", "0,2", "1,3")):
        (tmp_path / f"cpu{cpu}" / "topology").mkdir(parents=True)
        (tmp_path / f"cpu{cpu}" / "topology" / "thread_siblings_list").write_text(siblings + "\n")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert usable_cores(str(tmp_path)) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2})  # one core's two threads
    assert usable_cores(str(tmp_path)) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert usable_cores(str(tmp_path / "none")) == 3


def test_engine_starts_without_log_noise(model_path):
    code = ("from stylefu.core.network.forward import FeatureEngine; import numpy as np;"
            f"e = FeatureEngine({str(model_path)!r});"
            "e.features(np.zeros((1, 3, 16, 16), np.float32))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_the_torch_networks_forward_passes_match_onnx_runtimes(engines, model_path, images,
                                                               tmp_path, monkeypatch):
    """Where the model runs on a GPU its own float32 network makes the targets and final figures
    (engines/torch/features.py): the same features and the same targets as ONNX Runtime's."""
    from stylefu.core.engines.torch.features import TorchFeatures
    from stylefu.core.engines.torch.model import StyleModel
    from stylefu.core.method.config import Config
    from stylefu.core.method.targets import compute_targets

    engine, net = engines
    mine = TorchFeatures(model_path, net, torch.device("cpu"))
    batch = np.random.default_rng(0).random((2, 3, 40, 33), dtype=np.float32)
    ours, theirs = mine.features(batch, ("relu2_1", "relu5_1")), engine.features(batch)
    for name in ours:
        assert np.abs(ours[name] - theirs[name]).max() / np.abs(theirs[name]).max() < PARITY_TOLERANCE
    with pytest.raises(UserError, match="at least"):
        mine.features(batch[..., :8, :])
    content, style = images
    config = Config(size=64)
    before = (mine.calls, engine.calls)

    def targets(e):
        monkeypatch.setenv("STYLEFU_CACHE", str(tmp_path / e.__class__.__name__))  # its own cache
        return compute_targets(StyleModel(model_path, net, e, torch.device("cpu")), content,
                               [style], (48, 64), config)
    a, b = targets(mine), targets(engine)
    assert torch.allclose(a.content, b.content, rtol=1e-4, atol=1e-6)
    for name in a.grams:
        assert torch.allclose(a.grams[name], b.grams[name], rtol=1e-3, atol=1e-8), name
    # Each computed its own (content features, style Grams).
    assert (mine.calls, engine.calls) == (before[0] + 2, before[1] + 2)


def test_models_are_kept_per_process_until_their_file_is_replaced(model_path, tmp_path):
    """Both engines load a model once per process (the kept preview worker's runs share it),
    and load it anew once an export has replaced the file."""
    import os
    import shutil

    from stylefu.core.engines.onnx.engine import load_onnx_model
    from stylefu.core.engines.torch.model import load_model

    path = tmp_path / "model.onnx"
    shutil.copy(model_path, path)
    for load in (load_model, load_onnx_model):
        first = load(path, "cpu")
        assert load(path, "cpu") is first, load.__name__
        shutil.copy(model_path, tmp_path / "new.onnx")
        os.replace(tmp_path / "new.onnx", path)  # as an export writes its file
        assert load(path, "cpu") is not first, load.__name__
