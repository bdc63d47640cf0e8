"""Assets stay thin: every asset and asset-check body fits a screen; the logic lives in core."""

from __future__ import annotations

import ast
from pathlib import Path

import mlops_assets.assets

ASSETS = Path(mlops_assets.assets.__file__).parent
MAX_BODY_LINES = 60
DECORATORS = {"asset", "multi_asset", "asset_check", "multi_asset_check", "graph_asset"}


def _decorator_name(node: ast.expr) -> str | None:
    target = node.func if isinstance(node, ast.Call) else node
    if isinstance(target, ast.Attribute):
        return target.attr
    return target.id if isinstance(target, ast.Name) else None


def body_lines(source: str) -> dict[str, int]:
    """Lines of each decorated asset or check body in ``source``, its docstring left out."""
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if not any(_decorator_name(d) in DECORATORS for d in node.decorator_list):
            continue
        body = node.body
        if (
            len(body) > 1
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            body = body[1:]  # the docstring
        end = node.end_lineno if node.end_lineno is not None else body[-1].lineno
        out[node.name] = end - body[0].lineno + 1
    return out


def test_the_counter_sees_asset_and_check_bodies() -> None:
    source = '''
import dagster as dg
from dagster import asset_check

@dg.asset(key="a")
def a():
    """Doc."""
    x = 1
    return x

@asset_check(asset="a")
def check():
    return None

def helper():
    pass
'''
    assert body_lines(source) == {"a": 2, "check": 1}


def test_every_asset_and_check_body_fits_a_screen() -> None:
    found: dict[str, int] = {}
    for path in sorted(ASSETS.rglob("*.py")):
        for name, lines in body_lines(path.read_text()).items():
            found[f"{path.relative_to(ASSETS)}:{name}"] = lines
    assert len(found) >= 11  # the eleven assets, at least, were found
    too_long = {name: lines for name, lines in found.items() if lines > MAX_BODY_LINES}
    assert too_long == {}
