"""Every parameter of a stylization, with its default and meaning: the one place for defaults.

The CLI builds its options from these fields (help text included), the API takes a `Config`, and
the GIMP plug-ins get theirs from the settings `stylefu gimp install` writes
(plugin/installer.py, `plugin_settings`); nothing copies a default elsewhere.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace

from ..errors import UserError
from ..io.files import path_kind
from ..network.vgg import CONTENT_LAYER, EXPORTED_LAYERS, MIN_SIDE, STYLE_LAYERS

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# The dtypes' own names (docs and torch say float32) mean the same precisions.
PRECISION_SPELLINGS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
OPTIMIZERS = ("lbfgs", "adam")
DEVICES = ("auto", "cpu", "cuda")
COLOR_MODES = ("none", "luminance", "histogram")
COMPILE_MODES = ("auto", "on", "off")
ENGINES = ("auto", "torch", "onnx")
# Crops are cut on a 16 px grid; below 32 px a crop would hold almost no core and no context.
MIN_CROP_SIDE = 32

# Presets map a word users understand to a measured schedule (see docs/speed.md):
# `levels` coarse-to-fine levels, each half the size of the next; `evaluations` loss+gradient
# evaluations at the full size; coarser levels get `coarse_evaluations` each (they cost 4x less
# per halving); `tolerance` ends a level early once the loss stops falling (engines/steps.py, should_stop).
PRESETS = {
    "draft": {"levels": 3, "evaluations": 30, "coarse_evaluations": 60, "tolerance": 1e-3},
    "normal": {"levels": 3, "evaluations": 110, "coarse_evaluations": 40, "tolerance": 1e-3},
    "best": {"levels": 3, "evaluations": 500, "coarse_evaluations": 200, "tolerance": 1e-4},
}
SCHEDULE_FIELDS = ("levels", "evaluations", "coarse_evaluations", "tolerance")
DEFAULT_PRESET = "normal"

# The plain loss (docs/method.md: alpha*content + beta*style, layers summed): its weights when some
# but not all of --content-weight, --style-weight, --style-layer-weights are given.
PLAIN_CONTENT_WEIGHT = 1.0
PLAIN_STYLE_WEIGHT = 1e6
# --strength (0..100): STRENGTH_NEUTRAL is the balanced default; 0 is the photo, 100 about 25
# times the neutral style weight (core/method/balance.py, style_weight_for).
STRENGTH_NEUTRAL = 50.0
STRENGTH_RANGE = (0.0, 100.0)

# What each number may be: (lowest, highest, whole number?); beyond these a run is nonsense or
# overflows (a weight of 1e30 turns the float32 loss infinite), so it is refused before any work.
MAX_EVALUATIONS = 100_000  # about a day at 512 px on a CPU
MAX_WEIGHT = 1e12  # loss weights: the default beta is 1e6, six orders of magnitude of room
MAX_RELATIVE_WEIGHT = 1e6  # per-layer and per-style weights (relative to each other)
NUMBER_RANGES = {
    "size": (MIN_SIDE, 1 << 31, True),  # the real upper limit is the memory's (check_memory)
    "evaluations": (1, MAX_EVALUATIONS, True),
    "levels": (1, 16, True),
    "coarse_evaluations": (0, MAX_EVALUATIONS, True),
    "tolerance": (0.0, 0.999, False),
    "content_weight": (0.0, MAX_WEIGHT, False),
    "style_weight": (0.0, MAX_WEIGHT, False),
    "tv_weight": (0.0, MAX_WEIGHT, False),
    "learning_rate": (1e-6, 1.0, False),  # a step above 1 jumps across the whole 0..1 range
    "style_scale": (0.05, 8.0, False),
    "strength": (*STRENGTH_RANGE, False),
    "seed": (0, 2**63 - 1, True),
    "crop_side": (0, 1 << 16, True),
    "save_every": (0, MAX_EVALUATIONS, True),
}


def check_number(name: str, value, low, high, integer: bool) -> None:
    """UserError naming --NAME unless `value` is a finite number (whole if `integer`) in low..high."""
    option = "--" + name.replace("_", "-")
    kind = numbers.Integral if integer else numbers.Real
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UserError(f"{option} must be a {'whole ' if integer else ''}number, not {value!r}.")
    if not integer and not math.isfinite(value):
        raise UserError(f"{option} must be a finite number, not {value}.")
    shown = f"{value:.6g}" if not integer else str(value) if abs(value) < 10**15 else \
        f"a {len(str(abs(value)))}-digit number"
    if value < low:
        raise UserError(f"{option} must not be negative, not {shown}." if low == 0 else
                        f"{option} must be at least {low:g}, not {shown}.")
    if value > high:
        raise UserError(f"{option} must be at most {high if integer else f'{high:g}'}, not {shown}.")


def _f(default, help_text, **extra):
    """A dataclass field carrying its one-line meaning (shown by `--help` and the GIMP dialog);
    `aliases` are older CLI spellings that keep working; `spellings` map other names of a
    choice to it."""
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
    strength: float | None = _f(None, "style strength 0..100, 50 balanced on every model (each "
                                "loss term divided by its target's magnitude); 0 is the photo, "
                                "equal steps paint about equally more "
                                f"(default: {STRENGTH_NEUTRAL:g} unless a weight below is given)")
    content_weight: float | None = _f(None, "alpha: weight of the content loss (relu4_2 MSE); "
                                      "any of the three weights selects the plain loss (default: "
                                      f"{PLAIN_CONTENT_WEIGHT:g} there, else from --strength)")
    style_weight: float | None = _f(None, "beta: weight of the style loss (Gram MSE, summed over "
                                    f"layers) (default: {PLAIN_STYLE_WEIGHT:g} in the plain loss, "
                                    "else from --strength)")
    tv_weight: float = _f(0.0, "gamma: weight of the total-variation loss (against noise)")
    style_layer_weights: tuple[float, ...] | None = _f(
        None, "weight per style layer " + ",".join(STYLE_LAYERS) + " (default: equal, 1 each "
        "in the plain loss)")
    content_layer: str = _f(CONTENT_LAYER, "layer whose activations define the content",
                            choices=EXPORTED_LAYERS)
    optimizer: str = _f("lbfgs", "optimiser: lbfgs (the paper's) or adam", choices=OPTIMIZERS)
    learning_rate: float = _f(0.02, "Adam's step size on 0..1 pixels (L-BFGS uses 1)")
    init: str = _f("content", "start image: content, noise, or an image path")
    seed: int = _f(0, "random seed: the same seed and inputs give the same bytes on the same machine")
    device: str = _f("auto", "auto (CUDA if available), cpu or cuda", choices=DEVICES)
    precision: str = _f("auto", "convolution precision; losses are float32 (auto: bf16 where "
                        "the hardware has it; float32, bfloat16, float16 also taken)",
                        choices=PRECISIONS, spellings=PRECISION_SPELLINGS)
    preserve_colors: str = _f("none", "keep the content's colours: none, luminance, histogram",
                              choices=COLOR_MODES)
    style_scale: float = _f(1.0, "style image size relative to the working size (brush size)")
    style_blend: tuple[float, ...] | None = _f(None, "blend weight per style (default: equal)")
    crop_side: int = _f(0, "side in px of the crops a huge image is optimised in (0: automatic)",
                        aliases=("--tile-size",))
    save_every: int = _f(0, "save the current image every N evaluations beside -o (0: never; "
                            "sparser where writing them would take over a tenth of the run); "
                            "`stylefu run` only: the Python API warns and writes none")
    engine: str = _f("auto", "gradient engine: torch, or onnx (ONNX Runtime and numpy, float32, "
                     "no torch needed); auto: torch wherever it is installed (as fast or faster "
                     "on every CPU and GPU measured), else onnx", choices=ENGINES)
    compile: str = _f("auto", "compile the loss with torch.compile: auto (where the run is long "
                      "enough to pay), on, off", choices=COMPILE_MODES)

    @property
    def plain_loss(self) -> bool:
        """True when the user gave a loss weight: the plain loss (docs/method.md), weights as given."""
        return any(v is not None for v in (self.content_weight, self.style_weight,
                                           self.style_layer_weights))

    def schedule_value(self, name: str):
        """A SCHEDULE_FIELDS entry: the explicit value, else the preset's."""
        value = getattr(self, name)
        return PRESETS[self.preset][name] if value is None else value

    @property
    def paints_nothing(self) -> bool:
        """True when the loss has its minimum at the run's start, the content: no style term
        (--strength 0, the photo, or --style-weight 0) and no TV term. Such a run returns the
        content from one level without an evaluation (every one would only chase float noise)."""
        style = self.style_weight if self.plain_loss else self.strength
        return style == 0 and not self.tv_weight and self.init == "content"

    def planned_levels(self) -> int:
        """How many levels, coarse to fine, the run plans at most (one where it paints nothing)."""
        return 1 if self.paints_nothing else self.schedule_value("levels")

    def level_evaluations(self, final: bool) -> int:
        """A level's evaluation budget: the final level's, or a coarser one's."""
        if self.paints_nothing:
            return 0
        return self.schedule_value("evaluations" if final else "coarse_evaluations")

    def validate(self) -> Config:
        """Raise UserError with one clear sentence for any value a run cannot use.

        Every number must be finite and inside NUMBER_RANGES (the message names the option);
        the size's upper limit is the memory's, checked once the image is known
        (tiling.check_memory).
        """
        if not isinstance(self.preset, str) or self.preset not in PRESETS:
            raise UserError(f"Unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}.")
        for name, (low, high, integer) in NUMBER_RANGES.items():
            value = self.schedule_value(name) if name in SCHEDULE_FIELDS else getattr(self, name)
            # None: chosen later (e.g. by --strength), where the field's default is None too
            if value is not None or name not in OPTIONAL_FIELDS:
                check_number(name, value, low, high, integer)
        if self.content_weight == 0 and self.style_weight == 0:
            raise UserError("--content-weight and --style-weight cannot both be zero.")
        if self.strength is not None:
            low, high = STRENGTH_RANGE
            if not low <= self.strength <= high:
                raise UserError(f"--strength must be from {low:g} to {high:g}, not {self.strength:g}.")
            if self.plain_loss:
                raise UserError("--strength sets the balance of the normalised loss; give either "
                                "--strength or --content-weight/--style-weight/--style-layer-weights.")
        if self.precision in PRECISION_SPELLINGS:
            return replace(self, precision=PRECISION_SPELLINGS[self.precision]).validate()
        for name, allowed in (("optimizer", OPTIMIZERS), ("device", DEVICES),
                              ("precision", PRECISIONS), ("preserve_colors", COLOR_MODES),
                              ("engine", ENGINES), ("content_layer", EXPORTED_LAYERS),
                              ("compile", COMPILE_MODES)):  # compile=False once meant "on"
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                raise UserError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                f"not {value!r}.")
        for name in ("style_layer_weights", "style_blend"):
            values = getattr(self, name)
            if values is None:
                continue
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                raise UserError(f"--{name.replace('_', '-')} must be a list of numbers, not "
                                f"{values!r}.")  # a lone 1.0 was "'float' object is not iterable"
            if name == "style_layer_weights" and len(values) != len(STYLE_LAYERS):
                raise UserError(f"--style-layer-weights needs {len(STYLE_LAYERS)} numbers "
                                f"({', '.join(STYLE_LAYERS)}).")
            # Layer weights are loss weights (--strength's record of them reaches 1e6 and more).
            high = MAX_WEIGHT if name == "style_layer_weights" else MAX_RELATIVE_WEIGHT
            for value in values:
                check_number(name, value, 0.0, high, False)
            if not sum(values):
                raise UserError(f"--{name.replace('_', '-')} must be non-negative, not all zero.")
        if self.crop_side != 0 and self.crop_side < MIN_CROP_SIDE:
            raise UserError(f"--crop-side must be 0 (automatic) or at least {MIN_CROP_SIDE} px, "
                            f"not {self.crop_side}.")
        if isinstance(self.init, (bytes, os.PathLike)):  # a path object from Python: its text
            return replace(self, init=os.fsdecode(self.init)).validate()
        if not isinstance(self.init, str):  # its type: an array's repr is many lines of digits
            raise UserError(f"--init must be content, noise or an image path, not "
                            f"{type(self.init).__name__}.")
        if self.init not in ("content", "noise"):
            kind = path_kind(self.init)
            if kind == "file":
                return self
            raise UserError(f"--init must be content, noise or an image file, and {self.init} "
                            + ("does not exist." if kind == "missing" else f"is {kind}."))
        return self

    def with_(self, **changes) -> Config:
        return replace(self, **changes)


