"""Shared fixtures: a random-weights artifact made once per session, small images, a clean cache."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache folder and no $STYLEFU_MODEL from the developer's shell."""
    monkeypatch.setenv("STYLEFU_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("STYLEFU_MODEL", raising=False)


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
    from stylefu.core.demo import demo_content, demo_style

    content = demo_content(48, 64)
    style = demo_style(64)
    return content, style


def rgb_noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)
