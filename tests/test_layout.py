"""Package layout: dependencies point one way, and the `stylefu` command assembles every package's
subcommands (old option spellings included)."""

import ast
import re
from pathlib import Path

from stylefu.core.cli.main import build_parser, config_from_args

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_core_imports_neither_export_nor_plugin():
    offenders = {str(path): sorted(m for m in imported_modules(path)
                                   if m.startswith(("stylefu.export", "stylefu.plugin")))
                 for path in (ROOT / "core").rglob("*.py")}
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_export_does_not_import_plugin():
    for path in (ROOT / "export").glob("*.py"):
        assert not any(m.startswith("stylefu.plugin") for m in imported_modules(path)), path.name


def test_every_package_adds_its_subcommands():
    parser = build_parser()
    added = {"run", "preview", "info", "demo", "export", "gimp"}
    assert added <= set(parser.commands)  # name -> its Parser (build_parser's, not argparse's)
    usage = parser.format_usage()  # and offered to the user: `stylefu {run,preview,...}`
    assert all(re.search(rf"[{{,]{name}[,}}]", usage) for name in added), usage


def test_old_option_spellings_set_the_new_fields():
    args = build_parser().parse_args(["run", "c.png", "s.png", "-o", "o.png", "--iterations", "7",
                                      "--scales", "2", "--coarse-iterations", "5",
                                      "--tile-size", "64"])
    config = config_from_args(args)
    assert (config.evaluations, config.levels, config.coarse_evaluations, config.crop_side) == \
        (7, 2, 5, 64)


# core's rooms, lowest first: a module may import its own room and the rooms before it, never
# one after it. The two engines are siblings: neither imports the other.
ROOMS = ("", "network", "io", "method", "engines", "run", "batch", "cli")
SIBLINGS = ("engines.torch", "engines.onnx")
FACES = {"stylefu.core", "stylefu.core.compat", "stylefu.core.__main__"}  # may import any room


def core_modules() -> dict[str, Path]:
    modules = {}
    for path in (ROOT / "core").rglob("*.py"):
        parts = list(path.relative_to(ROOT / "core").with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(["stylefu.core", *parts])] = path
    return modules


def core_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The core modules `name` imports anywhere in its code (function bodies included), leaving
    out `if TYPE_CHECKING:` blocks (annotations only)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def visit(node):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)
    visit(ast.parse(path.read_text(encoding="utf-8")))
    # A package's own __init__ is imported before the module anyway: not a dependency.
    return {m for m in found if m in modules and not name.startswith(m)}


def room(name: str) -> str:
    parts = name.split(".")[2:]
    if name in FACES or (len(parts) == 1 and parts[0] not in ROOMS):
        return ""
    return parts[0]


def test_rooms_depend_one_way():
    modules = core_modules()
    wrong = []
    for name, path in modules.items():
        if name in FACES:
            continue
        for dep in core_imports(name, path, modules):
            if ROOMS.index(room(dep)) > ROOMS.index(room(name)):
                wrong.append(f"{name} -> {dep}")
            for a, b in (SIBLINGS, SIBLINGS[::-1]):
                if name.startswith(f"stylefu.core.{a}") and dep.startswith(f"stylefu.core.{b}"):
                    wrong.append(f"{name} -> {dep}")
    assert sorted(set(wrong)) == []


def test_no_import_loops():
    modules = core_modules()
    graph = {name: core_imports(name, path, modules) - FACES for name, path in modules.items()
             if name not in FACES}
    loops = []

    def reaches(start, goal, seen):
        for dep in graph.get(start, ()):
            if dep == goal:
                return True
            if dep not in seen:
                seen.add(dep)
                if reaches(dep, goal, seen):
                    return True
        return False
    for name in graph:
        if reaches(name, name, set()):
            loops.append(name)
    assert sorted(loops) == []
