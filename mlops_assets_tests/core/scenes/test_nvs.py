from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mlops_assets.core.nvs.recover import SfMSettings, recover_model_with_sfm
from mlops_assets.core.scenes.checks import CheckLimits
from mlops_assets.core.scenes.colmap import read_model, write_model
from mlops_assets.core.scenes.layout import SceneError
from mlops_assets.core.scenes.nvs import (
    FILES_CHECK,
    MODEL_CHECK,
    check_nvs_scene,
    image_problem,
    materialize_nvs_scene,
    read_nvs_scene,
    validate_local_nvs,
)
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets_tests.conftest import DATA, commit_folder

MAUPERTUIS = DATA / "kapture" / "maupertuis"
SACRE_COEUR = DATA / "sacre_coeur"  # 4 real photos without poses
#: 3 of the 4 photos register at 512 px: fast, and enough to test both outcomes.
FAST_SFM = SfMSettings(min_registered=3, max_image_size=512, num_threads=1)


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


def test_photos_without_a_model_wait_for_sfm(store: EmbeddedStore, tmp_path: Path) -> None:
    folder = _copy(MAUPERTUIS, tmp_path)
    shutil.rmtree(folder / "sparse")
    commit_folder(store, folder, "nvs/m/")
    scene = read_nvs_scene(store, "main", "m")
    assert scene.needs_sfm and scene.model_location is None and scene.problems == {}
    outcomes = {o.name: (o.passed, o.description) for o in check_nvs_scene(scene)}
    assert outcomes[MODEL_CHECK] == (
        True,
        "no COLMAP model under nvs/m/sparse/0/: structure-from-motion will pose the 4 photos",
    )
    assert validate_local_nvs(folder) == []  # and such a folder may be ingested


def test_incomplete_model_is_refused(store: EmbeddedStore, tmp_path: Path) -> None:
    folder = _copy(MAUPERTUIS, tmp_path)
    (folder / "sparse" / "0" / "points3D.txt").unlink()
    commit_folder(store, folder, "nvs/m/")
    scene = read_nvs_scene(store, "main", "m")
    assert not scene.needs_sfm
    passed, description = _outcomes(store, "m")[MODEL_CHECK]
    assert not passed
    assert description == (
        "nvs/m/sparse/0/: incomplete: no complete COLMAP model (cameras, images, points3D as "
        ".bin or .txt); found cameras.txt, images.txt"
    )


def test_corrupt_photo_without_model_blocks_sfm(store: EmbeddedStore, tmp_path: Path) -> None:
    folder = _copy(MAUPERTUIS, tmp_path)
    shutil.rmtree(folder / "sparse")
    (folder / "images" / "01.jpg").write_bytes(b"not a jpeg")
    commit_folder(store, folder, "nvs/m/")
    outcomes = _outcomes(store, "m")
    assert not outcomes[FILES_CHECK][0]
    assert outcomes[MODEL_CHECK] == (
        False,
        "nvs/m/sparse/0/: no COLMAP model, and structure-from-motion cannot run until every "
        "photo is readable",
    )


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
    assert not passed
    assert description == (
        "nvs/m/sparse/0/: unsupported camera model(s) OPENCV "
        "(supported: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL)"
    )


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
    assert not passed
    assert description == "nvs/m/sparse/0/: the COLMAP model has zero registered images"


def test_validate_local_folder(tmp_path: Path) -> None:
    assert validate_local_nvs(MAUPERTUIS) == []
    folder = _copy(MAUPERTUIS, tmp_path)
    (folder / "images" / "03.jpg").unlink()
    problems = validate_local_nvs(folder)
    assert problems == [f"{folder / 'images'}: 1 registered image(s) missing: 03.jpg"]


def _photos_only(store: EmbeddedStore, scene_id: str) -> str:
    for photo in sorted(SACRE_COEUR.glob("*.jpg")):
        store.put("main", f"nvs/{scene_id}/images/{photo.name}", photo)
    return store.commit("main", f"photos of {scene_id}").id