# help(Config) says what each field means, as `stylefu run --help` does (the signature alone
# shows names and defaults); none under `python -OO`, which drops docstrings.
if Config.__doc__:
    Config.__doc__ += "\n\nFields:\n" + "\n".join(
        f"    {f.name}: {f.metadata['help']}" for f in fields(Config))

# Fields a run may leave unset (None: the preset's, or chosen from --strength); no other is None.
OPTIONAL_FIELDS = frozenset(f.name for f in fields(Config) if f.default is None)


def unknown_field(name: str) -> str:
    """Why Config has no field `name`, with the field meant: a renamed field whose old spelling
    the command line still takes (Config(iterations=...), docs/compat.md) or a close name."""
    import difflib

    older = {alias.lstrip("-").replace("-", "_"): f.name
             for f in fields(Config) for alias in f.metadata.get("aliases", ())}
    if name in older:
        return (f"Config has no field {name!r}: it was renamed {older[name]} (the command line "
                f"still takes --{name.replace('_', '-')}).")
    close = difflib.get_close_matches(name, sorted(_FIELD_NAMES), n=1)
    return f"Config has no field {name!r}; " + (f"did you mean {close[0]}?" if close else
                                                 "help(Config) lists its fields.")


_dataclass_init = Config.__init__


@functools.wraps(_dataclass_init)
def _init(self, *args, **kwargs):
    for name in kwargs:  # else "unexpected keyword argument", without the field meant
        if name not in _FIELD_NAMES:
            raise TypeError(unknown_field(name))
    _dataclass_init(self, *args, **kwargs)


