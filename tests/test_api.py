"""The Python API as a script or notebook meets it (session 39's QA): what a scripter passes
(Config values, models, paths, arrays), each case one fault found there and fixed."""

from __future__ import annotations

import pytest

from stylefu.core import Config, UserError


@pytest.mark.parametrize("changes, message", [
    # compile=False ran compiled: every value but "off" and "auto" meant "on"
    ({"compile": False}, r"^--compile must be one of auto, on, off, not False\.$"),
    ({"compile": "yes"}, r"^--compile must be one of auto, on, off, not 'yes'\.$"),
    # a None where the field has a value was a TypeError from deep inside the run
    ({"size": None}, r"^--size must be a whole number, not None\.$"),
    ({"seed": None}, r"^--seed must be a whole number, not None\.$"),
    ({"tv_weight": None}, r"^--tv-weight must be a number, not None\.$"),
    # one number for a list was "'float' object is not iterable"
    ({"style_blend": 1.0}, r"^--style-blend must be a list of numbers, not 1\.0\.$"),
    ({"style_layer_weights": 2}, r"^--style-layer-weights must be a list of numbers, not 2\.$"),
    ({"preset": ["draft"]}, r"^Unknown preset \['draft'\]"),  # was "unhashable type: 'list'"
    ({"optimizer": None}, r"^--optimizer must be one of lbfgs, adam, not None\.$"),
])
def test_a_config_value_of_the_wrong_kind_is_one_sentence_naming_its_field(changes, message):
    with pytest.raises(UserError, match=message):
        Config(**changes).validate()


def test_config_takes_the_lists_a_script_has():
    """Tuples, lists and numpy arrays of weights all validate (None: the preset's schedule)."""
    import numpy as np

    for weights in ((1, 2, 3, 4, 5), [1.0] * 5, np.ones(5)):
        Config(style_layer_weights=weights).validate()
    Config(style_blend=np.array([1.0, 3.0]), evaluations=None, levels=None).validate()


def test_every_call_takes_a_model_from_load_model_or_a_path_of_any_kind(model_path, images,
                                                                         tmp_path):
    """load_model's docstring sends its model to stylize, preview and stylize_many: stylize_many
    raised a TypeError from inside pathlib for it; a bytes path was a TypeError in stylize and an
    AttributeError in preview; model=5 too. Now: one model, three calls, the same pixels; a path
    as str, Path or bytes; anything else one sentence."""
    import os

    import numpy as np

    from stylefu.core import load_model, preview, save_image, stylize, stylize_many

    config = Config(size=48, evaluations=3, levels=1, engine="onnx")
    content = save_image(tmp_path / "c.png", images[0])
    style = save_image(tmp_path / "s.png", images[1])
    loaded = load_model(model_path, engine="onnx")
    # engine auto: the loaded model's kind decides (torch would be auto's choice here)
    [item] = stylize_many([(content, style)], config.with_(engine="auto"), model=loaded,
                          workers=1, keep_images=True)
    assert item.status == "ok", item.error
    for model in (loaded, str(model_path), model_path, os.fsencode(model_path)):
        assert np.array_equal(stylize(content, style, config=config, model=model).image, item.image)
    shown = preview(content, [style], config=config, size=48, model=os.fsencode(model_path))
    assert shown.styles[0].error is None
    for call in (lambda m: stylize(content, style, config=config, model=m),
                 lambda m: preview(content, [style], config=config, size=48, model=m),
                 lambda m: list(stylize_many([(content, style)], config, model=m))):
        with pytest.raises(UserError, match=r"^model must be a path or a model from load_model, "
                                            r"not int\.$"):
            call(5)
