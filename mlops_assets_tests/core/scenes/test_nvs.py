from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from mlops_assets.core.scenes.colmap import read_model, write_model
from mlops_assets.core.scenes.nvs import (
    FILES_CHECK,
    MODEL_CHECK,
    check_nvs_scene,
    read_nvs_scene,
    validate_local_nvs,
)
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets_tests.conftest import DATA, commit_folder

MAUPERTUIS = DATA / "kapture" / "maupertuis"


def _outcomes(store: EmbeddedStore, scene_id: str) -> dict[str, tuple[bool, str]]:
    return {
        o.name: (o.passed, o.description)
        for o in check_nvs_scene(read_nvs_scene(store, "main", scene_id))
    }


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "scene"
    shutil.copytree(src, dst)
    return dst


def test_real_capture_passes(store: EmbeddedStore) -> None:
    commit = commit_folder(store, MAUPERTUIS, "nvs/maupertuis/")
    scene = read_nvs_scene(store, "main", "maupertuis")
    assert scene.commit_id == commit
    assert [i.path for i in scene.images] == [f"nvs/maupertuis/images/0{i}.jpg" for i in range(4)]
    assert scene.model is not None
    assert scene.model.format == "txt"
    assert scene.model.camera_models == ["SIMPLE_PINHOLE"]
    assert (scene.model.registered_images, scene.model.points) == (4, 1039)
    assert scene.model.mean_reprojection_error_px is not None
    assert all(o.passed for o in check_nvs_scene(scene))


def test_generated_binary_capture_passes(store: EmbeddedStore, demo_nvs_dir: Path) -> None:
    commit_folder(store, demo_nvs_dir, "nvs/globe/")
    scene = read_nvs_scene(store, "main", "globe")
    assert scene.model is not None and scene.model.format == "bin"
    assert scene.model.registered_images == len(scene.images) == 8
    assert all(o.passed for o in check_nvs_scene(scene))


def test_missing_registered_image_is_named(store: EmbeddedStore, tmp_path: Path) -> None:
    folder = _copy(MAUPERTUIS, tmp_path)
    (folder / "images" / "02.jpg").unlink()
    commit_folder(store, folder, "nvs/m/")
    passed, description = _outcomes(store, "m")[MODEL_CHECK]
    assert not passed
    assert "1 registered image(s) missing from nvs/m/images/: 02.jpg" in description


def test_corrupt_photo_is_named(store: EmbeddedStore, tmp_path: Path) -> None:
    folder = _copy(MAUPERTUIS, tmp_path)
    (folder / "images" / "01.jpg").write_bytes(b"not a jpeg at all")
    commit_folder(store, folder, "nvs/m/")
    passed, description = _outcomes(store, "m")[FILES_CHECK]
    assert not passed
    assert "nvs/m/images/01.jpg: not a readable image" in description


def test_missing_model_is_reported(store: EmbeddedStore, tmp_path: Path) -> None:
    folder = _copy(MAUPERTUIS, tmp_path)
    shutil.rmtree(folder / "sparse")
    commit_folder(store, folder, "nvs/m/")
    outcomes = _outcomes(store, "m")
    assert outcomes[FILES_CHECK][0]
    assert not outcomes[MODEL_CHECK][0]
    assert "no complete COLMAP model" in outcomes[MODEL_CHECK][1]


def test_unsupported_camera_model_is_refused(store: EmbeddedStore, tmp_path: Path) -> None:
    folder = _copy(MAUPERTUIS, tmp_path)
    model = read_model(folder / "sparse" / "0")
    camera = model.cameras[1]
    model.cameras[1] = dataclasses.replace(
        camera, model="OPENCV", params=(*camera.focal, *camera.principal_point, 0.0, 0.0, 0.0, 0.0)
    )
    shutil.rmtree(folder / "sparse" / "0")
    write_model(model, folder / "sparse" / "0", "txt")
    commit_folder(store, folder, "nvs/m/")
    passed, description = _outcomes(store, "m")[MODEL_CHECK]
    assert not passed and "unsupported camera model(s) OPENCV" in description


def test_zero_registered_images_is_refused(store: EmbeddedStore, tmp_path: Path) -> None:
    folder = _copy(MAUPERTUIS, tmp_path)
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
    passed, description = _outcomes(store, "m")[MODEL_CHECK]
    assert not passed and "zero registered images" in description


def test_validate_local_folder(tmp_path: Path) -> None:
    assert validate_local_nvs(MAUPERTUIS) == []
    folder = _copy(MAUPERTUIS, tmp_path)
    (folder / "images" / "03.jpg").unlink()
    problems = validate_local_nvs(folder)
    assert problems == [f"{folder / 'images'}: 1 registered image(s) missing: 03.jpg"]
