from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np

from mlops_assets.assets.nvs.scene import nvs_scene
from mlops_assets.core.scenes.colmap import read_model, write_model
from mlops_assets.core.scenes.nvs import NVSScene, materialize_nvs_scene
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.resources.scene_store import EmbeddedSceneStore
from mlops_assets_tests.conftest import DATA, commit_folder, materialize_partition

MAUPERTUIS = DATA / "kapture" / "maupertuis"
SACRE_COEUR = DATA / "sacre_coeur"
MODEL_CHECK = "model_readable_and_images_present"


def _sfm_config(**values: Any) -> dict[str, Any]:
    # 512 px: 3 of the 4 photos register, in a few seconds.
    config = {"sfm_max_image_size": 512, "sfm_num_threads": 1, **values}
    return {"ops": {"nvs__scene": {"config": config}}}


def _checks(result: dg.ExecuteInJobResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _metadata(result: dg.ExecuteInJobResult) -> dict[str, Any]:
    meta = result.asset_materializations_for_node("nvs__scene")[0].metadata
    return {key: value.value for key, value in meta.items()}


def _photos_only(store: EmbeddedStore, scene_id: str) -> str:
    for photo in sorted(SACRE_COEUR.glob("*.jpg")):
        store.put("main", f"nvs/{scene_id}/images/{photo.name}", photo)
    return store.commit("main", f"photos of {scene_id}").id


def test_real_capture(
    store: EmbeddedStore, instance: dg.DagsterInstance, resources: dict[str, Any]
) -> None:
    commit = commit_folder(store, MAUPERTUIS, "nvs/maupertuis/")
    result = materialize_partition([nvs_scene], "maupertuis", instance, resources)
    assert result.success
    meta = _metadata(result)
    assert meta["lakefs_commit"] == commit
    assert meta["images"] == 4
    assert "SIMPLE_PINHOLE" in meta["model"] and "1039" in meta["model"]
    assert {f["path"] for f in meta["model_files"]} == {
        f"nvs/maupertuis/sparse/0/{n}.txt" for n in ("cameras", "images", "points3D")
    }
    assert meta["model_source"] == "scene" and meta["model_commit"] == commit
    assert meta["model_uri"] == f"lakefs://scenes/{commit}/nvs/maupertuis/sparse/0/"
    assert "sfm_registered_images" not in meta
    checks = _checks(result)
    assert all(c.passed for c in checks.values()) and len(checks) == 2
    assert "outputs" not in store.list_branches()  # a posed capture writes nothing


def test_missing_image_fails_the_model_check(
    store: EmbeddedStore, instance: dg.DagsterInstance, resources: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(MAUPERTUIS, folder)
    (folder / "images" / "03.jpg").unlink()
    commit_folder(store, folder, "nvs/m/")
    result = materialize_partition([nvs_scene], "m", instance, resources)
    assert not result.success
    model_check = _checks(result)[MODEL_CHECK]
    assert not model_check.passed
    assert model_check.description == ("1 registered image(s) missing from nvs/m/images/: 03.jpg")


def test_unsupported_camera_model_fails(
    store: EmbeddedStore, instance: dg.DagsterInstance, resources: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(MAUPERTUIS, folder)
    model = read_model(folder / "sparse" / "0")
    camera = model.cameras[1]
    model.cameras[1] = dataclasses.replace(
        camera, model="FULL_OPENCV", params=(*camera.focal, *camera.principal_point, *[0.0] * 8)
    )
    shutil.rmtree(folder / "sparse" / "0")
    write_model(model, folder / "sparse" / "0", "bin")
    commit_folder(store, folder, "nvs/m/")
    result = materialize_partition([nvs_scene], "m", instance, resources)
    assert not result.success
    model_check = _checks(result)[MODEL_CHECK]
    assert not model_check.passed
    assert model_check.description == (
        "nvs/m/sparse/0/: unsupported camera model(s) FULL_OPENCV "
        "(supported: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL)"
    )
    assert _metadata(result)["model_source"] is None
    assert "outputs" not in store.list_branches()


def test_zero_registered_images_fails(
    store: EmbeddedStore, instance: dg.DagsterInstance, resources: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(MAUPERTUIS, folder)
    model = read_model(folder / "sparse" / "0")
    empty = dataclasses.replace(
        model,
        images=[],
        points=np.zeros((0, 3)),
        colours=np.zeros((0, 3), np.uint8),
        observations=[],
    )
    shutil.rmtree(folder / "sparse" / "0")
    write_model(empty, folder / "sparse" / "0", "bin")
    commit_folder(store, folder, "nvs/m/")
    result = materialize_partition([nvs_scene], "m", instance, resources)
    assert not result.success
    model_check = _checks(result)[MODEL_CHECK]
    assert model_check.description == "nvs/m/sparse/0/: the COLMAP model has zero registered images"
    assert "outputs" not in store.list_branches()


def test_photos_without_poses_are_posed_by_sfm(
    store: EmbeddedStore, instance: dg.DagsterInstance, resources: dict[str, Any], tmp_path: Path
) -> None:
    commit = _photos_only(store, "sc")
    result = materialize_partition([nvs_scene], "sc", instance, resources, _sfm_config())
    assert result.success
    assert all(c.passed for c in _checks(result).values())
    meta = _metadata(result)
    outputs_commit = meta["outputs_commit"]
    assert meta["lakefs_commit"] == commit
    assert meta["model_source"] == "sfm" and meta["model_commit"] == outputs_commit
    assert meta["model_uri"] == f"lakefs://scenes/{outputs_commit}/nvs/sc/sparse/0/"
    assert (meta["sfm_registered_images"], meta["sfm_images"]) == (3, 4)
    assert len(meta["sfm_unregistered"]) == 1 and meta["sfm_reused"] is False
    assert 0.0 < meta["sfm_mean_reprojection_error_px"] < 1.0
    assert "SIMPLE_RADIAL" in meta["model"]
    # The model is on outputs, with lineage; the watched branch is untouched.
    assert store.resolve("main") == commit
    assert store.exists(outputs_commit, "nvs/sc/sparse/0/points3D.bin")
    assert not store.exists("main", "nvs/sc/sparse/0/points3D.bin")
    lineage = store.get_commit(outputs_commit).metadata
    assert lineage["source_commit"] == commit
    assert lineage["dagster_run_id"] == result.run_id
    assert lineage["git_sha"] == "0123abc"
    # The record downstream assets read says where the model lives, and it can be fetched.
    record = result.output_for_node("nvs__scene")
    assert isinstance(record, NVSScene) and record.model_location is not None
    assert record.model_location.source == "sfm"
    assert record.model_location.commit_id == outputs_commit
    model_dir, images_dir = materialize_nvs_scene(store, record, tmp_path / "local")
    assert len(read_model(model_dir).images) == 3 and len(list(images_dir.iterdir())) == 4

    # A rerun on the same photos reuses the published model: no new SfM, same commit.
    again = materialize_partition([nvs_scene], "sc", instance, resources, _sfm_config())
    assert again.success
    meta_again = _metadata(again)
    assert meta_again["sfm_reused"] is True and meta_again["sfm_seconds"] is None
    assert meta_again["model_files"] == meta["model_files"] == []


def test_sfm_registering_too_few_fails_and_writes_nothing(
    store: EmbeddedStore, instance: dg.DagsterInstance, resources: dict[str, Any]
) -> None:
    commit = _photos_only(store, "sc")
    result = materialize_partition(
        [nvs_scene], "sc", instance, resources, _sfm_config(sfm_min_registered=4)
    )
    assert not result.success
    model_check = _checks(result)[MODEL_CHECK]
    assert not model_check.passed
    assert model_check.description == (
        f"nvs/sc/sparse/0/: SfM registered 3 of 4 images in nvs/sc/images/ at {commit[:12]}; "
        "at least 4 are needed"
    )
    assert _metadata(result)["model_source"] is None
    assert "outputs" not in store.list_branches()


def test_sfm_disabled_fails(
    store: EmbeddedStore, instance: dg.DagsterInstance, resources: dict[str, Any]
) -> None:
    _photos_only(store, "sc")
    result = materialize_partition([nvs_scene], "sc", instance, resources, _sfm_config(sfm=False))
    assert not result.success
    assert _checks(result)[MODEL_CHECK].description == (
        "nvs/sc/sparse/0/: no COLMAP model, and structure-from-motion is disabled"
    )


def test_photos_are_checked_against_the_scene_store_resources_pixel_budget(
    store: EmbeddedStore, instance: dg.DagsterInstance, resources: dict[str, Any]
) -> None:
    commit_folder(store, MAUPERTUIS, "nvs/maupertuis/")  # four 1,919 x 1,079 px photos
    tight = EmbeddedSceneStore(root=str(store.root), repository=store.repository, max_pixels=10**6)
    result = materialize_partition(
        [nvs_scene], "maupertuis", instance, {**resources, "scene_store": tight}
    )
    check = _checks(result)["files_present_and_readable"]
    assert not check.passed and check.description is not None
    assert "1,919 x 1,079 px is over the photo budget of 1,000,000 pixels" in check.description
