"""The loss: one specification of how its parts combine, the torch objective that optimisers
differentiate, and the final figures that ONNX Runtime measures.

total = content_weight * content + style_weight * style + tv_weight * tv, where style is the sum
over style layers of layer weight * (sum over style terms of term weight * Gram MSE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import NumericalError
from ..io.images import to_tensor
from ..network.vgg import STYLE_LAYERS, layer_masks
from . import tiling
from .config import PLAIN_CONTENT_WEIGHT, PLAIN_STYLE_WEIGHT, Config

if TYPE_CHECKING:
    import torch

    from ..engines.torch.model import StyleModel
    from .targets import Targets


NAN_MESSAGE = ("The loss became NaN or infinite; lower --style-weight or --learning-rate, "
               "or use --precision fp32.")
# The torch-free engine computes in float32 already; its gradient graph, damaged on disk, gives
# NaN too (a damaged file of the same size loads).
NAN_MESSAGE_ONNX = ("The loss became NaN or infinite; lower --style-weight or --learning-rate "
                    "(a damaged gradient graph does this too: `stylefu cache prune --max-mb 0` "
                    "removes the cached ones).")


def check_finite(total, message: str = NAN_MESSAGE) -> None:
    """NumericalError (one sentence, with the fix) when the loss (a tensor or number) diverged."""
    if not math.isfinite(float(total.detach() if hasattr(total, "detach") else total)):
        raise NumericalError(message)


@dataclass(frozen=True)
class LossSpec:
    """The weights of the loss and the layers an optimiser must compute for it."""

    content_weight: float
    style_weight: float
    tv_weight: float
    layer_weights: dict[str, float]
    content_layer: str

    @classmethod
    def from_config(cls, config: Config) -> LossSpec:
        """The config's weights; any left unset (stylize() sets them from --strength, see
        balance.py) are the plain loss's defaults, so a direct Objective is docs/method.md's plain loss."""
        weights = config.style_layer_weights or (1.0,) * len(STYLE_LAYERS)
        content = PLAIN_CONTENT_WEIGHT if config.content_weight is None else config.content_weight
        style = PLAIN_STYLE_WEIGHT if config.style_weight is None else config.style_weight
        return cls(content, style, config.tv_weight, dict(zip(STYLE_LAYERS, weights)),
                   config.content_layer)

    @property
    def style_layers(self) -> tuple[str, ...]:
        """Style layers that contribute (their weight and the style weight above zero)."""
        if self.style_weight <= 0:
            return ()
        return tuple(n for n in STYLE_LAYERS if self.layer_weights[n] > 0)

    @property
    def uses_content(self) -> bool:
        return self.content_weight > 0

    @property
    def layers(self) -> tuple[str, ...]:
        """Every layer the network must compute for the loss."""
        return self.style_layers + ((self.content_layer,) if self.uses_content else ())

    def style(self, per_layer: dict, zero=0.0):
        """The style loss from per-layer losses (tensors or floats)."""
        return sum((self.layer_weights[n] * v for n, v in per_layer.items()), zero)

    def total(self, content, style, tv):
        return self.content_weight * content + self.style_weight * style + self.tv_weight * tv


class Objective:
    """Total loss of a whole image held in memory, with its parts, for torch's optimisers."""

    def __init__(self, model: StyleModel, targets: Targets, config: Config, dtype: torch.dtype):
        self.net, self.targets, self.config, self.dtype = model.net_in(dtype), targets, config, dtype
        self.device = model.device
        self.spec = LossSpec.from_config(config)
        self.layers = self.spec.layers
        # Per term, the guide at each style layer's resolution; layers where a term's region is
        # empty are left out of that term.
        self.terms = []
        for term in targets.style_terms():
            pooled = None
            if term.mask is not None:
                pooled = layer_masks(term.mask.float(), STYLE_LAYERS)
                pooled = {n: m for n, m in pooled.items() if float(m.sum()) > 1e-6}
            self.terms.append((term, pooled))

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # channels_last convolutions are faster; the optimised image stays NCHW because
        # torch.optim.LBFGS cannot view a channels_last parameter.
        import torch

        from . import losses

        x = image.contiguous(memory_format=torch.channels_last)
        feats = self.net(x, self.layers)
        spec, zero = self.spec, image.new_zeros(())
        parts = {"content": zero, "style": zero, "tv": zero}
        if spec.uses_content:
            parts["content"] = losses.content_loss(feats[spec.content_layer], self.targets.content)
        per_layer: dict[str, torch.Tensor] = {}
        for term, pooled in self.terms:
            for name in spec.style_layers:
                if pooled is not None and name not in pooled:
                    continue
                mask = None if pooled is None else pooled[name]
                layer_loss = term.weight * losses.style_layer_loss(losses.gram(feats[name], mask),
                                                                   term.grams[name])
                per_layer[name] = per_layer[name] + layer_loss if name in per_layer else layer_loss
        parts["style"] = spec.style(per_layer, zero)
        parts.update(per_layer)
        if spec.tv_weight > 0:
            parts["tv"] = losses.tv_loss(image)
        return spec.total(parts["content"], parts["style"], parts["tv"]), parts


def evaluate(model: StyleModel, image: np.ndarray, targets: Targets, config: Config,
             content: np.ndarray | None = None) -> dict:
    """Loss figures of a finished image, computed by ONNX Runtime in float32.

    After a tiled run (`targets.content` is None) the content loss is measured against `content`
    at the image's size. An image too large for one ONNX Runtime pass is evaluated in cores (Grams
    are sums over cores, each seen with tiling.CONTEXT_MARGIN px of context). Every style layer is
    reported, also those the loss weighs zero.
    """
    import torch

    from . import losses

    spec = LossSpec.from_config(config)
    content_layer = config.content_layer
    layers = tuple(dict.fromkeys(STYLE_LAYERS + (content_layer,)))
    terms = targets.style_terms()
    sums = [tiling.GramSum() for _ in terms]
    images = [image] if targets.content is not None else [image, content]
    squares, count = 0.0, 0
    for core, feats in tiling.feature_passes(model.engine, images, layers, model.device):
        reference = feats[content_layer][1:] if len(images) == 2 else targets.content.cpu().numpy()
        diff = feats[content_layer][:1].astype(np.float64) - reference
        squares, count = squares + float(np.sum(diff ** 2)), count + diff.size
        for acc, term in zip(sums, terms):
            pooled = tiling.core_mask(term.mask, core, STYLE_LAYERS)
            for name in STYLE_LAYERS:
                acc.add(name, feats[name][:1], None if pooled is None else pooled[name])
    per_layer = dict.fromkeys(STYLE_LAYERS, 0.0)
    for acc, term in zip(sums, terms):
        grams = acc.grams()
        for name in STYLE_LAYERS:
            per_layer[name] += term.weight * float(losses.style_layer_loss(
                torch.from_numpy(grams[name]), term.grams[name].cpu()))
    content_loss = squares / max(count, 1)
    style = spec.style(per_layer)
    tv = float(losses.tv_loss(to_tensor(image)))
    return {"total_loss": spec.total(content_loss, style, tv), "content_loss": content_loss,
            "style_loss": style, "style_loss_per_layer": per_layer, "tv_loss": tv}
