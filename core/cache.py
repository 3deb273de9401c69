"""On-disk cache of style and content targets, so a style seen before costs no forward pass.

An entry is one .npz file of float32 arrays (Gram matrices or features per layer) under
`<cache_dir>/targets/`. Its name is a hash of everything the arrays depend on: what they are
(`kind`), the image's pixels, the size the image is resized to, the layer set, the style scale,
the model file's hash and this cache's format version. Writes go to a unique temporary file that
is then renamed onto the entry, so readers never see half a file and two processes writing the
same entry at once both succeed (the last rename wins; both wrote the same bytes). An entry that
cannot be read or has the wrong arrays is ignored, recomputed and rewritten. A cache folder that
cannot be written only costs speed, never a failed run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .files import cache_write, sha256_file
from .guides import pools_before
from .images import resize_array
from .paths import cache_dir

if TYPE_CHECKING:
    pass


CACHE_FORMAT = "2"  # bump when the arrays' meaning changes (e.g. Gram normalisation, resizing)
DISABLE_ENV = "STYLEFU_NO_TARGET_CACHE"  # "1": compute every target (for timing the engine)
# Past this size the least recently used entries are deleted (down to 80 %): a style entry is
# about 3 MB, content features at 512 px about 8 MB, so this keeps a few hundred.
MAX_BYTES = 1 << 30


def array_hash(array: np.ndarray) -> str:
    """sha256 of an image's float32 pixels and shape: the same picture gives the same key."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    digest = hashlib.sha256(repr(array.shape).encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


@lru_cache(maxsize=16)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)  # size and mtime only key the memo: a changed file is hashed anew


def model_hash(path: str | Path) -> str:
    """sha256 of the model file, computed once per process and file version (about 50 ms).

    The whole file, not only the weights' hash in its metadata: pooling and preprocessing change
    the features too.
    """
    stat = Path(path).stat()
    return _file_hash(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


class TargetCache:
    """Targets of one model, stored under `root` (default: `<user cache dir>/targets`)."""

    def __init__(self, model_path: str | Path, root: str | Path | None = None,
                 max_bytes: int = MAX_BYTES):
        self.model = model_hash(model_path)
        self.root = Path(root) if root else cache_dir() / "targets"
        self.max_bytes = max_bytes
        self.enabled = os.environ.get(DISABLE_ENV, "") not in ("1", "true", "yes")
        self.hits = self.misses = 0

    def key(self, kind: str, image_hash: str, size: Sequence[int], layers: Sequence[str],
            style_scale: float = 1.0) -> str:
        """The entry name for `kind` targets of an image resized to `size` (h, w)."""
        description = {"format": CACHE_FORMAT, "kind": kind, "image": image_hash,
                       "size": [int(s) for s in size], "layers": list(layers),
                       "style_scale": float(style_scale), "model": self.model}
        text = json.dumps(description, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def load(self, key: str, layers: Sequence[str],
             shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray] | None:
        """The entry's arrays, or None when it is missing, unreadable, incomplete, not finite
        float32, or (with `shapes`) of other shapes than expected: a damaged or foreign entry is a
        miss, recomputed and rewritten, never an error."""
        path = self.path(key)
        # os.path.isfile never raises (a folder the user may not read is simply a miss), and
        # skips a FIFO or device an adversary put there (np.load would block or read forever).
        if not self.enabled or not os.path.isfile(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in layers}
        except Exception:  # noqa: BLE001 - any unreadable entry (zip, npy, pickle refused) is a miss
            return None
        for name, a in arrays.items():
            if a.dtype != np.float32 or not np.isfinite(a).all():
                return None
            if shapes is not None and a.shape != tuple(shapes[name]):
                return None
        try:
            os.utime(path)  # mark as recently used for pruning
        except OSError:
            pass
        return arrays

    def store(self, key: str, arrays: dict[str, np.ndarray]) -> bool:
        """Write the entry atomically; False (and nothing left behind) when the folder is unusable."""
        if not self.enabled:
            return False
        path = self.path(key)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **{k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()})
        try:
            if os.path.islink(path) or (os.path.lexists(path) and not os.path.isfile(path)
                                        and not os.path.isdir(path)):
                path.unlink()  # a link, FIFO or device put in the cache: ours to replace
        except OSError:
            return False
        # Read-only cache, full disk, or (Windows) the entry is open in another process that
        # just wrote the same bytes: the run goes on without caching this entry.
        if not cache_write(path, write):
            return False
        self.prune()
        return True

    def prune(self) -> None:
        """Delete the least recently used entries while the cache is over `max_bytes`."""
        entries = []
        try:
            found = list(self.root.glob("*/*.npz"))
        except OSError:  # a sub-folder we may not read: nothing to prune there
            return
        for entry in found:
            try:
                stat = entry.stat()
            except OSError:  # deleted meanwhile by another process
                continue
            entries.append((stat.st_mtime, stat.st_size, entry))
        total = sum(size for _, size, _ in entries)
        if total <= self.max_bytes:
            return
        for _, size, entry in sorted(entries, key=lambda e: e[0]):
            if total <= 0.8 * self.max_bytes:
                break
            try:
                entry.unlink(missing_ok=True)
            except OSError:
                continue
            total -= size

    def fetch(self, key: str, layers: Sequence[str], compute: Callable[[], dict[str, np.ndarray]],
              shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
        """The cached arrays for `key` (of `shapes`, when given), else `compute()`'s, then stored."""
        arrays = self.load(key, layers, shapes)
        if arrays is not None:
            self.hits += 1
            return arrays
        self.misses += 1
        arrays = {name: np.asarray(a, np.float32) for name, a in compute().items()}
        self.store(key, arrays)
        return arrays


def gram_array(features: np.ndarray) -> np.ndarray:
    """losses.gram in numpy (no torch): F F^T / (C*H*W) of [N,C,H,W] float32 features."""
    n, c, h, w = features.shape
    flat = np.ascontiguousarray(features, np.float32).reshape(n, c, h * w)
    return (flat @ flat.transpose(0, 2, 1)) / np.float32(c * h * w)


def target_cache(model) -> TargetCache:
    """The cache for a StyleModel (or anything with an `engine.path`)."""
    return TargetCache(model.engine.path)


def cached_features(cache: TargetCache, engine, image: np.ndarray, size: tuple[int, int],
                    layers: Sequence[str]) -> dict[str, np.ndarray]:
    """Features {layer: [1,C,h,w]} of `image` ([H,W,3]) resized to `size`, by ONNX Runtime."""
    key = cache.key("features", array_hash(image), size, layers)
    shapes = {n: (1, _channels(n), size[0] >> pools_before(n), size[1] >> pools_before(n))
              for n in layers}
    return cache.fetch(key, layers, lambda: engine.image_features(resize_array(image, *size), layers),
                       shapes)


def cached_grams(cache: TargetCache, engine, image: np.ndarray, size: tuple[int, int],
                 layers: Sequence[str], style_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Gram matrices {layer: [1,C,C]} (float32, losses.gram) of `image` resized to `size`."""

    def compute():
        feats = engine.image_features(resize_array(image, *size), layers)
        return {n: gram_array(f) for n, f in feats.items()}

    key = cache.key("gram", array_hash(image), size, layers, style_scale)
    return cache.fetch(key, layers, compute, {n: (1, _channels(n), _channels(n)) for n in layers})


def _channels(layer: str) -> int:
    """Output channels of a VGG layer (relu3_1: 256): the same per block in VGG16 and VGG19."""
    return {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}[int(layer[4])]
