"""The scripts CI does not run (benchmarks, figures, the CUDA tests that skip without a GPU) still
fit the code: every stylefu name they import exists, every attribute they take from a stylefu
module exists, and every call of a stylefu function or class takes the arguments it is given.
Read from their source (their runs take minutes, or a GPU), so a rename shows here, not on the
day a lent GPU's minutes are spent."""

import ast
import importlib
import inspect
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SCRIPTS = sorted([*TESTS.glob("bench_*.py"), TESTS / "make_figures.py", TESTS / "test_cuda.py"])
LOCAL = {path.stem for path in TESTS.glob("*.py")}  # a script's sibling (bench_speed)


def imported_objects(tree: ast.AST) -> dict[str, object]:
    """Each name the script binds by importing from stylefu (or a sibling script): its object.
    A missing module or name fails here, naming it."""
    bound = {}
    sys.path.insert(0, str(TESTS))
    try:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                    node.module.startswith("stylefu") or node.module in LOCAL):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    bound[alias.asname or alias.name] = imported_name(module, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("stylefu."):
                        importlib.import_module(alias.name)
                        if alias.asname:
                            bound[alias.asname] = importlib.import_module(alias.name)
    finally:
        sys.path.remove(str(TESTS))
    return bound


def imported_name(module, name: str):
    """`from module import name`'s object: an attribute, else a submodule (as Python finds it)."""
    if not hasattr(module, name):
        try:
            importlib.import_module(f"{module.__name__}.{name}")
        except ModuleNotFoundError as missing:
            if missing.name != f"{module.__name__}.{name}":
                raise  # the submodule is there and lacks what it imports
    assert hasattr(module, name), f"{module.__name__} has no {name}"
    return getattr(module, name)


def resolved(node: ast.expr, bound: dict[str, object]):
    """The object a name or a dotted attribute of an imported name stands for, else None.
    A missing attribute of a stylefu module fails, naming it."""
    if isinstance(node, ast.Name):
        return bound.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = resolved(node.value, bound)
        if inspect.ismodule(owner):
            assert hasattr(owner, node.attr), f"{owner.__name__} has no {node.attr}"
            return getattr(owner, node.attr)
    return None


def call_mismatches(tree: ast.AST, bound: dict[str, object]) -> list[str]:
    """Calls whose arguments the callee's signature refuses (`bind` with stand-in values)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            resolved(node, bound)
        if not isinstance(node, ast.Call):
            continue
        callee = resolved(node.func, bound)
        if not callable(callee) or inspect.ismodule(callee):
            continue
        if any(isinstance(a, ast.Starred) for a in node.args) or any(
                k.arg is None for k in node.keywords):
            continue  # *args or **kwargs: their count is not in the source
        try:
            signature = inspect.signature(callee)
        except (TypeError, ValueError):
            continue  # a builtin without one
        try:
            signature.bind(*node.args, **{k.arg: k.value for k in node.keywords})
        except TypeError as refused:
            found.append(f"line {node.lineno}: {ast.unparse(node.func)}(...): {refused}")
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=[path.name for path in SCRIPTS])
def test_a_script_ci_does_not_run_fits_the_code(script):
    if script.name in ("bench_gpu.py", "test_cuda.py", "bench_speed.py"):
        pytest.importorskip("torch")
    tree = ast.parse(script.read_text(encoding="utf-8"))
    bound = imported_objects(tree)
    assert bound, "no stylefu name found: the check would check nothing"
    assert call_mismatches(tree, bound) == []


def test_the_check_finds_a_missing_name_and_a_refused_argument():
    from_missing = ast.parse("from stylefu.core import stylize, no_such_name")
    with pytest.raises(AssertionError, match="no_such_name"):
        imported_objects(from_missing)
    tree = ast.parse("from stylefu.core import Config\nfrom stylefu.core.run import eta\n"
                     "Config(no_such_field=1)\neta.no_such_function()\n")
    bound = imported_objects(tree)
    with pytest.raises(AssertionError, match="no_such_function"):
        call_mismatches(tree, bound)
    tree = ast.parse("from stylefu.core import Config\nConfig(no_such_field=1)\n")
    assert "no_such_field" in " ".join(call_mismatches(tree, imported_objects(tree)))
