"""Pixel-grid scenes: declared by a manifest, read and checked without a CRS, same size required."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from mlops_assets.core.scenes.cd import (
    FILES_CHECK,
    OVERLAP_CHECK,
    check_cd_scene,
    read_cd_scene,
    validate_local_cd,
)
from mlops_assets.core.scenes.layout import CDPaths, SceneError
from mlops_assets.core.scenes.manifest import SceneManifest
from mlops_assets.core.scenes.pixel_grid import (
    label_from_values,
    plan_pixel_grid_upload,
    write_pixel_raster,
)
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets_tests.conftest import commit_folder


def pixel_scene(folder: Path, size: tuple[int, int] = (48, 40), label: bool = True) -> Path:
    """CRS-less pre/post (3 x uint8) and a 0/1 label of ``size`` (h, w), no manifest."""
    rng = np.random.default_rng(0)
    h, w = size
    for name in ("pre.tif", "post.tif"):
        bands = list(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
        write_pixel_raster(folder / name, bands, rgb=True)
    if label:
        write_pixel_raster(folder / "label.tif", [np.zeros((h, w), np.uint8)], nodata=255)
    return folder


def test_a_declared_pixel_grid_scene_is_read_and_passes(
    store: EmbeddedStore, tmp_path: Path
) -> None:
    folder = pixel_scene(tmp_path / "s")
    SceneManifest(grid="pixel", source="test").write(folder)
    commit_folder(store, folder, "cd/crop/")
    scene = read_cd_scene(store, "main", "crop")
    assert scene.grid == "pixel" and scene.problems == {}
    assert scene.pre is not None and scene.pre.crs == "" and scene.pre.width == 40
    assert scene.to_dict()["grid"] == "pixel"
    assert scene.to_dict()["manifest"]["source"] == "test"
    outcomes = {o.name: o for o in check_cd_scene(scene)}
    assert outcomes[FILES_CHECK].passed and outcomes[OVERLAP_CHECK].passed
    assert outcomes[OVERLAP_CHECK].description == (
        "pixel grid (no CRS): pre, post and label are all 40x48 px; 3 bands each"
    )


def test_an_undeclared_crs_less_scene_is_still_refused(
    store: EmbeddedStore, tmp_path: Path
) -> None:
    commit_folder(store, pixel_scene(tmp_path / "s"), "cd/crop/")
    scene = read_cd_scene(store, "main", "crop")
    assert scene.grid == "crs"
    assert scene.problems == {
        p: "has no coordinate reference system (not georeferenced)"
        for p in (CDPaths("crop").pre, CDPaths("crop").post, CDPaths("crop").label)
    }
    assert not check_cd_scene(scene)[0].passed


def test_a_pixel_grid_scene_needs_one_size(store: EmbeddedStore, tmp_path: Path) -> None:
    folder = pixel_scene(tmp_path / "s")
    write_pixel_raster(folder / "post.tif", [np.zeros((48, 41), np.uint8)] * 3)
    SceneManifest(grid="pixel").write(folder)
    commit_folder(store, folder, "cd/crop/")
    overlap = check_cd_scene(read_cd_scene(store, "main", "crop"))[1]
    assert not overlap.passed
    assert overlap.description == (
        "cd/crop/post.tif is 41x48 px but cd/crop/pre.tif is 40x48 px: a pixel-grid scene "
        "needs one size"
    )


def test_a_broken_manifest_is_a_problem_of_its_file(store: EmbeddedStore, tmp_path: Path) -> None:
    folder = pixel_scene(tmp_path / "s")
    (folder / "scene.json").write_text('{"grid": "hexagons"}')
    commit_folder(store, folder, "cd/crop/")
    scene = read_cd_scene(store, "main", "crop")
    assert scene.problems["cd/crop/scene.json"] == "grid must be one of crs, pixel"
    assert not check_cd_scene(scene)[0].passed


def test_local_validation_of_a_pixel_grid_folder(tmp_path: Path) -> None:
    folder = pixel_scene(tmp_path / "s")
    assert validate_local_cd(folder, pixel_grid=True) == []
    assert validate_local_cd(folder) == [
        f"{folder / n}: has no coordinate reference system (not georeferenced)"
        for n in ("pre.tif", "post.tif", "label.tif")
    ]
    write_pixel_raster(folder / "label.tif", [np.zeros((40, 40), np.uint8)], nodata=255)
    (problem,) = validate_local_cd(folder, pixel_grid=True)
    assert "label.tif is 40x40 px but" in problem


def test_the_upload_plan_adds_a_manifest_and_leaves_the_folder_alone(tmp_path: Path) -> None:
    folder = pixel_scene(tmp_path / "s")
    (folder / "notes.txt").write_text("x")
    plan = plan_pixel_grid_upload(folder, "crop", tmp_path / "m")
    targets = [target for _, target in plan.files]
    assert targets == [
        "cd/crop/pre.tif",
        "cd/crop/post.tif",
        "cd/crop/label.tif",
        "cd/crop/scene.json",
    ]
    manifest = SceneManifest.read(tmp_path / "m")
    assert manifest is not None and manifest.pixel_grid and manifest.source == "ingest"
    assert not (folder / "scene.json").exists() and plan.ignored == [folder / "notes.txt"]
    write_pixel_raster(folder / "post.tif", [np.zeros((48, 41), np.uint8)] * 3)
    with pytest.raises(SceneError, match=r"post\.tif is 41x48 px"):
        plan_pixel_grid_upload(folder, "crop", tmp_path / "m")


@pytest.mark.parametrize(
    ("values", "stored", "encoding"),
    [
        ([0, 1, 1], [0, 1, 1], "0 no change, 1 change (kept)"),
        ([0, 255, 255], [0, 1, 1], "0 no change, 255 change -> 0, 1"),
        ([0, 0, 0], [0, 0, 0], "0 no change, 1 change (kept)"),
    ],
)
def test_label_encodings_are_mapped_to_zero_one(
    values: list[int], stored: list[int], encoding: str
) -> None:
    label, how = label_from_values(np.array([values], np.uint8), "x.png")
    assert label.tolist() == [stored] and how == encoding


def test_other_label_values_are_refused_naming_the_file() -> None:
    with pytest.raises(SceneError, match=r"^x\.png: label values 0, 1, 255; expected 0/1 or"):
        label_from_values(np.array([[0, 1, 255]], np.uint8), "x.png")


def test_manifest_round_trip_and_refusals(tmp_path: Path) -> None:
    manifest = SceneManifest(grid="pixel", source="oscd", bands=["B01"], reflectance_scale=1e-4)
    assert SceneManifest.parse(manifest.to_json().encode(), "m") == manifest
    for content, problem in (
        (b"[1]", "expected a JSON object"),
        (b"{", "not valid JSON"),
        (b'{"colour": 1}', "unknown field(s) colour"),
        (b'{"version": 9}', "manifest version 9 is newer"),
    ):
        with pytest.raises(SceneError, match=rf"^m: {re.escape(problem)}"):
            SceneManifest.parse(content, "m")
