from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from numpy.typing import NDArray
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from rasterio.windows import Window
from torch import nn

from mlops_assets.core.cd import raster
from mlops_assets.core.cd.config import InferenceConfig, TrainConfig, preset
from mlops_assets.core.cd.infer import (
    NODATA,
    ChangeMapSummary,
    ModelMismatchError,
    blend_weights,
    change_overlay,
    predict_scene,
    predict_windows,
)
from mlops_assets.core.cd.model import build_unet
from mlops_assets.core.cd.raster import open_aligned
from mlops_assets.core.cd.tiles import BandStats
from mlops_assets.core.scenes.pixel_grid import write_pixel_raster
from mlops_assets_tests.core.cd import crop_scene, locations, read_raster, window, write_raster
from mlops_assets_tests.core.cd.test_raster import record_reads

CPU = torch.device("cpu")
TINY = preset(InferenceConfig, "tiny")  # 64 px windows, 16 px overlap


class Constant(nn.Module):
    """Predicts the same change probability everywhere."""

    def __init__(self, probability: float) -> None:
        super().__init__()
        self.logit = math.log(probability / (1 - probability))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 2C, H, W] -> [B, 1, H, W]
        return torch.full((x.shape[0], 1, *x.shape[2:]), self.logit)


def pixelwise(channels: int = 8) -> nn.Conv2d:
    """A seeded 1x1 convolution: each pixel's output depends on that pixel alone."""
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, 1, 1)
    with torch.no_grad():
        conv.weight.mul_(3)
    return conv.eval()


def scene_stats(folder: Path) -> tuple[BandStats, BandStats]:
    """Per-band statistics of pre and post over the pixels both have."""
    pre, _ = read_raster(folder / "pre.tif")
    post, _ = read_raster(folder / "post.tif")
    valid = (pre[0] != 0) & (post[0] != 0)

    def stats(data: NDArray[np.uint16]) -> BandStats:
        values = data[:, valid].astype(np.float64)
        return BandStats(values.mean(axis=1).tolist(), values.std(axis=1).tolist())

    return stats(pre), stats(post)


def predict(
    folder: Path,
    model: nn.Module,
    out: Path,
    config: InferenceConfig = TINY,
    label: bool = True,
    multiple: int = 32,
) -> ChangeMapSummary:
    pre_stats, post_stats = scene_stats(folder)
    with open_aligned(*locations(folder, label)) as pair:
        return predict_scene(pair, model, pre_stats, post_stats, config, out, CPU, multiple)


def read_map(path: Path) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    with rasterio.open(path) as src:
        return src.read(1), src.read(2)


def valid_mask(folder: Path) -> NDArray[np.bool_]:
    pre, _ = read_raster(folder / "pre.tif")
    post, _ = read_raster(folder / "post.tif")
    return (pre[0] != 0) & (post[0] != 0)


def test_blend_weights_ramp_down_over_the_overlap() -> None:
    weights = blend_weights(8, 3)
    assert weights.dtype == np.float32 and weights.shape == (8, 8)
    np.testing.assert_allclose(weights[4], [0.25, 0.5, 0.75, 1, 1, 0.75, 0.5, 0.25])
    np.testing.assert_array_equal(weights, weights.T)
    assert weights.min() > 0  # every pixel of a window counts for something
    assert (blend_weights(8, 0) == 1).all()