def test_sfm_model_goes_to_outputs_and_is_reused(store: EmbeddedStore, tmp_path: Path) -> None:
    commit = _photos_only(store, "sc")
    scene = read_nvs_scene(store, "main", "sc")
    recovered = recover_model_with_sfm(
        store,
        scene,
        tmp_path / "w1",
        outputs_branch="outputs",
        base_branch="main",
        settings=FAST_SFM,
        metadata={"dagster_run_id": "run-1"},
    )
    location = recovered.model_location
    assert location is not None and recovered.sfm is not None and recovered.model is not None
    assert (location.source, location.branch, location.prefix) == (
        "sfm",
        "outputs",
        "nvs/sc/sparse/0/",
    )
    assert (recovered.sfm.images, recovered.sfm.registered_images) == (4, 3)
    assert len(recovered.sfm.unregistered) == 1 and not recovered.sfm.reused
    assert recovered.model.camera_models == ["SIMPLE_RADIAL"]
    # The model is on outputs only, pinned at the publication commit; main is untouched.
    assert store.resolve("main") == commit
    assert not store.exists("main", "nvs/sc/sparse/0/cameras.bin")
    assert {f.path for f in location.files} >= {
        f"nvs/sc/sparse/0/{n}.bin" for n in ("cameras", "images", "points3D")
    }
    published = store.get_commit(location.commit_id)
    assert published.metadata["source_commit"] == commit
    assert published.metadata["model_source"] == "sfm"
    assert published.metadata["dagster_run_id"] == "run-1"
    assert published.metadata["sfm_registered_images"] == "3"
    passed, description = {o.name: (o.passed, o.description) for o in check_nvs_scene(recovered)}[
        MODEL_CHECK
    ]
    assert passed and "structure-from-motion registered 3 of 4 photos" in description
    record = recovered.to_dict()
    assert (
        record["model_location"]["uri"] == f"lakefs://scenes/{location.commit_id}/nvs/sc/sparse/0/"
    )
    assert record["sfm"]["registered_images"] == 3

    # A second run for the same photos and settings reads the published model back.
    again = recover_model_with_sfm(
        store,
        read_nvs_scene(store, "main", "sc"),
        tmp_path / "w2",
        outputs_branch="outputs",
        base_branch="main",
        settings=FAST_SFM,
    )
    assert again.sfm is not None and again.sfm.reused
    assert again.model_location is not None
    assert again.model_location.files == location.files
    assert again.model == recovered.model

    # Downstream reads photos from main's commit and the model from outputs.
    model_dir, images_dir = materialize_nvs_scene(store, record, tmp_path / "local")
    assert sorted(p.name for p in images_dir.iterdir()) == sorted(
        p.name for p in SACRE_COEUR.glob("*.jpg")
    )
    assert len(read_model(model_dir).images) == 3


def test_sfm_registering_too_few_writes_nothing(store: EmbeddedStore, tmp_path: Path) -> None:
    commit = _photos_only(store, "sc")
    scene = read_nvs_scene(store, "main", "sc")
    settings = SfMSettings(min_registered=4, max_image_size=512, num_threads=2)
    failed = recover_model_with_sfm(
        store,
        scene,
        tmp_path / "w",
        outputs_branch="outputs",
        base_branch="main",
        settings=settings,
    )
    assert failed.model_location is None
    passed, description = {o.name: (o.passed, o.description) for o in check_nvs_scene(failed)}[
        MODEL_CHECK
    ]
    assert not passed
    assert description == (
        f"nvs/sc/sparse/0/: SfM registered 3 of 4 images in nvs/sc/images/ at {commit[:12]}; "
        "at least 4 are needed"
    )
    assert "outputs" not in store.list_branches()
    with pytest.raises(SceneError, match="nvs/sc: no usable COLMAP model recorded"):
        materialize_nvs_scene(store, failed.to_dict(), tmp_path / "local")


