"""Package layout: dependencies point one way, and the `stylefu` command assembles every package's
subcommands (old option spellings included)."""

import ast
from pathlib import Path

from stylefu.core.cli import build_parser, config_from_args

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
    offenders = {path.name: sorted(m for m in imported_modules(path)
                                   if m.startswith(("stylefu.export", "stylefu.plugin")))
                 for path in (ROOT / "core").glob("*.py")}
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_export_does_not_import_plugin():
    for path in (ROOT / "export").glob("*.py"):
        assert not any(m.startswith("stylefu.plugin") for m in imported_modules(path)), path.name


def test_every_package_adds_its_subcommands():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"run", "preview", "info", "demo", "export", "gimp"} <= set(commands)


def test_old_option_spellings_set_the_new_fields():
    args = build_parser().parse_args(["run", "c.png", "s.png", "-o", "o.png", "--iterations", "7",
                                      "--scales", "2", "--coarse-iterations", "5",
                                      "--tile-size", "64"])
    config = config_from_args(args)
    assert (config.evaluations, config.levels, config.coarse_evaluations, config.crop_side) == \
        (7, 2, 5, 64)
