"""The alignment estimate on real imagery: Landsat (rasterio's RGB.byte.tif and a quadrant) and
two Sentinel-2 NDVI dates of different seasons, one with clouds (eo-learn).

Each pair is written as a scene folder and tiled as ``cd/tiles`` does; "shifted" moves post's
pixels and keeps its georeference, as a misregistered product would be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from numpy.typing import NDArray

from mlops_assets.core.cd.config import TilingConfig, preset
from mlops_assets.core.cd.tiles import (
    AlignmentWindow,
    TileIndex,
    combine_windows,
    judge_alignment,
    phase_shift,
)
from mlops_assets_tests.conftest import DATA
from mlops_assets_tests.core.cd import tile_folder, write_raster

LIMIT_PX = 1.0  # the cd/tiles check's default
MIN_WINDOWS = 5
SCENES: dict[str, tuple[str, str, TilingConfig]] = {
    # name: (pre file, post file, tiling config)
    "landsat": ("rasterio/rgb_deflate.tif", "rasterio/rgb_deflate.tif", TilingConfig()),
    "landsat-quadrant": ("rasterio/rgb1.tif", "rasterio/rgb1.tif", TilingConfig()),
    "sentinel2-ndvi": (
        "eo-learn/ndvi_2015-09-09.tif",
        "eo-learn/ndvi_2016-05-16.tif",
        preset(TilingConfig, "tiny"),  # 101 x 100 px: 64 px tiles, 32 px alignment windows
    ),
}


def read(name: str) -> tuple[NDArray[Any], dict[str, Any]]:
    with rasterio.open(DATA / name) as src:
        return src.read(), dict(src.profile)


def shifted(image: NDArray[Any], dy: int, dx: int, fill: float) -> NDArray[Any]:
    """``image`` with its pixels moved by (dy, dx): out[y, x] = image[y - dy, x - dx]."""
    out = np.full_like(image, fill)
    height, width = image.shape[-2:]
    out[..., max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = image[
        ..., max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return out


def other_image(shape: tuple[int, ...], like: NDArray[Any]) -> NDArray[Any]:
    """A different real image (rasterio's rgb4.tif, the scene's south-east quadrant), tiled by
    mirroring to ``shape`` [C, h, w] and scaled to ``like``'s range."""
    source, _ = read("rasterio/rgb4.tif")
    image = source[: shape[0]] if shape[0] <= 3 else source[[0] * shape[0]]
    while image.shape[1] < shape[1] or image.shape[2] < shape[2]:
        image = np.concatenate([image, image[:, ::-1]], axis=1)
        image = np.concatenate([image, image[:, :, ::-1]], axis=2)
    image = image[:, : shape[1], : shape[2]].astype(np.float64) / 255.0
    lo, hi = float(np.nanmin(like)), float(np.nanmax(like))
    return (lo + image * (hi - lo)).astype(like.dtype)


