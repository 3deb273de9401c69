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

import numpy as np

from ..network.vgg import layer_masks, pools_before
from .files import cache_write, sha256_file
from .images import resize_array
from .paths import cache_dir

CACHE_FORMAT = "2"  # bump when the arrays' meaning changes (e.g. Gram normalisation, resizing)
DISABLE_ENV = "STYLEFU_NO_TARGET_CACHE"  # "1": compute every target (for timing the engine)
# The cache's parts made from other files, which pruning may delete (never the model, the
# downloaded weights or torch's compile cache): target entries, torch copies of the weights
# (about 52 MB per model file) and the torch-free engine's gradient graphs (about 104 MB).
PARTS = {"targets": "*/*.npz", "torch-weights": "*.pt", "gradient": "*.onnx"}
LIMIT_ENV = "STYLEFU_CACHE_MAX_MB"  # the limit below, in MB
# Past this size the least recently used files of PARTS are deleted (down to 80 %): a style entry
# is about 3 MB, content features at 512 px about 8 MB, a model's torch copy and graph 156 MB.
MAX_BYTES = 2_000_000_000


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


def limit_problem() -> str | None:
    """Why $STYLEFU_CACHE_MAX_MB is ignored (the built-in limit used instead), or None: a value
    that is no number of megabytes, NaN or negative. "inf" is no limit."""
    text = os.environ.get(LIMIT_ENV)
    try:
        mb = float(text) if text is not None else 0.0
    except ValueError:
        mb = float("nan")
    if mb >= 0:
        return None
    return f"${LIMIT_ENV}={text!r} is not a number of megabytes (0 or more): ignored"


NO_LIMIT_BYTES = 10 ** 18  # 1e12 MB, what "inf" is: no limit


def limit_bytes(mb: float) -> int:
    """A limit in megabytes (inf: none) as bytes, at most NO_LIMIT_BYTES."""
    return int(min(mb, NO_LIMIT_BYTES / 1e6) * 1e6)


def limit_mb(limit: int) -> float | None:
    """A limit in bytes as the megabytes a user reads; None for no limit."""
    return None if limit >= NO_LIMIT_BYTES else round(limit / 1e6, 1)


def cache_limit() -> int:
    """The cache's size limit in bytes: $STYLEFU_CACHE_MAX_MB ("inf": none), else MAX_BYTES."""
    if LIMIT_ENV not in os.environ or limit_problem():
        return MAX_BYTES
    return limit_bytes(float(os.environ[LIMIT_ENV]))


def cache_entries(root: str | Path | None = None,
                  parts: dict[str, str] = PARTS) -> list[tuple[float, int, Path]]:
    """(last use, size, path) of every file of `parts` (folder: glob pattern) of the cache at
    `root` (default: the user cache); a part or file that cannot be read is left out."""
    root = Path(root) if root else cache_dir()
    entries = []
    for part, pattern in parts.items():
        try:
            found = list((root / part).glob(pattern))
        except OSError:  # a sub-folder we may not read: nothing to prune there
            continue
        for path in found:
            try:
                stat = path.lstat()
            except OSError:  # deleted meanwhile by another process
                continue
            if not path.name.endswith(".tmp"):  # a write in flight is its writer's
                entries.append((stat.st_mtime, stat.st_size, path))
    return entries


def prune_entries(entries: Sequence[tuple[float, int, Path]], max_bytes: int,
                  down_to: float = 0.8) -> tuple[int, int]:
    """Over `max_bytes` in all, delete the least recently used `entries` until `down_to` of it
    is left; returns (files removed, bytes freed)."""
    total = sum(size for _, size, _ in entries)
    removed = freed = 0
    if total <= max_bytes:
        return removed, freed
    for _, size, path in sorted(entries, key=lambda e: e[0]):
        if total - freed <= down_to * max_bytes:
            break
        try:
            path.unlink()
        except OSError:  # deleted meanwhile, or not ours to delete
            continue
        removed, freed = removed + 1, freed + size
    return removed, freed


def prune_cache(max_bytes: int | None = None, root: str | Path | None = None,
                down_to: float = 0.8, keep: Path | None = None) -> tuple[int, int]:
    """Bound the cache at `root` (default: the user cache) to `max_bytes` (default:
    cache_limit()), least recently used files first, never `keep` (a file about to be opened);
    returns (files removed, bytes freed)."""
    entries = [e for e in cache_entries(root) if e[2] != keep]
    return prune_entries(entries, cache_limit() if max_bytes is None else max_bytes, down_to)


def touch(path: str | Path) -> None:
    """Mark a cache file as just used (pruning deletes the least recently used first)."""
    try:
        os.utime(path)
    except OSError:  # a read-only cache: it only costs the order of pruning
        pass


class TargetCache:
    """Targets of one model (the file at `model_path`, or the one whose sha256 is `model_sha256`),
    stored under `root` (default: `<user cache dir>/targets`).

    `max_bytes`: None bounds the whole user cache (prune_cache); a number bounds this root's
    entries alone (a cache of one's own)."""

    def __init__(self, model_path: str | Path, root: str | Path | None = None,
                 max_bytes: int | None = None, model_sha256: str | None = None):
        self.model = model_sha256 or model_hash(model_path)
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
        touch(path)
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
        """Delete the least recently used entries while the cache is over its limit."""
        if self.max_bytes is None:
            prune_cache()
        else:
            prune_entries(cache_entries(self.root, {".": PARTS["targets"]}), self.max_bytes)

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


def gram_array(features: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """losses.gram in numpy (no torch): F F^T / (C*H*W) of [N,C,H,W] float32 features; with
    [N,1,H,W] `weights`, positions weighted and divided by their total instead of H*W."""
    n, c, h, w = features.shape
    flat = np.ascontiguousarray(features, np.float32).reshape(n, c, h * w)
    if weights is None:
        return (flat @ flat.transpose(0, 2, 1)) / np.float32(c * h * w)
    wv = np.asarray(weights, np.float32).reshape(n, 1, h * w)
    return ((flat * wv) @ flat.transpose(0, 2, 1)) / np.float32(c * max(float(wv.sum()), 1e-8))


def target_cache(model) -> TargetCache:
    """The cache for a StyleModel (or anything with an `engine.path`)."""
    # The loaded file's hash, not the path's now: an export may have replaced the file since.
    return TargetCache(model.engine.path, model_sha256=getattr(model.engine, "sha256", None))


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
    """grams_of_image through the cache."""
    key = cache.key("gram", array_hash(image), size, layers, style_scale)
    return cache.fetch(key, layers, lambda: grams_of_image(engine, image, size, layers),
                       {n: (1, _channels(n), _channels(n)) for n in layers})


def grams_of_image(engine, image: np.ndarray, size: tuple[int, int], layers: Sequence[str]
                   ) -> dict[str, np.ndarray]:
    """Gram matrices {layer: [1,C,C]} (float32, losses.gram) of `image` resized to `size`; an
    [H,W,4] image's fourth channel weighs its pixels (an alpha: guided Grams)."""
    resized = resize_array(image, *size)
    feats = engine.image_features(np.ascontiguousarray(resized[..., :3]), layers)
    weights = layer_masks(resized[None, None, ..., 3], layers) if resized.shape[2] == 4 else {}
    return {n: gram_array(f, weights.get(n)) for n, f in feats.items()}


def _channels(layer: str) -> int:
    """Output channels of a VGG layer (relu3_1: 256): the same per block in VGG16 and VGG19."""
    return {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}[int(layer[4])]
