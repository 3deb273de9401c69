"""Write a VGG's feature layers as one ONNX file (the artifact) and verify it against torch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stylefu.core.engines.onnx.gradient import build_gradient_graph, remove_stale_siblings, sibling_path
from stylefu.core.errors import UserError
from stylefu.core.io.files import atomic_write, check_output_path, missing_folders, remove_empty
from stylefu.core.io.paths import default_model_path
from stylefu.core.network import artifact_meta
from stylefu.core.network.vgg import CONTENT_LAYER, EXPORTED_LAYERS, PREPROCESSING, architecture

from .weights import Weights, get_weights

# ONNX Runtime 1.31 reads IR version <= 13 while onnx 1.20+ writes 14 by default; opset 17 has
# every operator used here and is accepted by every supported ONNX Runtime.
IR_VERSION = 8
OPSET = 17
POOLINGS = ("avg", "max")
MAX_RELATIVE_ERROR = 1e-4


def build_graph(weights: Weights, pooling: str):
    """The ONNX model: preprocessing, the architecture's conv+ReLU layers up to relu5_1 with 2x2
    pools between blocks (laid out by its layer table), six named outputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    pre = PREPROCESSING[weights.preprocessing]
    init = [numpy_helper.from_array(np.array(pre["channel_order"], np.int64), "pre.channel_order"),
            numpy_helper.from_array(np.float32(pre["scale"]).reshape(()), "pre.scale"),
            numpy_helper.from_array(np.array(pre["mean"], np.float32).reshape(1, 3, 1, 1), "pre.mean"),
            numpy_helper.from_array(np.array(pre["std"], np.float32).reshape(1, 3, 1, 1), "pre.std")]
    nodes = [helper.make_node("Gather", ["image", "pre.channel_order"], ["pre.ordered"], axis=1),
             helper.make_node("Mul", ["pre.ordered", "pre.scale"], ["pre.scaled"]),
             helper.make_node("Sub", ["pre.scaled", "pre.mean"], ["pre.centred"]),
             helper.make_node("Div", ["pre.centred", "pre.std"], ["pre.out"])]
    x = "pre.out"
    arch = architecture(weights.architecture)
    last = arch.deepest_index(EXPORTED_LAYERS)
    for i, (name, _, _) in enumerate(arch.convs[: last + 1]):
        for part in ("weight", "bias"):
            init.append(numpy_helper.from_array(weights.tensors[f"{name}.{part}"], f"{name}.{part}"))
        nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [name],
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], name=name))
        relu = arch.relu_names[i]
        nodes.append(helper.make_node("Relu", [name], [relu], name=relu))
        x = relu
        if name in arch.block_ends and i < last:
            op = "AveragePool" if pooling == "avg" else "MaxPool"
            nodes.append(helper.make_node(op, [x], [f"pool{name[4]}"], kernel_shape=[2, 2],
                                          strides=[2, 2], name=f"pool{name[4]}"))
            x = f"pool{name[4]}"
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", None, None, None])
               for n in EXPORTED_LAYERS]
    graph = helper.make_graph(nodes, f"stylefu_{arch.name}_features", inputs, outputs, init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="stylefu")
    model.ir_version = IR_VERSION
    metadata = artifact_meta.encode(artifact_meta.ArtifactInfo(
        path=Path(), architecture=arch.name, weights_source=weights.source,
        weights_sha256=weights.sha256, preprocessing=pre | {"name": weights.preprocessing},
        layers=EXPORTED_LAYERS, pooling=pooling, format_version=artifact_meta.FORMAT_VERSION))
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model


def reference_name() -> str:
    """What `verify` compares ONNX Runtime with: torch, or numpy where torch is not installed."""
    from stylefu.core.engines import torch_installed

    return "torch" if torch_installed() else "numpy"


def numpy_features(path: Path, batch: np.ndarray) -> dict[str, np.ndarray]:
    """The artifact's layers by plain numpy (im2col convolutions): the torch-free reference."""
    from stylefu.core.network.vgg import read_artifact

    info, weights = read_artifact(path)
    arch = architecture(info.architecture)
    pre = info.preprocessing
    x = (batch[:, pre["channel_order"]] * pre["scale"] - np.reshape(pre["mean"], (1, 3, 1, 1))) \
        / np.reshape(pre["std"], (1, 3, 1, 1))
    x, out = x.astype(np.float64), {}
    last = arch.deepest_index(EXPORTED_LAYERS)
    for i, (name, _, _) in enumerate(arch.convs[: last + 1]):
        windows = np.lib.stride_tricks.sliding_window_view(
            np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), axis=(2, 3))  # [N,C,H,W,3,3]
        x = np.einsum("nchwij,ocij->nohw", windows, weights[f"{name}.weight"].astype(np.float64),
                      optimize=True) + weights[f"{name}.bias"].reshape(1, -1, 1, 1)
        x = np.maximum(x, 0.0)
        out[arch.relu_names[i]] = x
        if name in arch.block_ends and i < last:
            h, w = x.shape[2] // 2, x.shape[3] // 2
            blocks = x[:, :, :2 * h, :2 * w].reshape(*x.shape[:2], h, 2, w, 2)
            x = blocks.mean((3, 5)) if info.pooling == "avg" else blocks.max((3, 5))
    return {n: out[n] for n in EXPORTED_LAYERS}


