from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import rasterio
from rasterio.transform import from_origin

from mlops_assets.assets.cd.scene import cd_scene
from mlops_assets.core.scenes.cd import CDScene
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.resources.scene_store import scene_store_resource
from mlops_assets.settings import Settings
from mlops_assets_tests.conftest import DATA, commit_folder, materialize_partition


def _checks(result: dg.ExecuteInJobResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_scene_is_pinned_to_a_commit(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    demo_cd_dir: Path,
    tmp_path: Path,
) -> None:
    commit = commit_folder(store, demo_cd_dir, "cd/farm/")
    result = materialize_partition([cd_scene], "farm", instance, resources)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("cd__scene")
    meta = materialization.metadata
    assert meta["lakefs_commit"].value == commit
    assert meta["lakefs_repository"].value == "scenes"
    assert meta["lakefs_ref"].value == "main"
    assert meta["scene_uri"].value == f"lakefs://scenes/{commit}/cd/farm/"
    assert meta["git_sha"].value == "0123abc"
    assert meta["store"].value == "embedded"
    pre = meta["pre"].value
    assert pre["crs"] == "EPSG:32633" and pre["count"] == 4 and pre["dtype"] == "uint16"
    assert pre["width"] == pre["height"] == 128
    assert pre["uri"] == f"lakefs://scenes/{commit}/cd/farm/pre.tif"
    assert len(pre["checksum"]) == 64 and pre["size_bytes"] > 0
    assert "cd/farm/post.tif" in meta["files"].value
    checks = _checks(result)
    assert checks.keys() == {"files_present_and_readable", "footprints_overlap_and_bands_match"}
    assert all(c.passed for c in checks.values())
    # The manifest downstream assets read, as JSON under the IO manager's directory.
    manifest = json.loads((tmp_path / "assets" / "cd" / "scene" / "farm.json").read_text())
    assert manifest["commit_id"] == commit and manifest["problems"] == {}
    # In memory the value is the record itself; the file is its to_dict.
    scene = result.output_for_node("cd__scene")
    assert isinstance(scene, CDScene) and scene.commit_id == commit
    assert manifest == json.loads(json.dumps(scene.to_dict()))
    # The data version depends on the scene's files only.
    version = materialization.tags["dagster/data_version"]
    commit_folder(store, demo_cd_dir, "cd/other/", "unrelated scene")
    again = materialize_partition([cd_scene], "farm", instance, resources)
    assert (
        again.asset_materializations_for_node("cd__scene")[0].tags["dagster/data_version"]
        == version
    )


def test_reads_the_requested_commit(
    store: EmbeddedStore, instance: dg.DagsterInstance, resources: dict[str, Any], demo_cd_dir: Path
) -> None:
    first = commit_folder(store, demo_cd_dir, "cd/farm/")
    commit_folder(store, demo_cd_dir, "cd/later/", "later")
    config = {"ops": {"cd__scene": {"config": {"ref": first}}}}
    result = materialize_partition([cd_scene], "farm", instance, resources, run_config=config)
    meta = result.asset_materializations_for_node("cd__scene")[0].metadata
    assert meta["lakefs_commit"].value == first and meta["lakefs_ref"].value == first


def test_broken_scene_fails_its_checks_and_spares_others(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    demo_cd_dir: Path,
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(demo_cd_dir, broken)
    shutil.copy(DATA / "rasterio" / "corrupt.tif", broken / "post.tif")
    commit_folder(store, broken, "cd/broken/")
    commit_folder(store, demo_cd_dir, "cd/good/", "good scene")

    bad = materialize_partition([cd_scene], "broken", instance, resources)
    assert not bad.success
    check = _checks(bad)["files_present_and_readable"]
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.ERROR
    assert check.description is not None
    assert "cd/broken/post.tif: not a readable GeoTIFF" in check.description
    failure = next(e for e in bad.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "blocking" in str(failure.step_failure_data.error)

    good = materialize_partition([cd_scene], "good", instance, resources)
    assert good.success
    assert all(c.passed for c in _checks(good).values())


def _sparse_pair(folder: Path, size: int) -> Path:
    """pre and post of ``size`` px square, one band, sparse: a few KB on disk, nothing to decode."""
    folder.mkdir()
    for name in ("pre.tif", "post.tif"):
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "width": size,
            "height": size,
            "count": 1,
            "dtype": "uint8",
            "crs": "EPSG:32633",
            "transform": from_origin(500000, 5000000, 10, 10),
            "tiled": True,
            "blockxsize": 1024,
            "blockysize": 1024,
            "sparse_ok": True,
        }
        with rasterio.open(folder / name, "w", **profile):
            pass
    return folder


def test_the_pixel_budget_is_one_setting_for_cli_and_pipeline(
    instance: dg.DagsterInstance, resources: dict[str, Any], tmp_path: Path
) -> None:
    # 50,000^2 px is 2.5e9 pixels, over the default 2^31: refused unless MLOPS_MAX_PIXELS says
    settings = Settings.from_env({"MLOPS_HOME": str(tmp_path / "home")}, tmp_path)
    store = EmbeddedStore(settings.embedded_store_root, settings.repository)
    store.ensure_repository()
    commit_folder(store, _sparse_pair(tmp_path / "big", 50_000), "cd/big/")
    by_default = {**resources, "scene_store": scene_store_resource(settings)}
    refused = materialize_partition([cd_scene], "big", instance, by_default)
    check = _checks(refused)["files_present_and_readable"]
    assert not check.passed and check.description is not None
    assert "2,500,000,000 pixels, over the budget of 2,147,483,648" in check.description

    env = {"MLOPS_HOME": str(tmp_path / "home"), "MLOPS_MAX_PIXELS": "3000000000"}
    configured = dg.materialize(  # the code location's own resource, built from the settings
        [cd_scene],
        partition_key="big",
        instance=instance,
        resources={**resources, "scene_store": scene_store_resource(Settings.from_env(env))},
    )
    assert configured.success
    assert all(c.passed for c in _checks(configured).values())
    meta = configured.asset_materializations_for_node("cd__scene")[0].metadata
    pre: dict[str, Any] = meta["pre"].value  # pyright: ignore[reportAssignmentType]
    assert pre["width"] == 50_000
