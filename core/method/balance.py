"""The default style/content balance (`--strength`), the same on every model.

Feature magnitudes differ by orders of magnitude between networks, weights and preprocessing
(ImageNet VGG19 with mean/std, a trained VGG16 on plain 0..1 input, random weights), so one
`--style-weight` is a different balance on each. The default loss therefore divides each term by
its target's magnitude: the content loss by the mean square of the content features, each style
layer's loss by the mean square of its target Gram matrix (a relative error, which a per-layer
scale of the features leaves unchanged), the layers averaged:

    loss = content / mean(P^2) + beta(strength) * mean over layers of style_l / mean(A_l^2)

beta grows with the square of strength / 50 up to the neutral 50 and faster above it, so that equal
steps of the slider look like about equal steps of painting (docs/method.md, "The strength scale").

That is the plain loss (docs/method.md) with particular weights, so `normalised_weights` returns them as
a Config with content_weight, style_weight and style_layer_weights set: the optimisers, metrics
and tiles see one formula. An explicit weight (`Config.plain_loss`) keeps the plain loss as given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..network.vgg import STYLE_LAYERS
from .config import PLAIN_CONTENT_WEIGHT, PLAIN_STYLE_WEIGHT, STRENGTH_NEUTRAL, Config

if TYPE_CHECKING:
    import torch


# beta at strength 50: the style term's weight against the content term's, both relative errors.
# Chosen on trained VGG16 features (docs/method.md, "Calibration on trained features"): a cat
# photo painted with a stroke style stays a readable cat while the style's texture covers it.
BALANCED_STYLE_WEIGHT = 3.0
# Above the neutral strength beta also gains 10 ** (this * (s/50 - 1)^2): the photo fades out there
# (76 at 100; beyond about 50-100 the painting no longer changes visibly).
UPPER_STEEPNESS = 0.8


def style_weight_for(strength: float | None) -> float:
    """beta of the normalised loss for a strength 0..100 (None: the neutral 50): 0 at 0 (the
    photo), 0.12 at 10, 1.08 at 30, 3 at 50, 7.9 at 70, 76 at 100."""
    x = (STRENGTH_NEUTRAL if strength is None else strength) / STRENGTH_NEUTRAL
    return BALANCED_STYLE_WEIGHT * x * x * 10.0 ** (UPPER_STEEPNESS * max(0.0, x - 1.0) ** 2)


def detail_kept(strength: float | None) -> float:
    """The share of the content's fine detail a finer level adds to its start, the coarser
    level's result enlarged (which a weak style term leaves blurred: the content loss's deep
    layer cannot sharpen it again): all of it at strength 0, none from the neutral 50 up."""
    strength = STRENGTH_NEUTRAL if strength is None else strength
    return float(np.clip((STRENGTH_NEUTRAL - strength) / STRENGTH_NEUTRAL, 0.0, 1.0))


def _mean_square(values) -> float:
    """Mean square of a torch tensor or numpy array, in float64."""
    values = values.detach().cpu().numpy() if hasattr(values, "detach") else values
    return max(float(np.mean(np.square(values, dtype=np.float64))), 1e-30)


def normalised_weights(config: Config, content_features: torch.Tensor,
                       grams: dict[str, torch.Tensor]) -> Config:
    """`config` with every loss weight set: the plain loss's defaults for weights left out when
    `config.plain_loss`, else the normalised loss's weights for `config.strength` from these
    targets (content features at the content layer, style Gram targets per style layer)."""
    if config.plain_loss:
        return config.with_(
            content_weight=PLAIN_CONTENT_WEIGHT if config.content_weight is None else config.content_weight,
            style_weight=PLAIN_STYLE_WEIGHT if config.style_weight is None else config.style_weight,
            style_layer_weights=config.style_layer_weights or (1.0,) * len(STYLE_LAYERS))
    layers = tuple(1.0 / (len(STYLE_LAYERS) * _mean_square(grams[n])) for n in STYLE_LAYERS)
    return config.with_(content_weight=1.0 / _mean_square(content_features),
                        style_weight=style_weight_for(config.strength),
                        style_layer_weights=layers, strength=None)


def weights_record(config: Config) -> dict:
    """The plain-loss weights a run used, for its metrics (rerunning with them gives the same loss)."""
    return {"content_weight": config.content_weight, "style_weight": config.style_weight,
            "style_layer_weights": list(config.style_layer_weights)}
