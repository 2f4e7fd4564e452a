"""The packages form a pipeline, and imports flow one way: a module imports only from its own package or from the
packages below it. Every import counts, including the ones inside functions and under TYPE_CHECKING."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from pydantic import BaseModel

import autoptq

# Bottom to top: load → analyse the device → write the device's files → quantize → evaluate → decide → run the
# pipeline → report; the command line, the Python API and batch on top.
LAYERS: list[set[str]] = [
    {"errors", "_version", "schema", "deadline"},
    {"io"},
    {"model"},
    {"devices"},
    {"deploy"},
    {"techniques"},
    {"evaluate"},
    {"decide"},
    {"pipeline"},
    {"report"},
    {"api", "batch", "cli", "__init__", "__main__"},
]
PACKAGE_DIR = Path(autoptq.__file__).parent


def _layer_of(unit: str) -> int:
    for index, units in enumerate(LAYERS):
        if unit in units:
            return index
    raise AssertionError(f"autoptq.{unit} is in no layer: add it to LAYERS")


def _unit(dotted: str) -> str:
    """`autoptq.decide.planner` → `decide`; `autoptq.cli` → `cli`."""
    return dotted.split(".")[1] if dotted.count(".") else "__init__"


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("autoptq."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "autoptq":
                found.update(f"autoptq.{alias.name}" for alias in node.names)
            elif node.module.startswith("autoptq."):
                found.add(node.module)
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def upward_imports() -> list[str]:
    upward = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        importer = _module_name(path)
        level = _layer_of(_unit(importer))
        for imported in sorted(_imported_modules(path)):
            if _layer_of(_unit(imported)) > level:
                upward.append(f"{importer} imports {imported}")
    return upward


def test_every_module_belongs_to_a_layer() -> None:
    for path in PACKAGE_DIR.rglob("*.py"):
        _layer_of(_unit(_module_name(path)))


def test_imports_flow_one_way() -> None:
    assert upward_imports() == []


def test_the_walk_sees_an_upward_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from autoptq.report import text\n    from autoptq import api\n")
    assert _imported_modules(source) == {"autoptq.report", "autoptq.api"}
    assert _layer_of(_unit("autoptq.report")) > _layer_of(_unit("autoptq.devices.coverage"))


RENDERING = ("report/text.py", "report/html_page.py", "report/plots.py")
RENDERING_MAY_CALL = {"__version__", "by_name", "data_dir"}
"""Besides result models, rendering reads the version, asks a technique which recipe keys it shows, and where the
shipped data lives (to print its paths without the machine's layout)."""


@pytest.mark.parametrize("module", RENDERING)
def test_rendering_depends_only_on_result_models(module: str) -> None:
    """What a renderer imports from the stages below is a pydantic result model (its own package aside)."""
    for node in ast.walk(ast.parse((PACKAGE_DIR / module).read_text())):
        if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("autoptq."):
            continue
        if node.module == "autoptq.report" or (node.module or "").startswith("autoptq.report."):
            continue
        source = importlib.import_module(node.module or "")
        for alias in node.names:
            value = getattr(source, alias.name)
            is_model = isinstance(value, type) and issubclass(value, BaseModel)
            assert is_model or alias.name in RENDERING_MAY_CALL, f"{module} imports {node.module}.{alias.name}"
