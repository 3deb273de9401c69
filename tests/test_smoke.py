"""The package imports as stylefu.* (never a bare `core`), and a short run produces an image."""

import subprocess
import sys

import numpy as np

from stylefu.core import Config, stylize


def test_installed_names_are_stylefu_only(tmp_path):
    # Run outside the checkout so the repository root is not on sys.path.
    code = ("import importlib.util as u, stylefu.core, stylefu.export, stylefu.plugin;"
            "print([n for n in ('core', 'export', 'plugin') if u.find_spec(n)])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


def test_short_run_changes_the_image(model_path, images):
    content, style = images
    result = stylize(content, style, config=Config(size=64, evaluations=5, levels=1),
                     model=model_path)
    assert result.image.shape == (48, 64, 3)
    assert np.abs(result.image - content).mean() > 1e-3
    assert result.metrics["weights_source"] == "random (seed 0)"


def test_public_names_are_listed_before_first_use():
    # dir(stylefu.core) (editors' completion) lacked the names imported on first use
    code = ("import stylefu.core as c; names = dir(c); print(all(n in names for n in c.__all__), "
            "'stylize_many' in names)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["True", "True"]
