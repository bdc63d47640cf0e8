"""Dagster's private modules are reached from one module only, and what it needs still exists."""

import ast
from pathlib import Path

import mlops_assets
from mlops_assets.sensors import dagster_internals

PACKAGE = Path(mlops_assets.__file__).parent
ALLOWED = PACKAGE / "sensors" / "dagster_internals.py"


def private_dagster_imports(path: Path) -> list[str]:
    """``dagster._...`` modules that ``path`` imports (anywhere in the file)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [name for name in names if name.startswith("dagster._")]
    return found


def test_no_module_but_dagster_internals_imports_private_dagster() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): private_dagster_imports(path)
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != ALLOWED
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_sees_a_private_import(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from dagster._core.events import DagsterEvent\n")
    assert private_dagster_imports(planted) == ["dagster._core.events"]


def test_every_private_name_still_resolves() -> None:
    for name in dagster_internals.__all__:
        assert getattr(dagster_internals, name) is not None, name
