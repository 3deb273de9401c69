"""The torch-free engine (`--engine onnx`): the artifact's model, the loss and its gradient from
one ONNX Runtime graph (gradient.py), and the minimising loop with L-BFGS in numpy (lbfgs.py).

Imports no torch. The run itself (levels, targets, guides, colour, progress) is the pipeline's
(run/pipeline.py), through runner.py; tiles through tiled.py. Not covered (UserError): bf16/fp16,
a style too large for one forward pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ...method import tiling
from ...method.config import Config
from ...method.objective import NAN_MESSAGE_ONNX, LossSpec, check_finite
from ...network.forward import FeatureEngine, engine_threads, run_options, session_source
from ...network.vgg import STYLE_LAYERS, layer_masks, layer_stride
from ..steps import BestIterate, check_cancel, delivered, loss_factor, range_penalty, should_stop
from .lbfgs import LBFGS

EMPTY_REGION = 1e-6  # a term's guide mass at a layer below this: the layer is left out of the term


@dataclass
class OnnxModel:
    """An artifact for the torch-free engine: forward passes (`engine`) and, per content layer,
    the gradient graph's session (made on first use)."""

    path: Path
    engine: FeatureEngine
    device: str = "cpu"
    # The loaded file, kept open: its bytes stay readable for the gradient graph even once an
    # export renamed another file onto `path`.
    source: object = field(default=None, repr=False)
    _sessions: dict = field(default_factory=dict, repr=False)

    @property
    def info(self):
        return self.engine.info

    @property
    def weights_source(self) -> str:
        return self.info.weights_source

    def gradient(self, content_layer: str) -> GradientSession:
        if content_layer not in self._sessions:
            from .gradient import gradient_graph

            damaged: list[Path] = []  # graph files ONNX Runtime refused (a disk fault): rebuilt
            while True:
                graph = gradient_graph(self.path, content_layer, self.engine.sha256, self.source,
                                       damaged)
                try:
                    self._sessions[content_layer] = GradientSession(graph, self.engine.threads)
                    break
                except Exception:  # ORT's errors are plain Exceptions; a rebuilt one is ours
                    if isinstance(graph, bytes) or graph in damaged:
                        raise
                    damaged.append(graph)
        return self._sessions[content_layer]


@lru_cache(maxsize=4)
def _load(path: Path, device: str, file_stamp) -> OnnxModel:
    """`file_stamp` keys the cache only: a file replaced since (a new export) is loaded anew."""
    from ...io.cache import model_hash
    from ...io.files import load_unchanged

    def load() -> OnnxModel:
        # Not on Windows, where an open file cannot be replaced: an export would fail instead.
        source = open(path, "rb") if os.name != "nt" else None
        try:
            engine = FeatureEngine(path, device=device, sha256=model_hash(path))
        except BaseException:
            if source:
                source.close()
            raise
        return OnnxModel(path, engine, device, source)
    # The session, the target cache's key and the gradient graph's source from one file, though
    # an export may replace it.
    return load_unchanged(path, load)


def load_onnx_model(path: str | Path | None = None, device: str = "auto") -> OnnxModel:
    """Load (once per process and file) the artifact at `path` for the torch-free engine (CPU;
    `cuda` asks ONNX Runtime's CUDA provider)."""
    from ...io.files import stamp
    from ...io.paths import model_file

    file = model_file(path)
    model = _load(file, "cuda" if device == "cuda" else "cpu", stamp(file))
    if device == "cuda" and not model.engine.uses_gpu:  # else torch's memory query: a crash
        from ...errors import UserError

        raise UserError("--device cuda was asked for, but ONNX Runtime runs on the CPU here (the "
                        "torch-free engine needs onnxruntime-gpu and an NVIDIA GPU); use --device "
                        "cpu (or auto).")
    return model


