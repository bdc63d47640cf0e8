"""The change-detection chain on an imported dataset: pixel-grid LEVIR-CD crops of real Landsat
imagery, validated on the dataset's own val split, mapped without a CRS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from mlops_assets.assets.cd.change_map import cd_change_map
from mlops_assets.assets.cd.evaluation import cd_evaluation
from mlops_assets.assets.cd.model import cd_model, cd_registered_model
from mlops_assets.assets.cd.scene import cd_scene
from mlops_assets.assets.cd.tiles import cd_tiles
from mlops_assets.core.importers import dataset_format
from mlops_assets.core.importers.base import commit_import, prepare_import
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets_tests.assets.cd.test_chain import materialize
from mlops_assets_tests.conftest import commit_folder
from mlops_assets_tests.core.cd.test_alignment import write_pair
from mlops_assets_tests.core.importers import make_levircd

pytestmark = pytest.mark.slow


@pytest.fixture
def imported(store: EmbeddedStore, tmp_path: Path) -> list[str]:
    """LEVIR-CD train (96 px) and val (48 px, under one tiny window) crops, in one commit."""
    root = tmp_path / "LEVIR-CD"
    make_levircd(root, splits=("train",), size=96, seed=1)
    make_levircd(root, splits=("val",), size=48, seed=7)
    dataset = dataset_format("levir-cd")
    scenes = prepare_import(dataset, root, (), "", tmp_path / "work")
    commit_import(store, "main", dataset, root, scenes)
    return [s.scene_id for s in scenes]


def test_an_imported_dataset_trains_on_its_split_and_maps_on_the_pixel_grid(
    imported: list[str],
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    tmp_path: Path,
) -> None:
    assert imported == ["train-1", "train-2", "val-1", "val-2"]
    for scene in imported:
        result = materialize([cd_scene, cd_tiles], instance, resources, scene)
        assert result.success, scene
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert checks["files_present_and_readable"].passed
        assert "pixel grid (no CRS)" in (
            checks["footprints_overlap_and_bands_match"].description or ""
        )
        residual = checks["alignment_residual"]
        # Co-registered crops: the estimate passes, or, on a 48 px crop, is inconclusive (a
        # warning that does not block); never a failure.
        status = residual.metadata["status"].value
        assert status in ("pass", "inconclusive"), residual.description
        if status == "inconclusive":
            assert residual.severity == dg.AssetCheckSeverity.WARN
        (mat,) = result.asset_materializations_for_node("cd__tiles")
        assert str(mat.metadata["grid"].value).endswith("pixel grid (no CRS)")
    model = materialize(
        [cd_model, cd_evaluation, cd_registered_model],
        instance,
        resources,
        cd__model={"split": "scene", "val_scenes": ["val-*"]},
    )
    assert model.success
    (mat,) = model.asset_materializations_for_node("cd__model")
    assert mat.metadata["train_scenes"].value == ["train-1", "train-2"]
    assert mat.metadata["val_scenes"].value == ["val-1", "val-2"]
    assert mat.metadata["split"].value == "scene"

    result = materialize([cd_change_map], instance, resources, "val-1")
    assert result.success
    (mat,) = result.asset_materializations_for_node("cd__change_map")
    meta = mat.metadata
    assert meta["crs"].value == "none: pixel grid" and "changed_area_m2" not in meta
    assert 0 <= int(str(meta["changed_area_px"].value)) <= 48 * 48
    assert meta["size"].value == "48x48"
    path = store.download("outputs", "cd/val-1/change_map.tif", tmp_path / "map.tif")
    with pytest.warns(NotGeoreferencedWarning), rasterio.open(path) as out:
        assert out.crs is None and out.tags()["grid"] == "pixel"
        assert (out.width, out.height) == (48, 48)


def test_an_inconclusive_alignment_warns_and_does_not_block(
    store: EmbeddedStore, instance: dg.DagsterInstance, resources: dict[str, Any], tmp_path: Path
) -> None:
    root = tmp_path / "LEVIR-CD"
    make_levircd(root, splits=("train",), size=96, seed=1)
    # Post replaced by an unrelated real crop: no window has a distinct correlation peak.
    other = root / "train" / "B" / "train_2.png"
    (root / "train" / "B" / "train_1.png").write_bytes(other.read_bytes())
    dataset = dataset_format("levir-cd")
    commit_import(
        store, "main", dataset, root, prepare_import(dataset, root, (), "", tmp_path / "w")
    )
    result = materialize([cd_scene, cd_tiles], instance, resources, "train-1")
    assert result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    residual = checks["alignment_residual"]
    assert not residual.passed and residual.severity == dg.AssetCheckSeverity.WARN
    assert (residual.description or "").startswith("inconclusive: ")
    assert "not blocking" in (residual.description or "")
    (mat,) = result.asset_materializations_for_node("cd__tiles")
    assert mat.metadata["tiles_uri"].value != "not published"


def test_a_misregistered_real_pair_fails_the_check_and_blocks(
    store: EmbeddedStore, instance: dg.DagsterInstance, resources: dict[str, Any], tmp_path: Path
) -> None:
    # rasterio's Landsat quadrant, post's pixels moved 2 px down and left, georeference kept.
    folder = write_pair(tmp_path / "scene", "landsat-quadrant", dy=2, dx=-2)
    commit_folder(store, folder, "cd/landsat/")
    result = materialize([cd_scene, cd_tiles, cd_model], instance, resources, "landsat")
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    residual = checks["alignment_residual"]
    assert not residual.passed and residual.severity == dg.AssetCheckSeverity.ERROR
    assert residual.metadata["dy_px"].value == pytest.approx(-2.0, abs=0.25)
    assert residual.metadata["dx_px"].value == pytest.approx(2.0, abs=0.25)
    assert "post is misaligned with pre: median shift 2.8" in (residual.description or "")
    assert result.asset_materializations_for_node("cd__tiles")  # published, then judged
    # The blocking check fails its step, and what follows is not run.
    assert {e.step_key for e in result.all_events if e.is_step_failure} == {"cd__tiles"}
    assert not result.asset_materializations_for_node("cd__model")
