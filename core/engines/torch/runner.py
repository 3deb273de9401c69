"""The torch engine's part of a run (run/pipeline.py owns the level loop): the model on its
device, the precision, whether to compile, and per level the targets and the optimiser, on the
whole image or in tiles when memory asks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ... import notes
from ...io.images import resize_array, to_array, to_tensor
from ...method import tiling
from ...method.objective import Objective, evaluate
from ...method.targets import region_targets
from .optimise import optimise, optimise_tiled

if TYPE_CHECKING:
    import torch


class TorchRunner:
    name = "torch"

    def __init__(self, model, config, log):
        from .model import StyleModel, resolve_device

        self.model = model if isinstance(model, StyleModel) else None
        self.source, self.config, self.log = model, config, log
        # Known before the model loads, so a run too large for memory fails before that.
        self.device = self.model.device if self.model else resolve_device(config.device)
        self.compiled, self.compile_started, self.last, self.cold = False, 0.0, None, False

    def check(self, content, styles) -> None:
        from .model import resolve_precision

        resolve_precision(self.config.precision, self.device)  # fp16 on a CPU: before the load
        tiling.check_memory(content, styles, self.config, self.device)

    def load(self, plan):
        """Load the model, choose the precision and (once per run) whether to compile."""
        import torch

        from .compiled import cache_is_cold, compile_seconds, should_compile, whole_image_levels
        from .model import cpu_has_fast_bf16, load_model, resolve_precision

        if self.model is None:
            self.model = load_model(self.source, self.config.device)
        self.device = self.model.device
        self.dtype = resolve_precision(self.config.precision, self.device)
        if self.dtype == torch.bfloat16 and self.device.type == "cpu" and not cpu_has_fast_bf16():
            self.log(notes.act("this CPU has no AVX512-BF16 or AMX: bf16 is emulated, about 20x "
                               "slower than --precision fp32 (which --precision auto takes here)."))
        torch.manual_seed(self.config.seed)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.cold = cache_is_cold()  # before compiling fills it: run/eta.py keeps the two apart
        self.compiled = should_compile(self.config.compile, self.device, self.dtype,
                                       whole_image_levels(plan), self.log)
        self.compile_started = compile_seconds()
        return self.model

    def noise(self, height: int, width: int) -> torch.Tensor:
        import torch

        return torch.rand((1, 3, height, width), generator=self.generator)

    def pixels(self, array: np.ndarray) -> torch.Tensor:
        """[H,W,3] -> the engine's pixels [1,3,H,W]; [H,W] (a guide) -> [1,1,H,W]."""
        if array.ndim == 2:
            array = array[..., None]
        return to_tensor(np.ascontiguousarray(array)).to(self.device)

    def resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The previous level's pixels at this level's size (bilinear, not clipped)."""
        import torch

        return torch.nn.functional.interpolate(x, size=size, mode="bilinear",
                                               align_corners=False).to(self.device)

    @staticmethod
    def image(x: torch.Tensor) -> np.ndarray:
        return to_array(x)

    @staticmethod
    def copy(x: torch.Tensor) -> torch.Tensor:
        return x.detach().clone()

    def compiles(self, level) -> bool:
        """Whether `level`'s evaluations run compiled (known once `load` has decided; after a
        compiler failure this process runs eager)."""
        from .compiled import failure, level_runs_compiled

        return level_runs_compiled(self.compiled and not failure(), self.config.compile, level)

    def run_level(self, level, x, content_rgb, styles, masks, report, cancel):
        """The level's targets and the optimised pixels; returns (pixels, evaluations)."""
        config, size, side = self.config, level.size, level.crop_side
        if side:
            need = tiling.torch_bytes(*size, config.optimizer) / 1e9
            why = ("--crop-side" if config.crop_side else
                   f"about {need:.1f} GB needed at once, "
                   f"{tiling.torch_budget(self.device) / 1e9:.1f} GB usable")
            self.log(f"{level.picture[1]}x{level.picture[0]} px is optimised in {side} px tiles "
                     f"({why}).")
        targets = region_targets(self.model, content_rgb, styles, size, config, masks,
                                 content_features=not side)
        tolerance = config.schedule_value("tolerance")
        if side:
            run = optimise_tiled(self.model, x, resize_array(content_rgb, *size), targets, side,
                                 level.evaluations, config, self.dtype, report, cancel,
                                 self.generator, tolerance)
        else:
            run = optimise(Objective(self.model, targets, config, self.dtype), x,
                           level.evaluations, config, report, cancel, tolerance,
                           compiled=self.compiles(level),
                           log=self.log)
        self.last = (run, targets)
        return run.image, run.evaluations

    def measure(self, result: np.ndarray, content_at_size: np.ndarray, tiled: bool) -> dict:
        """The final figures of the delivered image (ONNX Runtime, float32) and the record."""
        from .compiled import compile_seconds, failure

        run, targets = self.last
        metrics = evaluate(self.model, result, targets, self.config, content_at_size)
        metrics.update(device=str(self.device), precision=str(self.dtype).replace("torch.", ""),
                       engine="torch", compiled=self.compiled and not failure(),
                       compile_seconds=round(compile_seconds() - self.compile_started, 3),
                       compile_cold=self.compiled and self.cold)
        if tiled:
            metrics["seam_ratio"] = tiling.seam_ratio(result, [run.cores])
        return metrics
