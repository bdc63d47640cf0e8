from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import dagster as dg

from mlops_assets.assets.nvs.scene import nvs_scene
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets_tests.conftest import DATA, commit_folder, materialize_partition

MAUPERTUIS = DATA / "kapture" / "maupertuis"


def test_real_capture(
    store: EmbeddedStore, instance: dg.DagsterInstance, resources: dict[str, Any]
) -> None:
    commit = commit_folder(store, MAUPERTUIS, "nvs/maupertuis/")
    result = materialize_partition([nvs_scene], "maupertuis", instance, resources)
    assert result.success
    meta = result.asset_materializations_for_node("nvs__scene")[0].metadata
    assert meta["lakefs_commit"].value == commit
    assert meta["images"].value == 4
    assert "SIMPLE_PINHOLE" in meta["model"].value and "1039" in meta["model"].value
    assert {f["path"] for f in meta["model_files"].value} == {
        f"nvs/maupertuis/sparse/0/{n}.txt" for n in ("cameras", "images", "points3D")
    }
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert all(c.passed for c in checks.values()) and len(checks) == 2


def test_missing_image_fails_the_model_check(
    store: EmbeddedStore, instance: dg.DagsterInstance, resources: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(MAUPERTUIS, folder)
    (folder / "images" / "03.jpg").unlink()
    commit_folder(store, folder, "nvs/m/")
    result = materialize_partition([nvs_scene], "m", instance, resources)
    assert not result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    model_check = checks["model_readable_and_images_present"]
    assert not model_check.passed
    assert model_check.description is not None and "03.jpg" in model_check.description