def test_change_map_is_on_the_pre_grid_with_nodata_kept(demo_cd_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "map.tif"
    summary = predict(demo_cd_dir, pixelwise(), out)
    with rasterio.open(out) as dst, rasterio.open(demo_cd_dir / "pre.tif") as pre:
        assert dst.crs == pre.crs and dst.transform == pre.transform
        assert (dst.width, dst.height) == (pre.width, pre.height) == (128, 128)
        assert dst.count == 2 and dst.dtypes == ("float32", "float32")
        assert dst.nodata == NODATA == -1.0
        assert dst.profile["tiled"] and dst.compression is not None
        assert dst.compression.name == "deflate"
        assert dst.descriptions == ("change_probability", "change_mask")
        assert dst.tags()["threshold"] == "0.5"
    prob, mask = read_map(out)
    valid = valid_mask(demo_cd_dir)
    assert 0.8 < valid.mean() < 1.0
    np.testing.assert_array_equal(prob == NODATA, ~valid)  # pre or post missing: nodata
    np.testing.assert_array_equal(mask == NODATA, ~valid)
    assert ((prob[valid] >= 0) & (prob[valid] <= 1)).all()
    np.testing.assert_array_equal(mask[valid], (prob[valid] > 0.5).astype(np.float32))
    assert (summary.width, summary.height) == (128, 128)
    assert summary.valid_pixels == int(valid.sum())
    assert summary.changed_pixels == int((mask == 1).sum())


def test_windows_are_stitched_where_they_belong(demo_cd_dir: Path, tmp_path: Path) -> None:
    """A per-pixel model must give the same map whatever the windows: no seams, no shifts."""
    model = pixelwise()
    pre_stats, post_stats = scene_stats(demo_cd_dir)
    with open_aligned(*locations(demo_cd_dir)) as pair:
        strip = pair.read_rows(0, 128)
    image = np.concatenate(
        [pre_stats.normalise(strip.pre, strip.valid), post_stats.normalise(strip.post, strip.valid)]
    )
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(image)[None]))[0, 0].numpy()
    for config in (
        TINY,
        dataclasses.replace(TINY, overlap=0),
        InferenceConfig(tile_size=48, overlap=24),
    ):
        out = tmp_path / f"{config.tile_size}-{config.overlap}.tif"
        predict(demo_cd_dir, model, out, config)
        prob, _ = read_map(out)
        np.testing.assert_allclose(prob[strip.valid], expected[strip.valid], atol=1e-5)


@pytest.mark.parametrize(
    ("crop", "config"),
    [
        (window(0, 0, 128, 128), TINY),
        (window(0, 0, 128, 128), dataclasses.replace(TINY, overlap=32, batch_size=1)),
        (window(5, 3, 75, 100), TINY),  # sides no window stride divides
        (window(5, 3, 75, 100), InferenceConfig()),  # a window larger than the scene
    ],
)
def test_blending_is_normalised_a_constant_stays_constant(
    demo_cd_dir: Path, tmp_path: Path, crop: Window, config: InferenceConfig
) -> None:
    scene = crop_scene(demo_cd_dir, tmp_path / "scene", crop)
    predict(scene, Constant(0.3), tmp_path / "map.tif", config)
    prob, mask = read_map(tmp_path / "map.tif")
    valid = valid_mask(scene)
    assert prob.shape == (crop.height, crop.width)
    np.testing.assert_allclose(prob[valid], 0.3, rtol=1e-6)
    assert (mask[valid] == 0).all() and (prob[~valid] == NODATA).all()