def write_pair(folder: Path, scene: str, dy: int = 0, dx: int = 0, change: bool = False) -> Path:
    pre_file, post_file, _ = SCENES[scene]
    pre, profile = read(pre_file)
    post, _ = read(post_file)
    nodata = profile.get("nodata")
    fill = 0 if nodata is None else nodata
    post = shifted(post, dy, dx, fill)
    if change:  # another real image pasted into the middle third of post
        third = slice(post.shape[2] // 3, 2 * post.shape[2] // 3)
        valid = (post != fill).any(axis=0)[:, third]
        pasted = other_image((post.shape[0], post.shape[1], third.stop - third.start), post)
        post[:, :, third] = np.where(valid, pasted, post[:, :, third])
    crs, transform = profile["crs"].to_string(), profile["transform"]
    write_raster(folder / "pre.tif", pre, crs=crs, transform=transform, nodata=nodata)
    write_raster(folder / "post.tif", post, crs=crs, transform=transform, nodata=nodata)
    return folder


def tile_pair(tmp_path: Path, scene: str, **kwargs: Any) -> TileIndex:
    folder = write_pair(tmp_path / "scene", scene, **kwargs)
    return tile_folder(folder, tmp_path / "tiles", SCENES[scene][2], scene_id="s", label=False)


@pytest.mark.parametrize("scene", sorted(SCENES))
def test_a_co_registered_real_pair_passes(tmp_path: Path, scene: str) -> None:
    index = tile_pair(tmp_path, scene)
    verdict = judge_alignment(index, LIMIT_PX, MIN_WINDOWS)
    assert verdict.status == "pass", verdict.description
    assert index.alignment_residual_px is not None and index.alignment_residual_px < 0.25
    assert index.alignment_samples >= MIN_WINDOWS


@pytest.mark.parametrize("shift", [1, 2, 5])
@pytest.mark.parametrize("scene", sorted(SCENES))
def test_a_shifted_real_pair_is_measured_to_a_quarter_pixel_and_fails(
    tmp_path: Path, scene: str, shift: int
) -> None:
    index = tile_pair(tmp_path, scene, dy=shift, dx=-shift)
    # post(y, x) = pre(y - s, x + s): moving post by (-s, +s) puts it back onto pre.
    assert index.alignment_dy == pytest.approx(-shift, abs=0.25)
    assert index.alignment_dx == pytest.approx(shift, abs=0.25)
    assert index.alignment_residual_px == pytest.approx(shift * np.sqrt(2), abs=0.25)
    verdict = judge_alignment(index, LIMIT_PX, MIN_WINDOWS)
    assert verdict.status == "fail"
    assert "misaligned" in verdict.description and f"limit {LIMIT_PX} px" in verdict.description


@pytest.mark.parametrize("scene", sorted(SCENES))
def test_large_real_change_in_a_third_of_post_still_passes(tmp_path: Path, scene: str) -> None:
    index = tile_pair(tmp_path, scene, change=True)
    verdict = judge_alignment(index, LIMIT_PX, MIN_WINDOWS)
    assert verdict.status == "pass", verdict.description
    assert index.alignment_residual_px is not None and index.alignment_residual_px < 0.25
    # The windows over the pasted third lost their peak and did not vote.
    assert index.alignment_samples < len(index.alignment_windows)


def test_windows_without_a_distinct_peak_do_not_vote() -> None:
    def window(dy: float, dx: float, confidence: float) -> AlignmentWindow:
        return AlignmentWindow(0, 0, 32, dy, dx, confidence)

    voting = [window(0.1, -0.1, 40.0)] * 5
    loud_but_unsure = [window(17.0, 19.0, 9.9)] * 20  # a real change, not a misregistration
    estimate = combine_windows(voting + loud_but_unsure, min_confidence=10.0)
    assert (estimate.dy, estimate.dx, estimate.confident) == (0.1, -0.1, 5)
    assert estimate.measured == 25
    # A confident minority cannot move the median.
    outliers = [window(8.0, 8.0, 50.0)] * 2
    residual = combine_windows(voting + outliers, 10.0).residual_px
    assert residual == pytest.approx(np.hypot(0.1, 0.1), abs=1e-4)


def test_too_few_confident_windows_is_inconclusive_never_a_failure(tmp_path: Path) -> None:
    # Unrelated real content in post: no window has a distinct peak.
    pre, profile = read("rasterio/rgb1.tif")
    post = other_image(pre.shape, pre)
    post[pre == 0] = 0
    folder = tmp_path / "scene"
    for name, data in (("pre.tif", pre), ("post.tif", post)):
        write_raster(
            folder / name,
            data,
            crs=profile["crs"].to_string(),
            transform=profile["transform"],
            nodata=0,
        )
    index = tile_folder(folder, tmp_path / "tiles", TilingConfig(), scene_id="s", label=False)
    assert index.alignment_samples < MIN_WINDOWS <= len(index.alignment_windows)
    verdict = judge_alignment(index, LIMIT_PX, MIN_WINDOWS)
    assert verdict.status == "inconclusive"
    assert verdict.description.startswith("inconclusive: ")
    assert "not blocking" in verdict.description


def test_confidence_separates_a_match_from_unrelated_real_windows() -> None:
    landsat, _ = read("rasterio/rgb1.tif")
    other, _ = read("rasterio/rgb4.tif")
    a = landsat[:, 150:214, 150:214].mean(axis=0)
    match = phase_shift(a, landsat[:, 152:216, 149:213].mean(axis=0))  # b(y, x) = a(y + 2, x - 1)
    unrelated = phase_shift(a, other[:, 150:214, 150:214].mean(axis=0))
    assert (match.dy, match.dx) == pytest.approx((2.0, -1.0), abs=0.05)
    assert match.confidence > 30 > 10 > unrelated.confidence
    flat = phase_shift(np.ones((32, 32)), np.ones((32, 32)))
    assert (flat.dy, flat.dx, flat.confidence) == (0.0, 0.0, 0.0)
