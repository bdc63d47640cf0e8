"""The packages of `mlops_assets.core` depend on each other one way only.

The allowed direction is ``core/nvs -> core/scenes -> core/store`` and
``core/cd -> core/scenes -> core/store``: a scene knows nothing of the models trained on it, and
the store knows nothing of scenes. Every import counts, also one inside a function (a deferred
import is still a dependency). Besides that direction, no two parts of ``core`` (a subpackage or
a top-level module) may import each other, directly or around a loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mlops_assets.core

CORE = Path(mlops_assets.core.__file__).parent

#: A lower layer never imports a higher one; equal layers never import each other.
LAYERS = {"store": 0, "scenes": 1, "cd": 2, "nvs": 2}


def _part(module: str) -> str | None:
    """The part of core (``scenes``, ``tracking`` ...) a dotted module name belongs to."""
    parts = module.split(".")
    if parts[:2] != ["mlops_assets", "core"] or len(parts) < 3:
        return None
    return parts[2]


def import_graph(core: Path) -> dict[str, dict[str, list[str]]]:
    """``{part: {imported part: [where, ...]}}`` over every import in the files under ``core``."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(core.rglob("*.py")):
        relative = path.relative_to(core)
        source = relative.parts[0].removesuffix(".py")
        if source == "__init__":
            continue
        edges = graph.setdefault(source, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            targets = {p for name in names if (p := _part(name)) is not None} - {source}
            for target in targets:
                edges.setdefault(target, []).append(f"{relative}:{node.lineno}")
    return graph


def against_direction(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    """Imports from a layer into a higher or sibling one (``scenes -> nvs``, ``cd -> nvs``)."""
    found: list[str] = []
    for source, edges in sorted(graph.items()):
        for target, where in sorted(edges.items()):
            if source in LAYERS and target in LAYERS and LAYERS[target] >= LAYERS[source]:
                found.append(f"core/{source} -> core/{target} at {', '.join(where)}")
    return found


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected groups of more than one part (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def test_core_packages_depend_one_way() -> None:
    assert against_direction(import_graph(CORE)) == []


def test_no_import_cycle_between_parts_of_core() -> None:
    assert cycles(import_graph(CORE)) == []


def test_the_checks_see_a_backward_import_and_a_loop(tmp_path: Path) -> None:
    for name, text in {
        "store/base.py": "",
        "scenes/nvs.py": "from mlops_assets.core.nvs.sfm import run_sfm\n",
        "nvs/sfm.py": "def f():\n    from mlops_assets.core.scenes import nvs\n",
        "changes.py": "import mlops_assets.core.wap\n",
        "wap.py": "from mlops_assets.core import changes\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert against_direction(graph) == ["core/scenes -> core/nvs at scenes/nvs.py:1"]
    assert cycles(graph) == [["changes", "wap"], ["nvs", "scenes"]]


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_the_ingest_is_given_its_validators() -> None:
    """It uploads what a `FolderCheck` passes; the raster and photo validators live elsewhere."""
    imported = imported_modules(CORE / "scenes" / "ingest.py")
    validators = {"cd", "nvs", "colmap", "checks", "pixel_grid", "folders"}
    assert {m for m in imported if m.rsplit(".", 1)[-1] in validators} == set()
    assert {m.split(".")[0] for m in imported} & {"rasterio", "PIL", "pycolmap", "numpy"} == set()
