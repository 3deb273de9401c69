"""VGG19's feature stack up to relu5_1: names, shapes, and the torch network built from an artifact.

The layer table is the single description of the network shared by the exporter (which writes
the ONNX graph) and the torch engine (which rebuilds the same graph from the file's weights).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

# (name, in_channels, out_channels) per convolution, in order; a 2x2 pool follows each block end.
CONVS = [
    ("conv1_1", 3, 64), ("conv1_2", 64, 64),
    ("conv2_1", 64, 128), ("conv2_2", 128, 128),
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256),
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512),
    ("conv5_1", 512, 512),
]
BLOCK_ENDS = {"conv1_2", "conv2_2", "conv3_4", "conv4_4"}
# torchvision's `features.N` index of each convolution (ReLUs and pools sit in between).
TORCHVISION_INDEX = dict(zip([c[0] for c in CONVS], [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28]))
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"
EXPORTED_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1", "relu4_2")
RELU_NAMES = ["relu" + name[4:] for name, _, _ in CONVS]
MIN_SIDE = 16  # four 2x2 pools before relu5_1: anything smaller has no relu5_1 pixel
FORMAT_VERSION = "1"
ARTIFACT_KIND = "stylefu-vgg19-features"

# Preprocessing recipes, stored in the artifact's metadata and applied inside both graphs:
# y = (x[:, channel_order] * scale - mean) / std, x being RGB in 0..1.
PREPROCESSING = {
    "torchvision": {"channel_order": [0, 1, 2], "scale": 1.0,
                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "caffe": {"channel_order": [2, 1, 0], "scale": 255.0,
              "mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0]},
}


@dataclass(frozen=True)
class ArtifactInfo:
    """What an artifact's metadata says about its weights and graph."""

    path: Path
    weights_source: str
    weights_sha256: str
    preprocessing: dict
    layers: tuple[str, ...]
    pooling: str
    format_version: str

    @property
    def is_random(self) -> bool:
        return self.weights_source.startswith("random")


def read_artifact(path: str | Path) -> tuple[ArtifactInfo, dict[str, np.ndarray]]:
    """Read an artifact's metadata and convolution weights; UserError if it is not one of ours."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    if not path.is_file():
        raise UserError(f"Model file {path} does not exist; create it with `stylefu export`.")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise UserError(f"{path} is not a readable ONNX file ({exc.__class__.__name__}); "
                        "re-create it with `stylefu export`.") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("stylefu.kind") != ARTIFACT_KIND:
        raise UserError(f"{path} is an ONNX file but not a stylefu model; "
                        "create one with `stylefu export`.")
    info = ArtifactInfo(
        path=path,
        weights_source=meta["stylefu.weights_source"],
        weights_sha256=meta["stylefu.weights_sha256"],
        preprocessing=json.loads(meta["stylefu.preprocessing"]),
        layers=tuple(json.loads(meta["stylefu.layers"])),
        pooling=meta["stylefu.pooling"],
        format_version=meta["stylefu.format_version"],
    )
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return info, weights


def deepest_index(layers) -> int:
    """Index in RELU_NAMES of the deepest requested layer: nothing past it is computed."""
    return max(RELU_NAMES.index(name) for name in layers)


class VGGFeatures(nn.Module):
    """VGG19 features up to relu5_1 with frozen weights, preprocessing included (input RGB 0..1)."""

    def __init__(self, info: ArtifactInfo, weights: dict[str, np.ndarray | torch.Tensor]):
        super().__init__()
        self.info = info
        pre = info.preprocessing
        self.register_buffer("channel_order", torch.tensor(pre["channel_order"]), persistent=False)
        self.scale = float(pre["scale"])
        self.register_buffer("mean", torch.tensor(pre["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre["std"]).view(1, 3, 1, 1), persistent=False)
        self.convs = nn.ModuleList()
        for name, cin, cout in CONVS:
            conv = nn.Conv2d(cin, cout, 3, padding=1)
            conv.weight.data = _own_tensor(weights[f"{name}.weight"])
            conv.bias.data = _own_tensor(weights[f"{name}.bias"])
            self.convs.append(conv)
        # Frozen weights: gradients flow to the image only (1.5-1.8x cheaper per evaluation).
        self.requires_grad_(False)
        self.eval()

    def forward(self, image: torch.Tensor, layers=EXPORTED_LAYERS) -> dict[str, torch.Tensor]:
        """Activations of `layers` for `image` ([N,3,H,W] RGB 0..1); stops at the deepest one."""
        x = (image.float().index_select(1, self.channel_order) * self.scale - self.mean) / self.std
        x = x.to(self.convs[0].weight.dtype)  # preprocessing in float32, convolutions in theirs
        wanted, last = set(layers), deepest_index(layers)
        out = {}
        for i, ((name, _, _), conv) in enumerate(zip(CONVS, self.convs)):
            x = F.relu(conv(x))
            if RELU_NAMES[i] in wanted:
                out[RELU_NAMES[i]] = x
            if i == last:
                break
            if name in BLOCK_ENDS:
                pool = F.avg_pool2d if self.info.pooling == "avg" else F.max_pool2d
                x = pool(x, 2, 2)
        return out


def _own_tensor(value: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor of our own (a copy: ONNX arrays are read-only, saved tensors memory-mapped)."""
    return torch.from_numpy(value.copy()) if isinstance(value, np.ndarray) else value.clone()


def load_torch_model(path: str | Path) -> VGGFeatures:
    """The torch network with exactly the weights and preprocessing of the artifact at `path`.

    The first load reads the ONNX file and leaves a torch copy of its weights and metadata in the
    cache folder (`torch_weights_file`); later processes load that instead, without importing
    onnx or parsing its protobuf (about 0.8 s of CPU time per command).
    """
    ready = torch_weights_file(path)
    if ready.is_file():
        try:
            saved = torch.load(ready, weights_only=True, mmap=True)
            fields = json.loads(saved["info"])
            info = ArtifactInfo(path=Path(path), **fields | {"layers": tuple(fields["layers"])})
            return VGGFeatures(info, saved["weights"])
        except Exception:  # unreadable or from another version: made again below
            pass
    info, weights = read_artifact(path)
    missing = [n for n, _, _ in CONVS if f"{n}.weight" not in weights]
    if missing:
        raise UserError(f"{path} lacks weights for {', '.join(missing)}; re-export it.")
    net = VGGFeatures(info, weights)
    _save_torch_weights(net, ready)
    return net


def torch_weights_file(path: str | Path) -> Path:
    """Where the torch copy of an artifact's weights lives: the cache folder, named by the ONNX
    file's path, size and modification time (a changed or replaced file gets a new copy)."""
    from .paths import cache_dir

    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{FORMAT_VERSION}"
    return cache_dir() / "torch-weights" / f"{path.stem}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"


def _save_torch_weights(net: VGGFeatures, target: Path) -> None:
    """Write the torch copy (atomically); a cache that cannot be written is skipped."""
    from .files import atomic_write

    info = {k: v for k, v in dataclasses.asdict(net.info).items() if k != "path"}
    weights = {f"{name}.{part}": getattr(conv, part).detach().clone()
               for (name, _, _), conv in zip(CONVS, net.convs) for part in ("weight", "bias")}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp: torch.save({"info": json.dumps(info),
                                                     "weights": weights}, tmp))
    except (OSError, UserError):
        pass
