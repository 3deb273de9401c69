"""Where stylefu keeps its files: one user cache folder, one default model path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

MODEL_ENV = "STYLEFU_MODEL"
CACHE_ENV = "STYLEFU_CACHE"
WEIGHTS_ENV = "STYLEFU_WEIGHTS_CACHE"
# One name whatever the network (a VGG16 too): the GIMP plug-ins' settings record this path at
# install, so a name per architecture would leave them on the old file after another export.
MODEL_FILENAME = "vgg19-features.onnx"


def cache_dir() -> Path:
    """The user cache folder ($STYLEFU_CACHE, else the platform's cache folder + /stylefu)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "stylefu"


def default_model_path() -> Path:
    """The model every command uses without flags: $STYLEFU_MODEL, else the cache's model."""
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV]).expanduser()
    return cache_dir() / MODEL_FILENAME


def model_file(path: str | Path | None = None) -> Path:
    """The artifact a command loads (default: default_model_path()), resolved; one UserError
    sentence when it is missing or not a file. Both engines' loaders use it."""
    from ..errors import UserError
    from ..network.artifact_meta import MAKE_MODEL
    from .files import path_kind

    path = Path(os.fsdecode(path)) if path else default_model_path()  # bytes too, as os takes
    kind = path_kind(path)
    if kind == "missing":
        raise UserError(f"No model at {path}; create one with {MAKE_MODEL} "
                        "(or pass --model PATH).")
    if kind != "file":
        raise UserError(f"The model {path} is {kind}, not a file; pass --model with the path of "
                        "a .onnx file made by `stylefu export`.")
    return path.resolve()


def weights_dir() -> Path:
    """Where downloaded weights are kept: $STYLEFU_WEIGHTS_CACHE, else the cache's weights folder.

    A separate variable lets CI keep the fetched weights between runs while each test run uses a
    fresh cache folder for everything else.
    """
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV]).expanduser()
    return cache_dir() / "weights"
