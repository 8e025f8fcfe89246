"""The code layout: ``kernels/`` is a library that imports nothing of the harness, and moving code changed no
tile choice, no registry entry and no preset config (``tests/layout_pins.py`` pinned them before the move)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tests import layout_pins

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ("bench", "specs", "plots", "cli", "baselines", "scripts", "tests")


def _imports(path: Path) -> set[str]:
    """The top-level modules ``path`` imports (at any depth of the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_kernels_import_nothing_of_the_harness() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & set(HARNESS)) for path in (ROOT / "kernels").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_package_imports_the_specs_but_the_registry_by_discovery() -> None:
    """The registry finds the entries by discovery; no harness module names a spec module, so there is no circle
    ``bench.registry`` -> ``specs`` -> ``bench.registry`` at import time (a spec imports the registry, not back)."""
    for path in [*(ROOT / "bench").rglob("*.py"), ROOT / "cli.py"]:
        assert "specs" not in _imports(path), path


@pytest.fixture(scope="module")
def pins() -> dict:
    return json.loads(layout_pins.PINS.read_text())


def test_choose_tiles_returns_what_it_returned_before_the_move(pins: dict) -> None:
    assert len(pins["choose_tiles"]) == 144
    assert layout_pins.tile_cases() == pins["choose_tiles"]


def test_the_registry_and_every_preset_are_unchanged(pins: dict) -> None:
    assert json.loads(json.dumps(layout_pins.registry_entries(), default=list)) == pins["registry"]
    assert json.loads(json.dumps(layout_pins.preset_configs())) == pins["presets"]


def test_scripts_import_the_package_not_each_other() -> None:
    scripts = {path.stem for path in (ROOT / "scripts").glob("*.py")}
    for path in (ROOT / "scripts").glob("*.py"):
        assert not _imports(path) & scripts, path
