"""The torch network of an artifact (VGGFeatures) and its torch weights copy in the cache: the
torch engine's half of vgg.py (which imports no torch)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError
from ...io.cache import prune_cache, touch
from ...network import artifact_meta
from ...network.artifact_meta import ArtifactInfo
from ...network.vgg import EXPORTED_LAYERS, architecture, read_artifact


class VGGFeatures(nn.Module):
    """VGG features up to relu5_1 with frozen weights, preprocessing included (input RGB 0..1),
    laid out by the layer table that the artifact's metadata names."""

    def __init__(self, info: ArtifactInfo, weights: dict[str, np.ndarray | torch.Tensor]):
        super().__init__()
        self.info = info
        self.arch = architecture(info.architecture)
        pre = info.preprocessing
        self.register_buffer("channel_order", torch.tensor(pre["channel_order"]), persistent=False)
        self.scale = float(pre["scale"])
        self.register_buffer("mean", torch.tensor(pre["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre["std"]).view(1, 3, 1, 1), persistent=False)
        self.convs = nn.ModuleList()
        for name, cin, cout in self.arch.convs:
            # On "meta": no random initialisation of weights replaced at once (0.2 s a load).
            conv = nn.Conv2d(cin, cout, 3, padding=1, device="meta")
            conv.weight = nn.Parameter(_own_tensor(weights[f"{name}.weight"]))
            conv.bias = nn.Parameter(_own_tensor(weights[f"{name}.bias"]))
            self.convs.append(conv)
        # Frozen weights: gradients flow to the image only (1.5-1.8x cheaper per evaluation).
        self.requires_grad_(False)
        self.eval()

    def forward(self, image: torch.Tensor, layers=EXPORTED_LAYERS) -> dict[str, torch.Tensor]:
        """Activations of `layers` for `image` ([N,3,H,W] RGB 0..1); stops at the deepest one."""
        x = (image.float().index_select(1, self.channel_order) * self.scale - self.mean) / self.std
        x = x.to(self.convs[0].weight.dtype)  # preprocessing in float32, convolutions in theirs
        wanted, last = set(layers), self.arch.deepest_index(layers)
        relu_names = self.arch.relu_names
        pool = F.avg_pool2d if self.info.pooling == "avg" else F.max_pool2d
        out = {}
        for i, ((name, _, _), conv) in enumerate(zip(self.arch.convs, self.convs)):
            x = F.relu(conv(x))
            if relu_names[i] in wanted:
                out[relu_names[i]] = x
            if i == last:
                break
            if name in self.arch.block_ends:
                x = pool(x, 2, 2)
        return out


def _own_tensor(value: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor of our own (a copy: ONNX arrays are read-only, saved tensors memory-mapped)."""
    return torch.from_numpy(value.copy()) if isinstance(value, np.ndarray) else value.clone()


def load_torch_model(path: str | Path, keep_copy: bool = True) -> VGGFeatures:
    """The torch network with exactly the weights and preprocessing of the artifact at `path`.

    The first load reads the ONNX file and leaves a torch copy of its weights and metadata in the
    cache folder (`torch_weights_file`); later processes load that instead, without importing
    onnx or parsing its protobuf (about 0.8 s of CPU time per command). `keep_copy=False`
    (export's verification of a temporary file, never loaded again) reads the ONNX file only.
    """
    ready = torch_weights_file(path)
    if keep_copy:
        try:
            saved = torch.load(ready, weights_only=True, mmap=True)
            fields = json.loads(saved["info"])
            info = ArtifactInfo(path=Path(path), **fields | {"layers": tuple(fields["layers"])})
            net = VGGFeatures(info, saved["weights"])
            touch(ready)
            return net
        except Exception:  # missing, unreadable (a cache without permission) or stale: made below
            pass
    info, weights = read_artifact(path)
    convs = architecture(info.architecture).convs
    missing = [n for n, _, _ in convs if f"{n}.weight" not in weights]
    if missing:
        raise UserError(f"{path} lacks weights for {', '.join(missing)}; re-export it.")
    net = VGGFeatures(info, weights)
    if keep_copy:
        _save_torch_weights(net, ready)
    return net


def torch_weights_file(path: str | Path) -> Path:
    """Where the torch copy of an artifact's weights lives: the cache folder, named by the ONNX
    file's path, size and modification time (a changed or replaced file gets a new copy)."""
    from ...io.paths import cache_dir

    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{artifact_meta.FORMAT_VERSION}"
    digest = hashlib.sha1(os.fsencode(key)).hexdigest()[:16]  # a name may be any bytes
    return cache_dir() / "torch-weights" / f"{path.stem}-{digest}.pt"


def _save_torch_weights(net: VGGFeatures, target: Path) -> None:
    """Write the torch copy (atomically); a cache that cannot be written is skipped."""
    from ...io.files import cache_write

    info = {k: v for k, v in dataclasses.asdict(net.info).items() if k != "path"}
    weights = {f"{name}.{part}": getattr(conv, part).detach().clone()
               for (name, _, _), conv in zip(net.arch.convs, net.convs) for part in ("weight", "bias")}
    if cache_write(target, lambda tmp: torch.save({"info": json.dumps(info), "weights": weights},
                                                  tmp)):
        prune_cache()