_FIELD_NAMES = frozenset(f.name for f in fields(Config))
Config.__init__ = _init

# The Python API's word for Config.save_every, which only `stylefu run` acts on (its callback
# writes the images beside -o; stylize() knows no output path).
SAVE_EVERY_IN_API = ("Config.save_every is `stylefu run --save-every`'s: stylize(), stylize_many() "
                     "and preview() write no images during a run (save progress.image() from a "
                     "stylize() callback instead)")


def given_config(config, default: Config | None = None) -> Config:
    """The Python API's `config=` (None: `default`, else Config()), validated: a dict or another
    object is one sentence, not an AttributeError from inside. A `save_every` is warned of (at
    the API's caller's line) and dropped, so a Config shared with the CLI still runs."""
    if config is None:
        config = default or Config()
    if not isinstance(config, Config):
        raise UserError(f"config must be a stylefu.core.Config (e.g. Config(size=512)), not "
                        f"{type(config).__name__}.")
    config = config.validate()
    if config.save_every:
        warnings.warn(SAVE_EVERY_IN_API, UserWarning, stacklevel=_outside_stylefu())
        config = replace(config, save_every=0)
    return config


# stylefu.core's folder: frames in files under it are the library's, not its caller's.
_CORE_FOLDER = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _outside_stylefu() -> int:
    """warnings.warn's stacklevel (from its caller) of the first frame outside stylefu.core: the
    API's caller, however many of the library's frames lie between (decorators included)."""
    import sys

    frame, level = sys._getframe(2), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_CORE_FOLDER):
        frame, level = frame.f_back, level + 1
    return level


def config_fields():
    """The fields of Config, with defaults and help, for the CLI and plug-in dialogs."""
    return fields(Config)
