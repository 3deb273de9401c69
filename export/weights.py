"""VGG19 weights from a source: official download, Caffe conversion, local file, or seeded random.

Every source ends as a dict `conv1_1.weight -> float32 array`, plus a label and a sha256 that the
artifact's metadata records.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stylefu.core.errors import UserError
from stylefu.core.files import sha256_file
from stylefu.core.paths import cache_dir
from stylefu.core.vgg import CONVS, TORCHVISION_INDEX


@dataclass(frozen=True)
class RemoteWeights:
    """A published checkpoint: its URL carries the first hex digits of its sha256 (torch hub's rule)."""

    url: str
    preprocessing: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str:
        return self.filename.rsplit("-", 1)[-1].split(".")[0]


REMOTE = {
    "torchvision": RemoteWeights("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
                                 "torchvision"),
    "caffe": RemoteWeights("https://web.eecs.umich.edu/~justincj/models/vgg19-d01eb7cb.pth",
                           "caffe"),
}


@dataclass
class Weights:
    """Convolution weights ready for export, with where they came from."""

    tensors: dict[str, np.ndarray]
    source: str
    sha256: str
    preprocessing: str


def download(url: str, dest: Path, sha256_prefix: str, timeout: float = 30.0,
             progress: bool = True) -> Path:
    """Download `url` to `dest` once: resumable (a `.part` file and an HTTP Range request),
    verified against `sha256_prefix`, renamed into place only when complete and correct."""
    if dest.is_file() and sha256_file(dest).startswith(sha256_prefix):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = have and response.status == 206
            total = int(response.headers.get("Content-Length") or 0) + (have if resumed else 0)
            done = have if resumed else 0
            with open(part, "ab" if resumed else "wb") as out:
                while block := response.read(1 << 16):
                    out.write(block)
                    done += len(block)
                    if progress:
                        _progress_bar(dest.name, done, total)
            if total and done < total:  # the server closed the connection early
                raise ConnectionError(f"transfer stopped at {done} of {total} bytes")
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # range past the end: the part file is complete already
            pass
        else:
            raise UserError(f"Downloading {url} failed (HTTP {exc.code}); check the address "
                            "or pass a local file with --weights PATH.") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"Downloading {url} failed ({reason}); run again to resume, or pass "
                        "a local file with --weights PATH.") from None
    finally:
        if progress:
            sys.stderr.write("\n")
    digest = sha256_file(part)
    if not digest.startswith(sha256_prefix):
        part.unlink()
        raise UserError(f"The download of {url} is corrupt (sha256 {digest[:12]}..., expected "
                        f"{sha256_prefix}...); it was deleted, run again to retry.")
    os.replace(part, dest)
    return dest


def _progress_bar(name: str, done: int, total: int) -> None:
    if total:
        filled = int(30 * done / total)
        sys.stderr.write(f"\r{name} [{'#' * filled}{'.' * (30 - filled)}] "
                         f"{done / 1e6:.1f}/{total / 1e6:.1f} MB")
    else:
        sys.stderr.write(f"\r{name} {done / 1e6:.1f} MB")
    sys.stderr.flush()


def load_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """Read a `.pth` (never unpickling code) or `.safetensors` file into numpy arrays."""
    import torch

    if not path.is_file():
        raise UserError(f"Weights file {path} does not exist.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file
            return dict(load_file(str(path)))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise UserError("Reading .safetensors needs the safetensors package: "
                        "pip install safetensors.") from None
    except Exception as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise UserError(f"{path} contains pickled code, which stylefu refuses to run; "
                            "use a checkpoint that holds only tensors.") from None
        raise UserError(f"{path} is not a readable checkpoint (truncated or wrong format).") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a state dict of tensors.")
    return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}


def select_convs(state: dict[str, np.ndarray], origin: str) -> dict[str, np.ndarray]:
    """Pick VGG19's 13 feature convolutions (torchvision key names) and check their shapes."""
    tensors = {}
    for name, cin, cout in CONVS:
        index = TORCHVISION_INDEX[name]
        for part, shape in (("weight", (cout, cin, 3, 3)), ("bias", (cout,))):
            key = f"features.{index}.{part}"
            if key not in state:
                raise UserError(f"{origin} has no '{key}' ({name}); it is not a VGG19 checkpoint "
                                "with torchvision key names.")
            array = np.asarray(state[key], dtype=np.float32)
            if array.shape != shape:
                raise UserError(f"{origin}: '{key}' has shape {tuple(array.shape)}, "
                                f"expected {shape}; it is not VGG19.")
            tensors[f"{name}.{part}"] = array
    return tensors


def random_weights(seed: int) -> dict[str, np.ndarray]:
    """Seeded Kaiming-normal weights (fan-out, ReLU gain) and zero biases, as torchvision inits."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, cin, cout in CONVS:
        std = np.sqrt(2.0 / (cout * 9))
        tensors[f"{name}.weight"] = (rng.standard_normal((cout, cin, 3, 3)) * std).astype(np.float32)
        tensors[f"{name}.bias"] = np.zeros(cout, np.float32)
    return tensors


def get_weights(source: str, seed: int = 0, preprocessing: str | None = None,
                timeout: float = 30.0, progress: bool = True) -> Weights:
    """Resolve a `--weights` value: 'torchvision', 'caffe', 'random' or a local file path."""
    if source == "random":
        tensors = random_weights(seed)
        digest = hashlib.sha256(b"".join(t.tobytes() for t in tensors.values())).hexdigest()
        return Weights(tensors, f"random (seed {seed})", digest, preprocessing or "torchvision")
    if source in REMOTE:
        remote = REMOTE[source]
        path = download(remote.url, cache_dir() / "weights" / remote.filename,
                        remote.sha256_prefix, timeout=timeout, progress=progress)
        tensors = select_convs(load_checkpoint(path), remote.filename)
        return Weights(tensors, source, sha256_file(path), preprocessing or remote.preprocessing)
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"--weights {source!r} is neither torchvision, caffe, random nor an "
                        "existing .pth/.safetensors file.")
    tensors = select_convs(load_checkpoint(path), str(path))
    return Weights(tensors, f"file {path.name}", sha256_file(path), preprocessing or "torchvision")
