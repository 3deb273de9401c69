"""ONNX Runtime feature engine: forward passes of the artifact, without gradients.

Used for everything that needs no gradient: style and content targets, metrics, previews and
the exporter's verification. Providers: CUDA when it truly loads, else CPU, without ONNX
Runtime's own error spam on machines that have no GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .vgg import EXPORTED_LAYERS, read_artifact


def usable_cores() -> int:
    """Cores this process may run on (affinity-aware): the right thread count for ORT and torch."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cuda_is_usable() -> bool:
    """True when a CUDA device is really there (asking torch avoids ORT's probe noise)."""
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


class FeatureEngine:
    """An ONNX Runtime session over a stylefu artifact. `features(batch)` -> {layer: array}."""

    def __init__(self, model_path: str | Path, device: str = "auto"):
        import onnxruntime as ort

        self.info, _ = read_artifact(model_path)
        self.path = Path(model_path)
        ort.set_default_logger_severity(3)  # errors only: no warnings about unused providers
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One thread per usable core: more threads than cores made passes 2.6x slower here.
        options.intra_op_num_threads = usable_cores()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        want_cuda = device == "cuda" or (device == "auto" and cuda_is_usable())
        if want_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        self.provider = self.session.get_providers()[0]
        self.calls = 0  # counted so tests can prove the target cache saves work

    def features(self, batch: np.ndarray, layers=EXPORTED_LAYERS) -> dict[str, np.ndarray]:
        """Activations for a float32 [N,3,H,W] RGB 0..1 batch; ORT runs only what `layers` need."""
        self.calls += 1
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outputs = self.session.run(list(layers), {"image": batch})
        return dict(zip(layers, outputs))
