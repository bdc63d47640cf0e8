from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from mlops_assets.core.scenes.cd import (
    FILES_CHECK,
    OVERLAP_CHECK,
    check_cd_scene,
    read_cd_scene,
    validate_local_cd,
)
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets_tests.conftest import DATA, commit_folder

RASTERIO = DATA / "rasterio"


def _scene(tmp_path: Path, pre: Path, post: Path, label: Path | None = None) -> Path:
    folder = tmp_path / "scene"
    folder.mkdir()
    shutil.copy(pre, folder / "pre.tif")
    shutil.copy(post, folder / "post.tif")
    if label is not None:
        shutil.copy(label, folder / "label.tif")
    return folder


def _outcomes(store: EmbeddedStore, scene_id: str) -> dict[str, tuple[bool, str]]:
    scene = read_cd_scene(store, "main", scene_id)
    return {o.name: (o.passed, o.description) for o in check_cd_scene(scene)}


def test_demo_scene_is_described_and_passes(store: EmbeddedStore, demo_cd_dir: Path) -> None:
    commit = commit_folder(store, demo_cd_dir, "cd/farmland-north/")
    scene = read_cd_scene(store, "main", "farmland-north")
    assert scene.commit_id == commit
    assert scene.pre is not None and scene.post is not None and scene.label is not None
    assert scene.pre.crs == "EPSG:32633"
    assert (scene.pre.width, scene.pre.height, scene.pre.count) == (128, 128, 4)
    assert scene.pre.dtype == "uint16" and scene.pre.nodata == 0
    assert scene.pre.compression == "DEFLATE"
    assert scene.label.count == 1
    assert scene.uri(scene.pre.path) == f"lakefs://scenes/{commit}/cd/farmland-north/pre.tif"
    assert all(o.passed for o in check_cd_scene(scene))


def test_content_hash_ignores_other_scenes(store: EmbeddedStore, demo_cd_dir: Path) -> None:
    commit_folder(store, demo_cd_dir, "cd/a/")
    before = read_cd_scene(store, "main", "a").content_hash
    commit_folder(store, demo_cd_dir, "cd/b/", "another scene")
    assert read_cd_scene(store, "main", "a").content_hash == before
    store.put("main", "cd/a/label.tif", RASTERIO / "byte.tif")
    store.commit("main", "new label")
    assert read_cd_scene(store, "main", "a").content_hash != before


def test_warped_post_overlaps(store: EmbeddedStore, demo_cd_warped_dir: Path) -> None:
    commit_folder(store, demo_cd_warped_dir, "cd/w/")
    scene = read_cd_scene(store, "main", "w")
    assert scene.post is not None and scene.post.crs == "EPSG:32632"
    assert scene.post.resolution == (3.0, 3.0)
    overlap = check_cd_scene(scene)[1]
    assert overlap.passed and overlap.metadata["overlap_fraction"] > 0.95


def test_corrupt_post_is_named(store: EmbeddedStore, tmp_path: Path) -> None:
    folder = _scene(tmp_path, RASTERIO / "rgb1.tif", RASTERIO / "corrupt.tif")
    commit_folder(store, folder, "cd/bad/")
    outcomes = _outcomes(store, "bad")
    passed, description = outcomes[FILES_CHECK]
    assert not passed
    assert "cd/bad/post.tif" in description and "not a readable GeoTIFF" in description


def test_missing_post_is_named(store: EmbeddedStore, tmp_path: Path) -> None:
    store.put("main", "cd/half/pre.tif", RASTERIO / "rgb1.tif")
    store.commit("main", "only pre")
    outcomes = _outcomes(store, "half")
    assert outcomes[FILES_CHECK] == (
        False,
        "cd/half/post.tif: missing: scene 'half' has no post image",
    )
    assert not outcomes[OVERLAP_CHECK][0]