def test_rows_are_streamed_once_each_in_block_aligned_reads(
    demo_cd_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    predict(demo_cd_dir, pixelwise(), tmp_path / "whole.tif")  # 128-row blocks: one read
    monkeypatch.setattr(raster, "MAX_CHUNK_ROWS", 16)  # as if the source had 16-row blocks
    reads = record_reads(monkeypatch)
    predict(demo_cd_dir, pixelwise(), tmp_path / "map.tif")
    # Windows at rows 0, 48 and 64, 64 high: each row is read once, never more than a window
    # and a block ahead, and across the whole width.
    assert reads == [(0, 64, 0, 128), (64, 48, 0, 128), (112, 16, 0, 128)]
    for a, b in zip(read_map(tmp_path / "whole.tif"), read_map(tmp_path / "map.tif"), strict=True):
        np.testing.assert_array_equal(a, b)


def test_summary_against_the_label(demo_cd_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "map.tif"
    summary = predict(demo_cd_dir, pixelwise(), out)
    _, mask = read_map(out)
    label, _ = read_raster(demo_cd_dir / "label.tif")
    valid = valid_mask(demo_cd_dir)
    labelled = valid & (label[0] != 255)
    predicted, truth = mask == 1, label[0] == 1
    tp = int((predicted & truth & labelled).sum())
    fp = int((predicted & ~truth & labelled).sum())
    fn = int((~predicted & truth & labelled).sum())
    assert tp > 0 and fp > 0 and fn > 0  # a random model: some of everything
    assert summary.labelled_pixels == int(labelled.sum())
    assert summary.precision == pytest.approx(tp / (tp + fp))
    assert summary.recall == pytest.approx(tp / (tp + fn))
    assert summary.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert summary.pixel_area_m2 == 4.0  # 2 m pixels in UTM
    assert summary.changed_area_m2 == summary.changed_pixels * 4.0
    assert summary.changed_percent == pytest.approx(100 * predicted.sum() / valid.sum())


def test_everything_or_nothing_changed(demo_cd_dir: Path, tmp_path: Path) -> None:
    label, _ = read_raster(demo_cd_dir / "label.tif")
    labelled = valid_mask(demo_cd_dir) & (label[0] != 255)
    share = float((label[0][labelled] == 1).mean())
    everything = predict(demo_cd_dir, Constant(0.9), tmp_path / "all.tif")
    assert everything.changed_pixels == everything.valid_pixels
    assert everything.changed_percent == 100.0
    assert everything.recall == 1.0 and everything.precision == pytest.approx(share)
    nothing = predict(demo_cd_dir, Constant(0.1), tmp_path / "none.tif")
    assert nothing.changed_pixels == 0 and nothing.changed_area_m2 == 0.0
    assert (nothing.precision, nothing.recall, nothing.f1) == (0.0, 0.0, 0.0)


def test_without_a_label_there_is_no_score(demo_cd_dir: Path, tmp_path: Path) -> None:
    summary = predict(demo_cd_dir, Constant(0.9), tmp_path / "map.tif", label=False)
    assert (summary.f1, summary.precision, summary.recall) == (None, None, None)
    assert summary.labelled_pixels == 0 and summary.changed_pixels == summary.valid_pixels


def test_no_change_labelled_and_none_predicted_is_scored_consistently(
    demo_cd_dir: Path, tmp_path: Path
) -> None:
    scene = crop_scene(demo_cd_dir, tmp_path / "scene", window(0, 0, 128, 128))
    label, profile = read_raster(scene / "label.tif")
    write_raster(
        scene / "label.tif",
        np.where(label == 1, 0, label).astype(np.uint8),
        transform=profile["transform"],
        nodata=255,
    )
    summary = predict(scene, Constant(0.1), tmp_path / "map.tif")
    assert summary.labelled_pixels > 0 and summary.changed_pixels == 0
    assert summary.precision == summary.recall == summary.f1


def _geodesic_pixel_area(lat_deg: float, step_deg: float) -> float:
    """A pixel's area on the WGS 84 ellipsoid (meridian x prime-vertical radii of curvature)."""
    a, f = 6378137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    phi = math.radians(lat_deg)
    w = 1 - e2 * math.sin(phi) ** 2
    meridian, prime_vertical = a * (1 - e2) / w**1.5, a / math.sqrt(w)
    step = math.radians(step_deg)
    return meridian * step * prime_vertical * math.cos(phi) * step


@pytest.mark.parametrize("lat", [0.0, 48.0, -60.0])
def test_area_in_a_geographic_crs_is_taken_at_the_scene_centre(tmp_path: Path, lat: float) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(1, 10_000, (4, 40, 40), dtype=np.uint16)
    step = 1e-4  # about 11 m
    transform = from_origin(11.0, lat + 20 * step, step, step)  # centred on ``lat``
    for role in ("pre", "post"):
        write_raster(tmp_path / "s" / f"{role}.tif", data, crs="EPSG:4326", transform=transform)
    summary = predict(tmp_path / "s", Constant(0.9), tmp_path / "map.tif", label=False)
    # 111,320 m per degree both ways is a sphere: within 1 % of the ellipsoid at any latitude.
    assert summary.pixel_area_m2 == pytest.approx(_geodesic_pixel_area(lat, step), rel=1e-2)
    assert summary.pixel_area_m2 is not None
    assert summary.changed_area_m2 == pytest.approx(1600 * summary.pixel_area_m2)
    with rasterio.open(tmp_path / "map.tif") as dst:
        assert dst.crs.to_epsg() == 4326 and dst.transform == transform


def test_area_in_a_crs_in_us_survey_feet(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(1, 10_000, (4, 32, 32), dtype=np.uint16)
    transform = from_origin(980_000.0, 200_000.0, 10.0, 10.0)  # 10 ft pixels, NY Long Island
    for role in ("pre", "post"):
        write_raster(tmp_path / "s" / f"{role}.tif", data, crs="EPSG:2263", transform=transform)
    summary = predict(tmp_path / "s", Constant(0.9), tmp_path / "map.tif", label=False)
    assert summary.pixel_area_m2 == pytest.approx((10 * 1200 / 3937) ** 2)


def test_the_real_unet_predicts_a_scene_of_awkward_size(demo_cd_dir: Path, tmp_path: Path) -> None:
    scene = crop_scene(demo_cd_dir, tmp_path / "scene", window(5, 3, 75, 100))
    torch.manual_seed(0)
    net = build_unet(8, preset(TrainConfig, "tiny"))
    summary = predict(scene, net, tmp_path / "map.tif", multiple=8)
    prob, _ = read_map(tmp_path / "map.tif")
    valid = valid_mask(scene)
    assert summary.valid_pixels == int(valid.sum()) and prob.shape == (100, 75)
    assert ((prob[valid] >= 0) & (prob[valid] <= 1)).all() and prob[valid].std() > 0


def test_predict_windows_pads_to_the_network_multiple_and_crops_back() -> None:
    images = np.random.default_rng(0).normal(size=(3, 8, 40, 27)).astype(np.float32)
    model = pixelwise()
    probs = predict_windows(model, images, CPU, 32)
    assert probs.shape == (3, 40, 27) and probs.dtype == np.float32
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(images)))[:, 0].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_overlay_tints_predicted_change(demo_cd_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "map.tif"
    predict(demo_cd_dir, Constant(0.9), out)
    with open_aligned(*locations(demo_cd_dir)) as pair:
        overlay = np.asarray(change_overlay(pair, out))
        small = change_overlay(pair, out, max_side=32)
    assert overlay.shape == (128, 128, 3) and small.size == (32, 32)
    valid = valid_mask(demo_cd_dir)
    post, _ = read_raster(demo_cd_dir / "post.tif")
    # Changed pixels are pulled towards the tint (255, 0, 64): red is at least 0.65 * 255.
    assert (overlay[valid][:, 0] >= 165).all()
    assert (overlay[post[0] == 0] == 0).all()  # post's own nodata is black


def _pixel_grid_scene(folder: Path, shape: tuple[int, int] = (70, 90)) -> Path:
    rng = np.random.default_rng(5)
    h, w = shape
    for name in ("pre.tif", "post.tif"):
        write_pixel_raster(folder / name, list(rng.integers(1, 256, (3, h, w), dtype=np.uint8)))
    label = np.zeros((h, w), np.uint8)
    label[:, : w // 2] = 1
    write_pixel_raster(folder / "label.tif", [label], nodata=255)
    return folder


def test_a_pixel_grid_change_map_has_no_crs_says_so_and_counts_pixels(tmp_path: Path) -> None:
    folder = _pixel_grid_scene(tmp_path / "s")
    stats = BandStats([128.0] * 3, [64.0] * 3)
    with open_aligned(*locations(folder), pixel_grid=True) as pair:
        assert pair.crs is None and pair.pixel_grid
        summary = predict_scene(
            pair, Constant(0.9), stats, stats, TINY, tmp_path / "map.tif", CPU, 32
        )
        overlay = change_overlay(pair, tmp_path / "map.tif")
    assert summary.pixel_area_m2 is None and summary.changed_area_m2 is None
    assert summary.changed_pixels == summary.valid_pixels == 70 * 90
    assert summary.f1 == pytest.approx(2 / 3)  # all predicted changed; half labelled so
    assert overlay.size == (90, 70)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "map.tif") as src:
            assert src.crs is None and src.transform.is_identity
            assert src.tags()["grid"] == "pixel" and (src.width, src.height) == (90, 70)


def test_a_model_for_another_band_count_is_refused_naming_the_scene(tmp_path: Path) -> None:
    folder = _pixel_grid_scene(tmp_path / "s")
    stats = BandStats([128.0] * 3, [64.0] * 3)
    with (
        open_aligned(*locations(folder), pixel_grid=True, names=("a/pre.tif", "b", "c")) as pair,
        pytest.raises(ModelMismatchError, match=r"takes 8 input channels \(4 bands per date\) "),
    ):
        predict_scene(pair, pixelwise(8), stats, stats, TINY, tmp_path / "map.tif", CPU, 32)
    assert not (tmp_path / "map.tif").exists()
