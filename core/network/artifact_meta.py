"""The artifact's metadata: the one module that spells its keys, writes them and reads them.

The exporter (stylefu.export) writes an artifact's `metadata_props` with `encode`; the core reads
them back with `decode` (through `vgg.read_artifact`). Core never imports the exporter, so the keys
live here, on the core side.

Format versions: 1 (VGG19 only, kind `stylefu-vgg19-features`, no architecture key) and 2 (adds
`stylefu.architecture`, kind `stylefu-vgg-features`). Version 1 files still read, as vgg19.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

FORMAT_VERSION = "2"
ARTIFACT_KIND = "stylefu-vgg-features"
# Kinds this code reads: today's and format 1's (written before VGG16 existed).
READABLE_KINDS = (ARTIFACT_KIND, "stylefu-vgg19-features")
LEGACY_ARCHITECTURE = "vgg19"  # what a file without an architecture key holds
RANDOM_PREFIX = "random"  # weights_source of seeded random weights: "random (seed N)"

KIND = "stylefu.kind"
VERSION = "stylefu.format_version"
ARCHITECTURE = "stylefu.architecture"
WEIGHTS_SOURCE = "stylefu.weights_source"
WEIGHTS_SHA256 = "stylefu.weights_sha256"
PREPROCESSING = "stylefu.preprocessing"
LAYERS = "stylefu.layers"
POOLING = "stylefu.pooling"


# The command a message names to make a model: the first source that works here (the official
# weights are 548 MB away or unreachable; the light install cannot read their .pth).
MAKE_MODEL = "`stylefu export --weights auto`"

@dataclass(frozen=True)
class ArtifactInfo:
    """What an artifact's metadata says about its weights and graph."""

    path: Path
    architecture: str
    weights_source: str
    weights_sha256: str
    preprocessing: dict  # the recipe (see vgg.PREPROCESSING) plus its "name"
    layers: tuple[str, ...]
    pooling: str
    format_version: str

    @property
    def is_random(self) -> bool:
        return self.weights_source.startswith(RANDOM_PREFIX)


def encode(info: ArtifactInfo) -> dict[str, str]:
    """The metadata_props an exporter writes for `info` (its path is not stored)."""
    return {
        KIND: ARTIFACT_KIND,
        VERSION: FORMAT_VERSION,
        ARCHITECTURE: info.architecture,
        WEIGHTS_SOURCE: info.weights_source,
        WEIGHTS_SHA256: info.weights_sha256,
        PREPROCESSING: json.dumps(info.preprocessing),
        LAYERS: json.dumps(list(info.layers)),
        POOLING: info.pooling,
    }


def decode(meta: dict[str, str], path: Path) -> ArtifactInfo:
    """ArtifactInfo from a file's metadata_props; UserError if it is not a stylefu artifact."""
    if meta.get(KIND) not in READABLE_KINDS:
        raise UserError(f"{path} is an ONNX file but not a stylefu model; "
                        "create one with " + MAKE_MODEL + ".")
    try:
        return ArtifactInfo(
            path=path,
            architecture=meta.get(ARCHITECTURE, LEGACY_ARCHITECTURE),
            weights_source=meta[WEIGHTS_SOURCE],
            weights_sha256=meta[WEIGHTS_SHA256],
            preprocessing=json.loads(meta[PREPROCESSING]),
            layers=tuple(json.loads(meta[LAYERS])),
            pooling=meta[POOLING],
            format_version=meta[VERSION],
        )
    except (KeyError, ValueError) as exc:
        raise UserError(f"{path} has incomplete stylefu metadata ({exc}); "
                        "re-create it with " + MAKE_MODEL + ".") from None