def test_raster_without_crs_is_refused(store: EmbeddedStore, tmp_path: Path) -> None:
    folder = _scene(tmp_path, RASTERIO / "rgb1.tif", RASTERIO / "rotated.tif")
    commit_folder(store, folder, "cd/rot/")
    passed, description = _outcomes(store, "rot")[FILES_CHECK]
    assert not passed and "has no coordinate reference system" in description


def test_other_crs_overlaps_but_band_counts_differ(store: EmbeddedStore, tmp_path: Path) -> None:
    folder = _scene(tmp_path, RASTERIO / "rgb1.tif", RASTERIO / "rgb1_fake_nir_epsg3857.tif")
    commit_folder(store, folder, "cd/nir/")
    scene = read_cd_scene(store, "main", "nir")
    overlap = check_cd_scene(scene)[1]
    assert not overlap.passed
    assert overlap.metadata["overlap_fraction"] > 0.9  # same area, EPSG:3857 against UTM 18N
    assert "band counts differ" in overlap.description
    assert "has 3" in overlap.description and "has 1" in overlap.description


def test_non_overlapping_footprints(store: EmbeddedStore, tmp_path: Path) -> None:
    folder = _scene(
        tmp_path, RASTERIO / "rgb1.tif", RASTERIO / "byte.tif"
    )  # New York vs California
    commit_folder(store, folder, "cd/apart/")
    overlap = check_cd_scene(read_cd_scene(store, "main", "apart"))[1]
    assert not overlap.passed
    assert "cd/apart/post.tif does not overlap cd/apart/pre.tif" in overlap.description


def test_all_nodata_scene_is_readable(store: EmbeddedStore, tmp_path: Path) -> None:
    folder = _scene(tmp_path, RASTERIO / "all-nodata.tif", RASTERIO / "all-nodata.tif")
    commit_folder(store, folder, "cd/empty/")
    scene = read_cd_scene(store, "main", "empty")
    assert scene.pre is not None and scene.pre.nodata == 0 and scene.pre.dtype == "uint16"
    assert _outcomes(store, "empty")[FILES_CHECK][0]


def _like(template: Path, out: Path, data: np.ndarray, **profile: Any) -> Path:
    """A GeoTIFF on ``template``'s grid holding ``data`` ([bands, rows, cols])."""
    with rasterio.open(template) as src:
        meta = src.profile
    meta.update(count=data.shape[0], dtype=str(data.dtype), nodata=None, **profile)
    with rasterio.open(out, "w", **meta) as dst:
        dst.write(data)
    return out


def test_label_must_be_single_band(store: EmbeddedStore, tmp_path: Path) -> None:
    with rasterio.open(RASTERIO / "rgb1.tif") as src:
        shape = (3, src.height, src.width)
    label = _like(RASTERIO / "rgb1.tif", tmp_path / "label3.tif", np.ones(shape, np.uint8))
    folder = _scene(tmp_path, RASTERIO / "rgb1.tif", RASTERIO / "rgb1.tif", label)
    commit_folder(store, folder, "cd/lab/")
    overlap = check_cd_scene(read_cd_scene(store, "main", "lab"))[1]
    assert "cd/lab/label.tif has 3 bands, expected 1" in overlap.description


def test_validate_local_folder(tmp_path: Path, demo_cd_dir: Path) -> None:
    assert validate_local_cd(demo_cd_dir) == []
    bad = _scene(tmp_path, RASTERIO / "rgb1.tif", RASTERIO / "corrupt.tif")
    problems = validate_local_cd(bad)
    assert len(problems) == 1 and str(bad / "post.tif") in problems[0]
    (bad / "post.tif").unlink()
    assert validate_local_cd(bad) == [f"{bad / 'post.tif'}: missing"]


def test_unknown_ref_fails_clearly(store: EmbeddedStore) -> None:
    from mlops_assets.core.store.types import NotFoundError

    with pytest.raises(NotFoundError, match="no-such-branch"):
        read_cd_scene(store, "no-such-branch", "s1")
