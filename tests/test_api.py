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
