"""Every parameter of a stylization, with its default and meaning: the one place for defaults.

The CLI builds its options from these fields (help text included), the API takes a `Config`, and
the GIMP plug-ins get theirs from the settings `stylefu gimp install` writes
(plugin/installer.py, `plugin_settings`); nothing copies a default elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .errors import UserError
from .vgg import CONTENT_LAYER, EXPORTED_LAYERS, MIN_SIDE, STYLE_LAYERS

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("lbfgs", "adam")
DEVICES = ("auto", "cpu", "cuda")
COLOR_MODES = ("none", "luminance", "histogram")
# Crops are cut on a 16 px grid; below 32 px a crop would hold almost no core and no context.
MIN_CROP_SIDE = 32

# Presets map a word users understand to a measured schedule (see README, "Speed"):
# `levels` coarse-to-fine levels, each half the size of the next; `evaluations` loss+gradient
# evaluations at the full size; coarser levels get `coarse_evaluations` each (they cost 4x less
# per halving); `tolerance` ends a level early once the loss stops falling (optimise.should_stop).
PRESETS = {
    "draft": {"levels": 3, "evaluations": 30, "coarse_evaluations": 60, "tolerance": 1e-3},
    "normal": {"levels": 3, "evaluations": 110, "coarse_evaluations": 80, "tolerance": 1e-3},
    "best": {"levels": 3, "evaluations": 500, "coarse_evaluations": 200, "tolerance": 1e-4},
}
SCHEDULE_FIELDS = ("levels", "evaluations", "coarse_evaluations", "tolerance")
DEFAULT_PRESET = "normal"


def _f(default, help_text, **extra):
    """A dataclass field carrying its one-line meaning (shown by `--help` and the GIMP dialog);
    `aliases` are older CLI spellings that keep working."""
    return field(default=default, metadata={"help": help_text, **extra})


@dataclass
class Config:
    """Parameters of one stylization. Defaults reproduce the paper's method, made fast."""

    size: int = _f(512, "long side of the result in pixels (the content's aspect ratio is kept)")
    preset: str = _f(DEFAULT_PRESET, "quality/speed preset: " + ", ".join(PRESETS),
                     choices=tuple(PRESETS))
    evaluations: int | None = _f(None, "optimiser evaluations (loss and gradient) at full size",
                                 aliases=("--iterations",))
    levels: int | None = _f(None, "coarse-to-fine levels, each half the next", aliases=("--scales",))
    coarse_evaluations: int | None = _f(None, "evaluations per coarser level",
                                        aliases=("--coarse-iterations",))
    tolerance: float | None = _f(None, "stop a level early when its loss fell by less than this "
                                 "fraction over the last 10 evaluations (0: never)")
    content_weight: float = _f(1.0, "alpha: weight of the content loss (relu4_2 MSE)")
    style_weight: float = _f(1e6, "beta: weight of the style loss (Gram MSE, summed over layers)")
    tv_weight: float = _f(0.0, "gamma: weight of the total-variation loss (against noise)")
    style_layer_weights: tuple[float, ...] | None = _f(
        None, "weight per style layer " + ",".join(STYLE_LAYERS) + " (default: equal)")
    content_layer: str = _f(CONTENT_LAYER, "layer whose activations define the content",
                            choices=EXPORTED_LAYERS)
    optimizer: str = _f("lbfgs", "optimiser: lbfgs (the paper's) or adam", choices=OPTIMIZERS)
    learning_rate: float = _f(0.02, "Adam's step size on 0..1 pixels (L-BFGS uses 1)")
    init: str = _f("content", "start image: content, noise, or an image path")
    seed: int = _f(0, "random seed: the same seed and inputs give the same bytes on the same machine")
    device: str = _f("auto", "auto (CUDA if available), cpu or cuda", choices=DEVICES)
    precision: str = _f("auto", "convolution precision; losses are float32 (auto: bf16 where "
                        "the hardware has it)", choices=PRECISIONS)
    preserve_colors: str = _f("none", "keep the content's colours: none, luminance, histogram",
                              choices=COLOR_MODES)
    style_scale: float = _f(1.0, "style image size relative to the working size (brush size)")
    style_blend: tuple[float, ...] | None = _f(None, "blend weight per style (default: equal)")
    crop_side: int = _f(0, "side in px of the crops a huge image is optimised in (0: automatic)",
                        aliases=("--tile-size",))
    save_every: int = _f(0, "save the current image every N evaluations (0: never)")

    def schedule_value(self, name: str):
        """A SCHEDULE_FIELDS entry: the explicit value, else the preset's."""
        value = getattr(self, name)
        return PRESETS[self.preset][name] if value is None else value

    def validate(self) -> Config:
        """Raise UserError with one clear sentence for any value a run cannot use."""
        if self.preset not in PRESETS:
            raise UserError(f"Unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}.")
        if self.size < MIN_SIDE:
            raise UserError(f"--size must be at least {MIN_SIDE} px, not {self.size}.")
        for name in ("evaluations", "levels"):
            if self.schedule_value(name) < 1:
                raise UserError(f"--{name} must be a positive number.")
        if self.schedule_value("coarse_evaluations") < 0:
            raise UserError("--coarse-evaluations must not be negative.")
        if not 0 <= self.schedule_value("tolerance") < 1:
            raise UserError("--tolerance must be a fraction from 0 (never stop early) up to 1.")
        for name in ("content_weight", "style_weight", "tv_weight", "learning_rate",
                     "style_scale"):
            value = getattr(self, name)
            if not value >= 0 or (value == 0 and name in ("learning_rate", "style_scale")):
                raise UserError(f"--{name.replace('_', '-')} must be positive, not {value}.")
        if self.content_weight == 0 and self.style_weight == 0:
            raise UserError("--content-weight and --style-weight cannot both be zero.")
        for name, allowed in (("optimizer", OPTIMIZERS), ("device", DEVICES),
                              ("precision", PRECISIONS), ("preserve_colors", COLOR_MODES)):
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}.")
        if self.style_layer_weights is not None:
            if len(self.style_layer_weights) != len(STYLE_LAYERS):
                raise UserError(f"--style-layer-weights needs {len(STYLE_LAYERS)} numbers "
                                f"({', '.join(STYLE_LAYERS)}).")
            if any(w < 0 for w in self.style_layer_weights) or not sum(self.style_layer_weights):
                raise UserError("--style-layer-weights must be non-negative, not all zero.")
        if self.init not in ("content", "noise") and not Path(self.init).is_file():
            raise UserError(f"--init must be content, noise or an existing image, not {self.init!r}.")
        if self.save_every < 0:
            raise UserError("--save-every must not be negative.")
        if self.crop_side != 0 and self.crop_side < MIN_CROP_SIDE:
            raise UserError(f"--crop-side must be 0 (automatic) or at least {MIN_CROP_SIDE} px, "
                            f"not {self.crop_side}.")
        return self

    def with_(self, **changes) -> Config:
        return replace(self, **changes)


def config_fields():
    """The fields of Config, with defaults and help, for the CLI and plug-in dialogs."""
    return fields(Config)
