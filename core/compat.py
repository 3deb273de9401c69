"""Old spellings that keep working: the flat module paths of core before its rooms
(`stylefu.core.vgg` is now `stylefu.core.network.vgg`, ...). docs/compat.md lists every rename.

An import of an old path gets the module at its new home (the same object). `stylefu.core.batch`
and `stylefu.core.cli` are packages now that export the old modules' public names, and
`stylefu.core.stylize` / `.preview` name the functions, so those four are not aliased here.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

PACKAGE = __name__.rpartition(".")[0]
OLD_MODULES = {
    "vgg": "network.vgg", "artifact_meta": "network.artifact_meta", "engine": "network.forward",
    "files": "io.files", "paths": "io.paths", "images": "io.images", "cache": "io.cache",
    "demo": "io.demo",
    "config": "method.config", "losses": "method.losses", "objective": "method.objective",
    "balance": "method.balance", "guides": "method.guides", "color": "method.color",
    "targets": "method.targets", "tiling": "method.tiling",
    "torchnet": "engines.torch.vggnet", "model": "engines.torch.model",
    "compiled": "engines.torch.compiled", "optimise": "engines.torch.optimise",
    "onnx_engine": "engines.onnx.engine", "gradient": "engines.onnx.gradient",
    "lbfgs": "engines.onnx.lbfgs",
    "batch_ray": "batch.ray_pool", "frames": "batch.frames", "batch_cli": "cli.batch",
}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        parent, _, name = fullname.rpartition(".")
        if parent == PACKAGE and name in OLD_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{PACKAGE}.{OLD_MODULES[spec.name.rpartition('.')[2]]}")

    def exec_module(self, module):
        pass  # the module at its new home is already executed


if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
    sys.meta_path.append(_OldPaths())