class GradientSession:
    """One ONNX Runtime session over the gradient graph: `run(image, feeds)` -> outputs."""

    def __init__(self, path: Path | bytes, threads: int | None = None):
        """`path`: the graph's file, or the graph itself (bytes) where the cache is unusable."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or engine_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # ORT's memory pattern (one block planned for all of a shape's intermediate tensors) held
        # the gradient graph's peak 1.6-1.7 times over, at the same speed (docs/torch-free-engine.md).
        options.enable_mem_pattern = False
        source = path if isinstance(path, bytes) else session_source(path)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.calls = 0

    def run(self, image: np.ndarray, feeds: dict, release: bool = False) -> dict[str, np.ndarray]:
        """`release`: give ORT's arena back afterwards (forward.run_options), at a run's end."""
        self.calls += 1
        return dict(zip(self.outputs, self.session.run(None, {"image": image, **feeds},
                                                       run_options(release))))


class OnnxObjective:
    """The loss of one level's targets as a function of [1,3,H,W] pixels: (total, parts, gradient)."""

    def __init__(self, model: OnnxModel, content: np.ndarray, terms, config: Config):
        """`terms`: (grams {layer: [1,C,C]}, weight, guide [H,W] or None) per style term."""
        self.spec = spec = LossSpec.from_config(config)
        self.session = model.gradient(spec.content_layer)
        feeds = {"loss_weights": np.array([spec.content_weight, spec.style_weight, spec.tv_weight],
                                          np.float32),
                 "layer_weights": np.array([spec.layer_weights[n] for n in STYLE_LAYERS], np.float32)}
        feeds["content_target"] = np.asarray(content, np.float32)
        weights = np.zeros((len(terms), len(STYLE_LAYERS)), np.float32)
        masks: dict[str, list] = {n: [] for n in STYLE_LAYERS}
        for t, (_, weight, guide) in enumerate(terms):
            per_layer = None if guide is None else layer_masks(guide[None, None], STYLE_LAYERS)
            for k, name in enumerate(STYLE_LAYERS):
                m = None if per_layer is None else per_layer[name]
                masks[name].append(m)
                weights[t, k] = weight if m is None or float(m.sum()) > EMPTY_REGION else 0.0
        for name in STYLE_LAYERS:
            feeds[f"gram.{name}"] = np.concatenate([np.asarray(g[name], np.float32).reshape(
                1, *g[name].shape[-2:]) for g, _, _ in terms])
        feeds["term_weights"] = weights
        self.feeds, self.masks, self.mask_size = feeds, masks, None

    def __call__(self, x: np.ndarray, release: bool = False) -> tuple[float, dict, np.ndarray]:
        """`release`: the run's last call (the final figures) gives ORT's arena back."""
        if self.mask_size != x.shape[-2:]:
            self._set_masks(x.shape[-2:])
        out = self.session.run(np.ascontiguousarray(x, np.float32), self.feeds, release)
        per_layer = dict(zip(STYLE_LAYERS, (float(v) for v in out["style_layers"])))
        parts = {"content": float(out["content"]), "style": float(out["style"]),
                 "tv": float(out["tv"]), **per_layer}
        return float(out["total"]), parts, out["gradient"]

    def _set_masks(self, size):
        """Guides at each style layer's size; ones where a term has none (feature sizes follow
        the pools' floors)."""
        h, w = size
        for name in STYLE_LAYERS:
            shape = (h // layer_stride(name), w // layer_stride(name))
            self.feeds[f"mask.{name}"] = np.concatenate(
                [np.ones((1, 1) + shape, np.float32) if m is None else np.asarray(m, np.float32)
                 for m in self.masks[name]])
        self.mask_size = (h, w)


def minimise(objective: OnnxObjective, image: np.ndarray, evaluations: int, config: Config,
             report: Callable, cancel, tolerance: float = 0.0,
             history: int = tiling.LBFGS_HISTORY) -> tuple[np.ndarray, int]:
    """optimise.minimise for numpy pixels: the same loss factor, early stop, best iterate and
    cancel checks; L-BFGS as torch's (lbfgs.py) or Adam as torch's defaults."""
    x = np.ascontiguousarray(image, np.float32).copy()
    shape = x.shape
    best, factor, seen = BestIterate(), loss_factor(config), []
    step = LBFGS(history) if config.optimizer == "lbfgs" else Adam(config.learning_rate)
    done = 0
    for done in range(1, evaluations + 1):
        check_cancel(cancel)
        total, parts, grad = objective(np.clip(x, 0.0, 1.0))  # as delivered (`delivered`)
        check_finite(total, NAN_MESSAGE_ONNX)
        outside, outside_grad = range_penalty(x, total)
        best.update(total * outside, x)
        multiplier = np.float32(factor(total))
        grad = delivered(x, grad) * np.float32(outside) + outside_grad
        x = step.step(x.ravel(), grad.ravel() * multiplier).reshape(shape)
        seen.append(total)  # the delivered loss, as reported: what stopping judges
        report(done, total, parts, x)
        if should_stop(seen, tolerance):
            break
    # BestIterate judges the image that was evaluated last (before the final step): the run
    # returns the image after that step when the last evaluation was the best (as torch's loop).
    return best.result(x), done


class Adam:
    """torch.optim.Adam's update with its defaults (betas 0.9, 0.999; eps 1e-8)."""

    def __init__(self, lr: float):
        self.lr, self.m, self.v, self.t = lr, None, None, 0

    def step(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        if self.m is None:
            self.m, self.v = np.zeros_like(g), np.zeros_like(g)
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g * g
        m_hat = self.m / (1 - 0.9 ** self.t)
        v_hat = self.v / (1 - 0.999 ** self.t)
        return (x - self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)).astype(np.float32)