def test_sfm_disabled(store: EmbeddedStore, tmp_path: Path) -> None:
    _photos_only(store, "sc")
    scene = recover_model_with_sfm(
        store,
        read_nvs_scene(store, "main", "sc"),
        tmp_path,
        outputs_branch="outputs",
        base_branch="main",
        settings=SfMSettings(enabled=False),
    )
    assert scene.problems == {
        "nvs/sc/sparse/0/": "no COLMAP model, and structure-from-motion is disabled"
    }


def test_materialize_a_committed_model(store: EmbeddedStore, tmp_path: Path) -> None:
    commit_folder(store, MAUPERTUIS, "nvs/maup/")
    record = read_nvs_scene(store, "main", "maup").to_dict()
    assert record["model_location"]["source"] == "scene"
    assert record["model_location"]["commit_id"] == record["commit_id"]
    model_dir, images_dir = materialize_nvs_scene(store, record, tmp_path / "local")
    assert (model_dir, images_dir) == (tmp_path / "local/sparse/0", tmp_path / "local/images")
    assert sorted(p.name for p in images_dir.iterdir()) == [f"0{i}.jpg" for i in range(4)]
    assert len(read_model(model_dir).points) == 1039


# Checks check what training relies on ----------------------------------------------------


def test_photos_are_decoded_whole_not_just_verified(store: EmbeddedStore, tmp_path: Path) -> None:
    folder = _copy(MAUPERTUIS, tmp_path)
    original = (folder / "images" / "01.jpg").read_bytes()
    (folder / "images" / "01.jpg").write_bytes(original[: len(original) // 3])
    header = original.index(b"\xff\xda") + 20  # the start of scan: compressed data follows
    rng = np.random.default_rng(0)
    garbage = rng.integers(0, 256, len(original) - header, dtype=np.uint8).tobytes()
    (folder / "images" / "02.jpg").write_bytes(original[:header] + garbage)
    problems = validate_local_nvs(folder)
    assert problems[0].startswith(f"{folder / 'images' / '01.jpg'}: not a readable image")
    assert "truncated" in problems[0]
    assert problems[1].startswith(f"{folder / 'images' / '02.jpg'}: not a readable image")
    commit_folder(store, folder, "nvs/m/")
    passed, description = _outcomes(store, "m")[FILES_CHECK]
    assert not passed
    assert "nvs/m/images/01.jpg: not a readable image" in description
    assert "nvs/m/images/02.jpg: not a readable image" in description


def test_photos_over_the_pixel_budget_are_refused_before_decoding(tmp_path: Path) -> None:
    folder = _copy(MAUPERTUIS, tmp_path)
    problems = validate_local_nvs(folder, CheckLimits(max_photo_pixels=1000))
    assert len(problems) == 4
    assert "px is over the photo budget of 1,000 pixels (refused before decoding)" in problems[0]


def _jpeg(path: Path, size: int, **save: Any) -> Path:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90, subsampling=0, **save)
    return path


def test_photo_budget_counts_what_decoding_holds(tmp_path: Path) -> None:
    # 64 x 64 px; a progressive 4:4:4 JPEG also holds 3 x 64 x 2 bytes of coefficients a block,
    # 6 bytes a pixel, counted as 1.5 pixels of 4 bytes: 4,096 + 6,144 = 10,240 "pixels"
    limits = CheckLimits(max_photo_pixels=8_000)
    assert image_problem(_jpeg(tmp_path / "baseline.jpg", 64), limits) is None
    problem = image_problem(_jpeg(tmp_path / "progressive.jpg", 64, progressive=True), limits)
    assert problem == (
        "64 x 64 px (counted as 10,240 px with the DCT coefficients a progressive or multi-scan "
        "JPEG buffers) is over the photo budget of 8,000 pixels (refused before decoding)"
    )
    assert image_problem(tmp_path / "progressive.jpg", CheckLimits(max_photo_pixels=10_240)) is None
    # a sequential JPEG whose first scan holds one of its three components has more scans:
    # libjpeg buffers its coefficients too (the header is all the budget reads)
    data = bytearray((tmp_path / "baseline.jpg").read_bytes())
    scan = data.index(b"\xff\xda")
    assert data[scan + 4] == 3
    data[scan + 4] = 1
    (tmp_path / "multiscan.jpg").write_bytes(bytes(data))
    problem = image_problem(tmp_path / "multiscan.jpg", limits)
    assert problem is not None and "counted as 10,240 px" in problem


def test_photos_hold_bounded_metadata_and_are_png_or_jpeg(tmp_path: Path) -> None:
    data = _jpeg(tmp_path / "ok.jpg", 16).read_bytes()
    comment = b"\xff\xfe" + (6).to_bytes(2, "big") + b"note"  # a COM segment of 4 bytes
    (tmp_path / "many.jpg").write_bytes(data[:2] + comment * 5000 + data[2:])
    assert image_problem(tmp_path / "many.jpg") == (
        "holds over 4,096 metadata segments (refused before decoding)"
    )
    app = b"\xff\xe5" + (65_535).to_bytes(2, "big") + bytes(65_533)
    (tmp_path / "big.jpg").write_bytes(data[:2] + app * 300 + data[2:])
    assert image_problem(tmp_path / "big.jpg") == (
        "holds over 16 MiB of metadata before its image data (refused before decoding)"
    )
    Image.new("RGB", (16, 16)).save(tmp_path / "tiff.png", format="TIFF")
    problem = image_problem(tmp_path / "tiff.png")
    assert problem is not None and problem.startswith("not a readable image (cannot identify")


def test_truncated_binary_model_files_are_refused_before_pycolmap_reads_them(
    demo_nvs_dir: Path, tmp_path: Path
) -> None:
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        folder = tmp_path / name
        shutil.copytree(demo_nvs_dir, folder)
        path = folder / "sparse" / "0" / name
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        (problem,) = validate_local_nvs(folder)
        assert problem.startswith(f"{path}: truncated or corrupt binary COLMAP file (")
    # A points3D.bin whose count claims a billion points fails on its size, at once.
    folder = tmp_path / "claims"
    shutil.copytree(demo_nvs_dir, folder)
    points = folder / "sparse" / "0" / "points3D.bin"
    points.write_bytes((10**9).to_bytes(8, "little") + points.read_bytes()[8:])
    (problem,) = validate_local_nvs(folder)
    assert "it declares 1,000,000,000 3D points, which need at least 51,000,000,000 bytes" in (
        problem
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"params": (0.0, 0.0, 24.0, 24.0)}, "camera 1 has focal length 0, 0 px (must be > 0)"),
        ({"params": (-50.0, 50.0, 24.0, 24.0)}, "camera 1 has focal length -50, 50 px"),
        ({"params": (math.nan, 50.0, 24.0, 24.0)}, "camera 1 has non-finite parameters"),
        ({"width": 0}, "camera 1 is 0 x 48 px"),
    ],
)
def test_intrinsics_must_be_positive_and_finite(
    demo_nvs_dir: Path, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    folder = tmp_path / "scene"
    shutil.copytree(demo_nvs_dir, folder)
    model = read_model(folder / "sparse" / "0")
    model.cameras[1] = dataclasses.replace(model.cameras[1], **change)
    shutil.rmtree(folder / "sparse" / "0")
    write_model(model, folder / "sparse" / "0", "bin")  # pycolmap reads these as they are
    problems = validate_local_nvs(folder)
    assert any(message in p for p in problems), problems


def test_poses_must_be_finite(demo_nvs_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scene"
    shutil.copytree(demo_nvs_dir, folder)
    model = read_model(folder / "sparse" / "0")
    image = model.images[2]
    model.images[2] = dataclasses.replace(image, translation=np.array([np.nan, 0.0, 1.0]))
    shutil.rmtree(folder / "sparse" / "0")
    write_model(model, folder / "sparse" / "0", "bin")  # pycolmap reads these as they are
    problems = validate_local_nvs(folder)
    assert f"1 image(s) have non-finite poses: {image.name}" in problems[0]