def verify(path: Path, sizes=((64, 64), (37, 53))) -> dict[str, float]:
    """Largest relative difference per output between ONNX Runtime and torch (numpy where torch
    is not installed: the light install) on test inputs."""
    from stylefu.core.network.forward import FeatureEngine

    engine = FeatureEngine(path, device="cpu")
    if reference_name() == "torch":
        import torch

        from stylefu.core.engines.torch.vggnet import load_torch_model

        net = load_torch_model(path, keep_copy=False)  # a temporary file: no cache copy

        def reference(batch):
            with torch.no_grad():
                return {k: v.numpy() for k, v in net(torch.from_numpy(batch)).items()}
    else:
        def reference(batch):
            return numpy_features(path, batch)
    rng = np.random.default_rng(0)
    worst = dict.fromkeys(EXPORTED_LAYERS, 0.0)
    for h, w in sizes:
        batch = rng.random((1, 3, h, w), dtype=np.float32)
        ort_out = engine.features(batch)
        ref_out = reference(batch)
        for name in EXPORTED_LAYERS:
            a, b = ort_out[name], ref_out[name]
            error = float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))
            # NaN or infinite features are a failed verification, never a silent pass.
            worst[name] = max(worst[name], error if np.isfinite(error) else float("inf"))
    return worst


def export(weights: str = "random", output: str | Path | None = None, *, seed: int = 0,
           pooling: str = "avg", preprocessing: str | None = None, timeout: float = 30.0,
           progress: bool = True, arch: str | None = None,
           gradient: bool = False) -> tuple[Path, dict[str, float]]:
    """Turn VGG weights into a verified artifact at `output` (default: the user's model path).

    `arch` (vgg19, vgg16) picks the layer table; None: the weights source's own (see get_weights).

    Returns the path and the per-output relative error of ONNX Runtime against torch. Nothing is
    left at `output` unless the file is complete and verified (written to a temporary name first).
    `gradient`: also write the torch-free engine's gradient graph beside it
    (core/engines/onnx/gradient.py; else it is made on first use, in the cache).
    """
    if pooling not in POOLINGS:
        raise UserError(f"--pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}.")
    if preprocessing is not None and preprocessing not in PREPROCESSING:
        raise UserError(f"--preprocessing must be one of {', '.join(PREPROCESSING)}.")
    output = Path(output) if output else default_model_path()
    made = missing_folders(output.parent)
    try:  # -o checked before the weights' download (550 MB) and the graph's build
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        raise UserError(f"Cannot create the folder {output.parent}; choose another -o.") from None
    try:
        return _export(weights, output, seed, pooling, preprocessing, timeout, progress, arch,
                       gradient)
    except BaseException:  # a failed or cancelled export leaves no folder it made
        remove_empty(made)
        raise


def _export(weights, output: Path, seed, pooling, preprocessing, timeout, progress, arch,
            gradient) -> tuple[Path, dict[str, float]]:
    """export()'s work once -o's folder is there."""
    import onnx

    check_output_path(output, "-o", example="model.onnx")
    if output.is_file() and Path(weights).expanduser().is_file() and \
            os.path.samefile(Path(weights).expanduser(), output):
        raise UserError(f"-o {output} is the weights file itself, which the model would replace; "
                        "choose another -o.")
    if gradient:  # its name is 34 bytes longer than -o's: found after writing the model, else
        check_output_path(sibling_path(output, CONTENT_LAYER, sha256="0" * 64),
                          "-o (the gradient graph beside it)")
    source = get_weights(weights, seed=seed, preprocessing=preprocessing, timeout=timeout,
                         progress=progress, arch=arch)
    model = build_graph(source, pooling)
    errors: dict[str, float] = {}
    graph = {}

    def write(tmp: Path) -> None:
        onnx.save(model, str(tmp))
        errors.update(verify(tmp))
        bad = {k: v for k, v in errors.items() if v > MAX_RELATIVE_ERROR}
        if bad:
            raise UserError(f"Verification failed: ONNX Runtime and torch differ by {bad} "
                            f"(limit {MAX_RELATIVE_ERROR}).")
        if gradient:  # from these bytes: another export may replace `output` meanwhile
            graph["model"] = build_gradient_graph(tmp, CONTENT_LAYER)
            graph["path"] = sibling_path(output, CONTENT_LAYER, contents=tmp)
    atomic_write(output, write, "choose another -o")
    if gradient:
        atomic_write(graph["path"], lambda tmp: onnx.save(graph["model"], str(tmp)),
                     "choose another -o")
        remove_stale_siblings(output, CONTENT_LAYER)  # after ours: the last export's graph stays
    return output, errors
