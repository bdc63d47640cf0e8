from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio

from mlops_assets.core.demo.cd import (
    DEMO_CD_EVAL_SCENES,
    DEMO_CD_SCENES,
    LABEL_NODATA,
    NODATA,
    CDSceneSpec,
    _build,  # pyright: ignore[reportPrivateUsage]
    _render,  # pyright: ignore[reportPrivateUsage]
    write_cd_scene,
)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_generation_is_deterministic(tmp_path: Path) -> None:
    spec = DEMO_CD_SCENES[1]
    a = write_cd_scene(spec, tmp_path / "a", size=96)
    b = write_cd_scene(spec, tmp_path / "b", size=96)
    assert _digest(a) == _digest(b)
    assert sorted(_digest(a)) == ["label.tif", "post.tif", "pre.tif"]


def test_scene_is_georeferenced_tiled_compressed(demo_cd_dir: Path) -> None:
    with (
        rasterio.open(demo_cd_dir / "pre.tif") as pre,
        rasterio.open(demo_cd_dir / "label.tif") as lab,
    ):
        assert pre.crs.to_epsg() == 32633
        assert pre.res == (2.0, 2.0)
        assert pre.count == 4 and pre.dtypes[0] == "uint16" and pre.nodata == NODATA
        assert pre.descriptions == ("blue", "green", "red", "nir")
        assert pre.profile["tiled"] and pre.compression.value == "DEFLATE"
        assert pre.tags()["TIFFTAG_DATETIME"].startswith("2024")
        assert lab.nodata == LABEL_NODATA
        assert set(np.unique(lab.read(1))) <= {0, 1, LABEL_NODATA}


def test_nodata_border_and_labelled_change(demo_cd_dir: Path) -> None:
    with (
        rasterio.open(demo_cd_dir / "pre.tif") as pre_src,
        rasterio.open(demo_cd_dir / "post.tif") as post_src,
        rasterio.open(demo_cd_dir / "label.tif") as lab_src,
    ):
        pre = pre_src.read().astype(np.float32)
        post = post_src.read().astype(np.float32)
        label = lab_src.read(1)
    pre_nodata = (pre == NODATA).all(axis=0)
    assert 0.001 < pre_nodata.mean() < 0.15  # a swath edge, not an empty image
    assert (label[pre_nodata] == LABEL_NODATA).all()
    changed, unchanged = label == 1, label == 0
    assert 0.002 < changed.mean() < 0.2
    # Labelled change is where the surface really changed: far larger differences there.
    diff = np.abs(post - pre).mean(axis=0)
    assert diff[changed].mean() > 2 * diff[unchanged].mean()
    # ... while the whole unchanged scene still differs (season, illumination).
    assert diff[unchanged].mean() > 50


@pytest.mark.parametrize("spec", (*DEMO_CD_SCENES, *DEMO_CD_EVAL_SCENES), ids=lambda s: s.scene_id)
def test_every_labelled_pixel_shows_a_change(spec: CDSceneSpec) -> None:
    """An old road or roof painted over a new road or clearing hides it at both dates.

    Before that was handled, 3.1 % of the labelled pixels of the demo scenes at 768 px had exactly
    the values of the same scene rendered without any change: no model could find them.
    """
    size = 384
    land = _build(spec, size)
    window = (slice(0, size), slice(0, size))
    _, post, label, _, _ = _render(land, spec, *window)
    unchanged = dataclasses.replace(
        land,
        roads=[r for r in land.roads if not r.new],
        rects=[r for r in land.rects if not r.new],
        clearings=[],
    )
    _, post_unchanged, _, _, _ = _render(unchanged, spec, *window)
    labelled = label == 1
    assert labelled.sum() > 500
    hidden = labelled & (post == post_unchanged).all(axis=-1)
    assert hidden.sum() == 0


def test_post_on_another_grid(demo_cd_warped_dir: Path) -> None:
    with (
        rasterio.open(demo_cd_warped_dir / "pre.tif") as pre,
        rasterio.open(demo_cd_warped_dir / "post.tif") as post,
    ):
        assert pre.crs.to_epsg() == 32633 and post.crs.to_epsg() == 32632
        assert post.res == (3.0, 3.0)
        assert post.count == 4 and post.nodata == NODATA


@pytest.mark.parametrize("size", [64, 300])
def test_sizes(tmp_path: Path, size: int) -> None:
    spec = dataclasses.replace(DEMO_CD_SCENES[2], scene_id="sized")
    folder = write_cd_scene(spec, tmp_path / "s", size=size)
    with rasterio.open(folder / "post.tif") as post:
        assert (post.width, post.height) == (size, size)


def test_too_small_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too small"):
        write_cd_scene(DEMO_CD_SCENES[0], tmp_path / "s", size=16)


def test_evaluation_scenes_are_their_own_landscapes() -> None:
    ids = {s.scene_id for s in DEMO_CD_SCENES}
    assert DEMO_CD_EVAL_SCENES and not ids & {s.scene_id for s in DEMO_CD_EVAL_SCENES}
    assert not {s.seed for s in DEMO_CD_SCENES} & {s.seed for s in DEMO_CD_EVAL_SCENES}
