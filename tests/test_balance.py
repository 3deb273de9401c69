"""--strength: the normalised default loss, and the plain loss that explicit weights keep."""

from __future__ import annotations

import pytest
import torch

from stylefu.core.errors import UserError
from stylefu.core.method import balance
from stylefu.core.method.config import PLAIN_STYLE_WEIGHT, Config
from stylefu.core.network.vgg import STYLE_LAYERS


def targets(scale: float = 1.0, seed: int = 0):
    """Content features and Gram targets whose features are all multiplied by `scale`."""
    g = torch.Generator().manual_seed(seed)
    content = torch.rand(1, 8, 6, 6, generator=g) * scale
    grams = {n: torch.rand(1, 4, 4, generator=g) * scale ** 2 for n in STYLE_LAYERS}
    return content, grams


def loss(config: Config, content, grams, image_content, image_grams) -> float:
    """The plain loss (docs/method.md) with the config's weights."""
    style = sum(w * float(((image_grams[n] - grams[n]) ** 2).mean())
                for n, w in zip(STYLE_LAYERS, config.style_layer_weights))
    return config.content_weight * float(((image_content - content) ** 2).mean()) + \
        config.style_weight * style


def test_default_strength_means_the_same_whatever_the_feature_scale():
    """Features 1000x larger (another network) give the same normalised loss: the balance holds."""
    losses = []
    for scale in (1.0, 1e3):
        content, grams = targets(scale)
        image_content, image_grams = targets(scale, seed=1)
        config = balance.normalised_weights(Config(), content, grams)
        losses.append(loss(config, content, grams, image_content, image_grams))
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    plain = Config(style_weight=PLAIN_STYLE_WEIGHT)  # the plain loss does not hold the balance
    plain = balance.normalised_weights(plain, None, {})
    scaled = [loss(plain, *targets(s), *targets(s, seed=1)) for s in (1.0, 1e3)]
    assert scaled[1] > 1e5 * scaled[0]


def test_strength_moves_the_style_weight_evenly():
    # 10x per 25 points left 0-20 looking like the photo and put most of the change between 30
    # and 50 (trained VGG16, docs/method.md): now the square of s/50, steeper above 50
    content, grams = targets()
    strengths = range(0, 101, 5)
    at = {s: balance.normalised_weights(Config(strength=s), content, grams) for s in strengths}
    weights = [at[s].style_weight for s in strengths]
    assert weights[0] == 0.0 and at[50].style_weight == balance.BALANCED_STYLE_WEIGHT
    assert all(a < b for a, b in zip(weights, weights[1:]))
    assert at[25].style_weight == pytest.approx(balance.BALANCED_STYLE_WEIGHT / 4)
    assert 50 < at[100].style_weight < 100  # beyond about 50-100 nothing visible changes
    assert len({at[s].content_weight for s in strengths}) == 1  # only the style side moves


def test_explicit_weights_keep_the_plain_loss():
    config = balance.normalised_weights(Config(style_weight=3e6), None, {})
    assert (config.content_weight, config.style_weight) == (1.0, 3e6)
    assert config.style_layer_weights == (1.0,) * len(STYLE_LAYERS)
    config = balance.normalised_weights(Config(content_weight=2.0), None, {})
    assert (config.content_weight, config.style_weight) == (2.0, PLAIN_STYLE_WEIGHT)


@pytest.mark.parametrize("changes, words", [
    ({"strength": 101.0}, "--strength must be at most 100"),
    ({"strength": 60.0, "style_weight": 1e6}, "either --strength or"),
    ({"strength": 60.0, "style_layer_weights": (1, 1, 1, 1, 1)}, "either --strength or"),
])
def test_bad_strength_is_one_sentence(changes, words):
    with pytest.raises(UserError, match=words):
        Config(**changes).validate()


def test_a_run_records_the_plain_weights_it_used(model_path, images):
    """Re-running with the recorded weights as explicit plain weights gives the same image."""
    from stylefu.core.run.pipeline import stylize

    content, style = images
    config = Config(size=48, evaluations=3, levels=1, device="cpu")
    first = stylize(content, style, config=config, model=model_path)
    used = first.metrics["loss_weights"]
    again = stylize(content, style, model=model_path, config=config.with_(
        content_weight=used["content_weight"], style_weight=used["style_weight"],
        style_layer_weights=tuple(used["style_layer_weights"])))
    assert again.metrics["loss_weights"] == used
    assert abs(again.image - first.image).max() < 1e-6


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_strength_zero_returns_the_content_without_an_evaluation(model_path, images, engine):
    # Every evaluation (180 at 256 px, 83 s) only chased float noise to return the photo.
    from stylefu.core.io.images import load_image, resize_array
    from stylefu.core.run import eta
    from stylefu.core.run.pipeline import stylize

    content, style = images
    said = []
    result = stylize(content, style, model=model_path, log=said.append,
                     config=Config(strength=0, size=64, engine=engine, device="cpu"))
    assert result.metrics["evaluations"] == 0 and len(result.metrics["sizes"]) == 1
    expected = resize_array(load_image(content).rgb, *result.image.shape[:2])
    assert abs(result.image - expected).max() < 1e-6
    assert result.metrics["total_loss"] < 1e-6
    assert any("--strength 0 keeps the content" in note for note in said)
    # The estimate knows it: one level's targets and the finish, no evaluation.
    def seconds(config):
        return eta.estimate_seconds(600, 800, config, rate=1e-5, exponent=1.0)
    assert seconds(Config(strength=0)) < seconds(Config(strength=1)) / 50
    # What still moves the pixels runs: a TV term, a start from noise or an image.
    assert Config(style_weight=0.0).paints_nothing and not Config(strength=1).paints_nothing
    for changes in ({"tv_weight": 1.0}, {"init": "noise"}, {"init": "start.png"}):
        assert not Config(strength=0, **changes).paints_nothing
