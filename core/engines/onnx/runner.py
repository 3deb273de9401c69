"""The torch-free engine's part of a run (run/pipeline.py owns the level loop): per level the
targets in numpy, the loss and gradient from one ONNX Runtime graph (engine.OnnxObjective, or
tiled.TiledOnnxObjective crop by crop where memory asks) and L-BFGS in numpy (engine.minimise).
Imports no torch. float32."""

from __future__ import annotations

import numpy as np

from ... import notes
from ...errors import UserError
from ...io.images import resize_array
from ...method import tiling
from ...method.targets import blend_weights, target_arrays
from ...network.vgg import STYLE_LAYERS
from .engine import OnnxModel, OnnxObjective, load_onnx_model, minimise
from .tiled import TiledOnnxObjective


class OnnxRunner:
    name = "onnx"

    def __init__(self, model, config, log):
        self.model = model if isinstance(model, OnnxModel) else None
        self.source, self.config, self.log = model, config, log
        self.device, self.objective = "cpu", None
        self.rng = np.random.default_rng(config.seed)

    def check(self, content, styles) -> None:
        if self.config.precision not in ("auto", "fp32"):
            raise UserError(f"--engine onnx computes in float32; use --precision fp32 (or auto), "
                            f"not {self.config.precision}.")
        tiling.check_memory(content, styles, self.config, self.device)
        if self.config.compile == "on":  # as the torch engine says when it runs uncompiled
            self.log(notes.act("compile on: the torch-free engine has nothing to compile (it is "
                               "torch's); the loss runs as ONNX Runtime runs it."))

    def load(self, plan):
        if self.model is None:
            self.model = load_onnx_model(self.source, self.config.device)
        self.device = self.model.device
        return self.model

    def noise(self, height: int, width: int) -> np.ndarray:
        return self.pixels(self.rng.random((height, width, 3), dtype=np.float32))

    @staticmethod
    def pixels(array: np.ndarray) -> np.ndarray:
        """[H,W,3] -> the engine's pixels [1,3,H,W]; [H,W] (a guide) -> [1,1,H,W]."""
        if array.ndim == 2:
            array = array[..., None]
        return np.ascontiguousarray(array.transpose(2, 0, 1)[None], np.float32)

    def resize(self, x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """The previous level's pixels at this level's size (not clipped)."""
        if x.shape[-2:] == tuple(size):
            return x
        return self.pixels(resize_array(x[0].transpose(1, 2, 0), *size, clip=False))

    @staticmethod
    def image(x: np.ndarray) -> np.ndarray:
        """[1,3,H,W] pixels -> [H,W,3] clipped to 0..1."""
        return np.clip(x[0].transpose(1, 2, 0), 0.0, 1.0)

    @staticmethod
    def copy(x: np.ndarray) -> np.ndarray:
        return x.copy()

    @staticmethod
    def compiles(level) -> bool:
        """Never: the torch-free engine has no compiler."""
        return False

    def run_level(self, level, x, content_rgb, styles, masks, report, cancel):
        """The level's targets and the minimised pixels; returns (pixels, evaluations)."""
        size, side, config = level.size, level.crop_side, self.config
        content_feat, terms = self.terms(content_rgb, styles, size, masks, not side)
        history = tiling.LBFGS_HISTORY
        if side:
            self.log(f"{level.picture[1]}x{level.picture[0]} px is optimised in {side} px tiles.")
            self.objective = TiledOnnxObjective(self.model, resize_array(content_rgb, *size), terms,
                                                side, config, self.rng, cancel)
            history = tiling.TILED_HISTORY
        else:
            self.objective = OnnxObjective(self.model, content_feat, terms, config)
        return minimise(self.objective, x, level.evaluations, config, report, cancel,
                        config.schedule_value("tolerance"), history)

    def terms(self, content, styles, size, masks, content_features: bool = True):
        """Content features (or None) and style terms at one level (targets.region_targets'
        rules, in numpy)."""
        config = self.config
        content_feat, grams = target_arrays(self.model, content, styles, size, config,
                                            content_features)
        at_size = [resize_array(m, *size) for m in masks]
        if len(masks) <= 1:
            return content_feat, [(grams, 1.0, at_size[0] if at_size else None)]
        single = config.with_(style_blend=None)
        terms = []
        for weight, style, mask in zip(blend_weights(len(styles), config), styles, at_size):
            _, style_grams = target_arrays(self.model, content, [style], size, single,
                                           content_features=False)
            terms.append((style_grams, weight * len(styles), mask))
        return content_feat, terms

    def measure(self, result: np.ndarray, content_at_size: np.ndarray, tiled: bool) -> dict:
        """The final figures of the delivered image (the gradient graph's loss, float32)."""
        total, parts, _ = self.objective(self.pixels(result), release=True)  # the run's last call
        metrics = {"total_loss": total, "content_loss": parts["content"],
                   "style_loss": parts["style"],
                   "style_loss_per_layer": {n: parts[n] for n in STYLE_LAYERS},
                   "tv_loss": parts["tv"], "device": "cpu", "precision": "float32",
                   "engine": "onnx", "compiled": False, "compile_seconds": 0.0,
                   "compile_cold": False}
        if tiled:
            metrics["seam_ratio"] = tiling.seam_ratio(result, [self.objective.cores])
        return metrics
