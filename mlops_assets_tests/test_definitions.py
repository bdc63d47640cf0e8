from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.definitions import build_defs
from mlops_assets.resources.scene_store import EmbeddedSceneStore, LakeFSSceneStore
from mlops_assets.settings import Settings

EXPECTED_ASSETS = {dg.AssetKey(["cd", "scene"]), dg.AssetKey(["nvs", "scene"])}


def _asset_keys(defs: dg.Definitions) -> set[dg.AssetKey]:
    return set(defs.resolve_all_asset_keys())


def test_embedded_definitions_load(tmp_path: Path) -> None:
    defs = build_defs(Settings.from_env({}, cwd=tmp_path))
    dg.Definitions.validate_loadable(defs)
    assert _asset_keys(defs) == EXPECTED_ASSETS
    assert defs.resources is not None
    store = defs.resources["scene_store"]
    assert isinstance(store, EmbeddedSceneStore)
    assert store.root == str(tmp_path / ".mlops" / "lakefs")


def test_lakefs_definitions_take_credentials_from_env_vars(tmp_path: Path) -> None:
    env = {"LAKEFS_ENDPOINT": "http://lakefs:8000"}
    defs = build_defs(Settings.from_env(env, cwd=tmp_path))
    dg.Definitions.validate_loadable(defs)
    assert defs.resources is not None
    store = defs.resources["scene_store"]
    assert isinstance(store, LakeFSSceneStore)
    # Credentials stay environment-variable references until a run resolves them.
    assert isinstance(store.secret_access_key, dg.EnvVar)
    assert store.secret_access_key.env_var_name == "LAKEFS_SECRET_ACCESS_KEY"


def _python(code: str, env: dict[str, str]) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()


def test_importing_the_package_reads_nothing_and_loads_no_dagster(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = _python(
        "import sys, mlops_assets, mlops_assets.core.store.embedded, mlops_assets.core.scenes.cd;"
        "print('dagster' in sys.modules)",
        env,
    )
    assert out == "False"


def test_the_code_location_loads_lazily_from_the_package(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MLOPS_HOME": str(tmp_path / "h")}
    code = (
        "import inspect, mlops_assets, dagster as dg;"
        "members = dict(inspect.getmembers(mlops_assets));"
        "print(type(members['defs']).__name__)"
    )
    assert _python(code, env) == "LazyDefinitions"
    assert not (tmp_path / "h").exists()  # loading created no state


@pytest.mark.parametrize("path", ["mlops_assets/core"])
def test_pure_core_never_imports_dagster(path: str) -> None:
    root = Path(__file__).parents[1] / path
    offenders = [
        str(p)
        for p in root.rglob("*.py")
        if any(
            line.strip().startswith(("import dagster", "from dagster"))
            for line in p.read_text().splitlines()
        )
    ]
    assert offenders == []
