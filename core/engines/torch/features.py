"""Forward passes (targets, final figures, previews) on the torch network where it runs on a GPU.

ONNX Runtime runs on the CPU there unless onnxruntime-gpu's CUDA provider loads, and even then
its session costs start-up; the float32 network already on the GPU gives the same features (the
export verifies them to 1e-6) without either. Same interface as network.forward.FeatureEngine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...network.forward import checked_batch
from ...network.vgg import EXPORTED_LAYERS
from .vggnet import VGGFeatures


class TorchFeatures:
    """`features(batch)` -> {layer: float32 array}, by `net` (float32) on `device`."""

    def __init__(self, path: Path, net: VGGFeatures, device: torch.device,
                 sha256: str | None = None):
        self.path, self.net, self.device = Path(path), net, device
        self.info = net.info
        self.provider = f"torch on {device}"
        self.calls = 0
        self.sha256 = sha256  # the target cache's key, as FeatureEngine's

    @property
    def uses_gpu(self) -> bool:
        return self.device.type != "cpu"

    def describe(self) -> str:
        return f"the torch network on {self.device} (float32)"

    def features(self, batch: np.ndarray, layers=EXPORTED_LAYERS) -> dict[str, np.ndarray]:
        """Activations for a float32 [N,3,H,W] RGB 0..1 batch: {layer: [N,C,h,w] float32}."""
        batch = checked_batch(batch, layers)
        self.calls += 1
        with torch.no_grad():
            feats = self.net(torch.from_numpy(batch).to(self.device), tuple(layers))
            return {n: feats[n].float().cpu().numpy() for n in layers}

    def image_features(self, image: np.ndarray, layers=EXPORTED_LAYERS) -> dict[str, np.ndarray]:
        """Activations of one [H,W,3] image: {layer: [1,C,h,w]}."""
        return self.features(np.asarray(image, np.float32).transpose(2, 0, 1)[None], layers)
