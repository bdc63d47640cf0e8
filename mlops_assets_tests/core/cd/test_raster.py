from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import Affine, from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window

from mlops_assets.core.cd import raster
from mlops_assets.core.cd.raster import (
    AlignedPair,
    AlignmentError,
    PreviewSampler,
    RowBuffer,
    Strip,
    label_image,
    open_aligned,
    overlay_image,
    positions,
    rgb_bands,
    rgb_image,
    side_by_side,
)
from mlops_assets.core.demo.cd import DEMO_CD_SCENES, write_cd_scene
from mlops_assets.core.scenes.pixel_grid import write_pixel_raster
from mlops_assets.core.store.base import RasterLocation
from mlops_assets_tests.conftest import DATA
from mlops_assets_tests.core.cd import crop_scene, locations, read_raster, window, write_raster

RASTERIO = DATA / "rasterio"


def _loc(path: Path) -> RasterLocation:
    return RasterLocation(str(path))


@pytest.mark.parametrize(
    ("length", "size", "stride", "expected"),
    [
        (128, 64, 48, [0, 48, 64]),  # the last window is flush with the end
        (128, 64, 64, [0, 64]),
        (64, 64, 16, [0]),
        (63, 64, 16, []),  # too short for one window
        (100, 32, 32, [0, 32, 64, 68]),
        (2475, 64, 48, [*range(0, 2411, 48), 2411]),  # all-nodata.tif's height
    ],
)
def test_positions_cover_every_pixel_once_flush_with_the_end(
    length: int, size: int, stride: int, expected: list[int]
) -> None:
    starts = positions(length, size, stride)
    assert starts == expected
    if starts:
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s : s + size] = True
        assert covered.all()
        assert all(0 < b - a <= stride for a, b in itertools.pairwise(starts))


def test_demo_pair_is_read_on_the_pre_grid(demo_cd_dir: Path) -> None:
    pre, pre_profile = read_raster(demo_cd_dir / "pre.tif")
    post, _ = read_raster(demo_cd_dir / "post.tif")
    label, _ = read_raster(demo_cd_dir / "label.tif")
    with open_aligned(*locations(demo_cd_dir)) as pair:
        assert (pair.width, pair.height, pair.count) == (128, 128, 4)
        assert pair.crs == pre_profile["crs"] and pair.transform == pre_profile["transform"]
        strip = pair.read_rows(0, 128)
    assert strip.row == 0 and strip.pre.dtype == np.uint16
    assert strip.pre.shape == strip.post.shape == (4, 128, 128)
    np.testing.assert_array_equal(strip.pre, pre)
    np.testing.assert_array_equal(strip.post, post)  # same grid: nothing is resampled
    np.testing.assert_array_equal(strip.valid, (pre[0] != 0) & (post[0] != 0))
    assert 0.8 < strip.valid.mean() < 1.0  # each date misses a different swath edge
    assert strip.label is not None
    np.testing.assert_array_equal(strip.label, label[0])  # 0, 1 and 255 (nodata) as written
    assert set(np.unique(strip.label)) == {0, 1, 255}


def test_strips_are_consecutive_and_read_each_row_once(demo_cd_dir: Path) -> None:
    with open_aligned(*locations(demo_cd_dir)) as pair:
        whole = pair.read_rows(0, pair.height)
        strips = list(pair.strips(50))
    assert [(s.row, s.valid.shape[0]) for s in strips] == [(0, 50), (50, 50), (100, 28)]
    np.testing.assert_array_equal(np.concatenate([s.pre for s in strips], axis=1), whole.pre)
    np.testing.assert_array_equal(np.concatenate([s.post for s in strips], axis=1), whole.post)
    np.testing.assert_array_equal(np.concatenate([s.valid for s in strips]), whole.valid)
    labels = [s.label for s in strips if s.label is not None]
    assert whole.label is not None and len(labels) == len(strips)
    np.testing.assert_array_equal(np.concatenate(labels), whole.label)


def test_float64_bands_are_read_as_float32(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(300.0, 50.0, (2, 64, 64)) + 1e-9  # more digits than float32 keeps
    values[:, :4] = -9999.0
    folder = tmp_path / "f64"
    write_raster(folder / "pre.tif", values, nodata=-9999.0)
    write_raster(folder / "post.tif", values[::-1].copy(), nodata=-9999.0)
    with open_aligned(*locations(folder, label=False)) as pair:
        strip = pair.read_rows(0, 64)
        held, _ = RowBuffer(pair).ensure(0, 32)  # read in place, into arrays it allocated
        preview = PreviewSampler(pair, 16)
    assert strip.pre.dtype == strip.post.dtype == held.pre.dtype == np.float32
    assert preview.pre.dtype == np.float32
    np.testing.assert_array_equal(strip.pre, values.astype(np.float32))
    np.testing.assert_array_equal(strip.post, values[::-1].astype(np.float32))
    np.testing.assert_array_equal(held.pre, values[:, :32].astype(np.float32))
    assert not strip.valid[:4].any() and strip.valid[4:].all()  # the nodata mask is unchanged


def test_post_on_another_crs_and_resolution_is_warped_onto_pre(
    demo_cd_warped_dir: Path, tmp_path: Path
) -> None:
    spec = next(s for s in DEMO_CD_SCENES if s.post_epsg is not None)
    # The same scene with post rendered directly on pre's grid: what the warp should give back.
    flat = dataclasses.replace(spec, post_epsg=None, post_resolution=None)
    reference = write_cd_scene(flat, tmp_path / "flat", size=128)
    expected, _ = read_raster(reference / "post.tif")
    with rasterio.open(demo_cd_warped_dir / "post.tif") as src:
        assert src.crs.to_epsg() == 32632 and src.res == (3.0, 3.0)
    with open_aligned(*locations(demo_cd_warped_dir)) as pair:
        assert pair.crs is not None and pair.post.crs == pair.crs and pair.crs.to_epsg() == 32633
        assert (pair.post.width, pair.post.height) == (128, 128)
        strip = pair.read_rows(0, 128)
    both = strip.valid & (expected[0] != 0)
    assert both.mean() > 0.8
    for band in range(4):
        r = np.corrcoef(strip.post[band][both].astype(float), expected[band][both].astype(float))
        assert r[0, 1] > 0.9, band  # 2 m -> 3 m UTM 32N -> 2 m UTM 33N loses detail, not place


def test_real_raster_against_itself_and_against_its_web_mercator_copy(tmp_path: Path) -> None:
    rgb1 = RASTERIO / "rgb1.tif"  # Landsat-derived, UTM 18N, 300 m pixels, nodata 0
    with open_aligned(_loc(rgb1), _loc(rgb1)) as pair:
        strip = pair.read_rows(0, pair.height)
    np.testing.assert_array_equal(strip.pre, strip.post)
    assert 0.6 < strip.valid.mean() < 0.75 and strip.label is None

    mercator = tmp_path / "rgb1_3857.tif"
    with rasterio.open(rgb1) as src:
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:3857", src.width, src.height, *src.bounds
        )
        profile = {**src.profile, "crs": "EPSG:3857", "transform": transform}
        with rasterio.open(mercator, "w", **{**profile, "width": width, "height": height}) as dst:
            for band in (1, 2, 3):
                reproject(rasterio.band(src, band), rasterio.band(dst, band), Resampling.bilinear)
    with open_aligned(_loc(rgb1), _loc(mercator)) as pair:
        back = pair.read_rows(0, pair.height)
    assert back.post.shape == strip.pre.shape
    assert abs(back.valid.mean() - strip.valid.mean()) < 0.01
    v = back.valid
    r = np.corrcoef(strip.pre[:, v].ravel().astype(float), back.post[:, v].ravel().astype(float))
    assert r[0, 1] > 0.95


def test_raster_without_crs_is_named(tmp_path: Path) -> None:
    rotated, rgb1 = _loc(RASTERIO / "rotated.tif"), _loc(RASTERIO / "rgb1.tif")
    with pytest.raises(AlignmentError, match=r"^pre\.tif has no CRS$"), open_aligned(rotated, rgb1):
        pass
    names = ("s1/pre.tif", "s1/post.tif", "s1/label.tif")
    with (
        pytest.raises(AlignmentError, match=r"^s1/post\.tif has no CRS$"),
        open_aligned(rgb1, rotated, names=names),
    ):
        pass


def test_band_counts_must_match() -> None:
    with (
        pytest.raises(AlignmentError, match=r"^pre\.tif has 3 bands but post\.tif has 1$"),
        open_aligned(_loc(RASTERIO / "rgb1.tif"), _loc(RASTERIO / "rgb1_fake_nir_epsg3857.tif")),
    ):
        pass


def test_non_overlapping_footprints_across_crs(tmp_path: Path) -> None:
    # byte.tif is in California (EPSG:26711), rgb1.tif in New York (UTM 18N); give it 3 bands.
    data, profile = read_raster(RASTERIO / "byte.tif")
    california = write_raster(
        tmp_path / "post.tif",
        np.repeat(data, 3, axis=0),
        crs=profile["crs"].to_string(),
        transform=profile["transform"],
    )
    names = ("apart/pre.tif", "apart/post.tif", "apart/label.tif")
    with (
        pytest.raises(
            AlignmentError, match=r"^apart/post\.tif does not overlap apart/pre\.tif: nothing"
        ),
        open_aligned(_loc(RASTERIO / "rgb1.tif"), _loc(california), names=names),
    ):
        pass


def test_footprints_that_only_touch_do_not_overlap(tmp_path: Path) -> None:
    data = np.ones((1, 32, 32), np.uint8)
    pre = write_raster(tmp_path / "pre.tif", data, transform=from_origin(0, 64, 2, 2))
    post = write_raster(tmp_path / "post.tif", data, transform=from_origin(64, 64, 2, 2))
    with (
        pytest.raises(AlignmentError, match="does not overlap"),
        open_aligned(_loc(pre), _loc(post)),
    ):
        pass
    shifted = write_raster(tmp_path / "near.tif", data, transform=from_origin(62, 64, 2, 2))
    with open_aligned(_loc(pre), _loc(shifted)) as pair:  # one column in common is enough
        strip = pair.read_rows(0, 32)
    assert strip.valid[:, -1].all() and not strip.valid[:, :-1].any()


def _label_case(demo: Path, tmp_path: Path, case: str) -> Path:
    label, profile = read_raster(demo / "label.tif")
    transform: Affine = profile["transform"]
    path = tmp_path / f"label-{case}.tif"
    if case == "smaller":
        crop_scene(demo, tmp_path / "crop", window(0, 0, 64, 64))
        return tmp_path / "crop" / "label.tif"
    if case == "shifted":
        return write_raster(path, label, transform=transform * Affine.translation(1, 0))
    if case == "other-crs":
        return write_raster(path, label, crs="EPSG:32632", transform=transform, nodata=255)
    return write_raster(path, np.repeat(label, 3, axis=0), transform=transform, nodata=255)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "smaller",
            r"^label\.tif is 64x64 \(EPSG:32633\), pre\.tif is 128x128 \(EPSG:32633\): "
            r"the label must be on the pre image's grid$",
        ),
        ("shifted", r"label\.tif is 128x128 .* the label must be on the pre image's grid"),
        ("other-crs", r"label\.tif is 128x128 \(EPSG:32632\), pre\.tif is 128x128 \(EPSG:32633\)"),
        ("three-bands", r"^label\.tif has 3 bands, expected 1$"),
    ],
)
def test_label_must_be_one_band_on_the_pre_grid(
    demo_cd_dir: Path, tmp_path: Path, case: str, message: str
) -> None:
    pre, post, _ = locations(demo_cd_dir)
    label = _loc(_label_case(demo_cd_dir, tmp_path, case))
    with pytest.raises(AlignmentError, match=message), open_aligned(pre, post, label):
        pass


def test_label_values_other_than_0_and_1_are_ignored(demo_cd_dir: Path, tmp_path: Path) -> None:
    label, profile = read_raster(demo_cd_dir / "label.tif")
    classes = np.where(label == 255, 2, label).astype(np.uint8)  # "unknown" as class 2, no nodata
    path = write_raster(
        tmp_path / "label.tif", classes, transform=profile["transform"], nodata=None
    )
    pre, post, _ = locations(demo_cd_dir)
    with open_aligned(pre, post, _loc(path)) as pair:
        strip = pair.read_rows(0, 128)
    assert strip.label is not None
    np.testing.assert_array_equal(strip.label, label[0])


def test_preview_shows_pre_post_and_label_side_by_side(demo_cd_dir: Path) -> None:
    label, _ = read_raster(demo_cd_dir / "label.tif")
    pre, _ = read_raster(demo_cd_dir / "pre.tif")
    with open_aligned(*locations(demo_cd_dir)) as pair:
        preview = np.asarray(pair.preview())
        small = pair.preview(max_side=64)
    with open_aligned(*locations(demo_cd_dir, label=False)) as pair:
        unlabelled = pair.preview()
    assert preview.shape == (128, 3 * 128 + 2 * 4, 3)
    assert small.size == (3 * 64 + 2 * 4, 64)
    assert unlabelled.size == (2 * 128 + 4, 128)
    assert (preview[:, 128:132] == 255).all()  # the white gap between panels
    pre_panel, label_panel = preview[:, :128], preview[:, 2 * 132 :]
    assert (pre_panel[pre[0] == 0] == 0).all()  # nodata is black
    assert (label_panel[label[0] == 1] == 255).all()  # change is white
    assert (label_panel[label[0] == 255] == 96).all()  # nodata is grey
    assert (label_panel[label[0] == 0] == 0).all()


def record_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int, int]]:
    """Every `AlignedPair.read_window` call as (row, height, col, width)."""
    reads: list[tuple[int, int, int, int]] = []
    original = AlignedPair.read_window

    def recording(
        self: AlignedPair, row: int, height: int, col: int, width: int, out: Strip | None = None
    ) -> Strip:
        reads.append((row, height, col, width))
        return original(self, row, height, col, width, out)

    monkeypatch.setattr(AlignedPair, "read_window", recording)
    return reads


def test_row_buffer_reads_each_row_once_in_block_aligned_chunks(
    demo_cd_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(raster, "MAX_CHUNK_ROWS", 16)  # as if the source had 16-row blocks
    with open_aligned(*locations(demo_cd_dir)) as pair:
        whole = pair.read_rows(0, pair.height)
        reads = record_reads(monkeypatch)
        buffer = RowBuffer(pair, col=24, width=40)
        for row in positions(128, 32, 24):
            strip, _ = buffer.ensure(row, 32)
            rows, cols = slice(row, row + 32), slice(24, 64)
            assert (strip.row, strip.col, strip.height, strip.width) == (row, 24, 32, 40)
            np.testing.assert_array_equal(strip.pre, whole.pre[:, rows, cols])
            np.testing.assert_array_equal(strip.post, whole.post[:, rows, cols])
            np.testing.assert_array_equal(strip.valid, whole.valid[rows, cols])
            assert strip.label is not None and whole.label is not None
            np.testing.assert_array_equal(strip.label, whole.label[rows, cols])
            for part, full in (
                (strip.pre_valid, whole.pre_valid),
                (strip.post_valid, whole.post_valid),
            ):
                assert part is not None and full is not None
                np.testing.assert_array_equal(part, full[rows, cols])
        with pytest.raises(ValueError, match="downwards only"):
            buffer.ensure(0, 32)
    # Consecutive, disjoint, 16-row aligned reads of the band: every row read exactly once.
    assert all((c, w) == (24, 40) for _, _, c, w in reads)
    assert reads[0][0] == 0 and sum(h for _, h, _, _ in reads) == 128
    assert all(r + h == nxt for (r, h, _, _), (nxt, *_) in itertools.pairwise(reads))
    assert all((r + h) % 16 == 0 for r, h, _, _ in reads)
    assert max(h for _, h, _, _ in reads) <= 32 + 16


def test_masks_taken_from_the_pixels_equal_rasterios_dataset_mask(
    demo_cd_dir: Path, demo_cd_warped_dir: Path, tmp_path: Path
) -> None:
    """Nodata masks are computed from the pixels already read; other masks are read."""
    data = np.random.default_rng(0).uniform(0, 1, (3, 40, 48)).astype(np.float32)
    data[:, :5] = -1.0
    data[1, 30:] = -1.0  # one band's nodata alone leaves the pixel valid
    floats = write_raster(tmp_path / "float.tif", data, nodata=-1.0)  # float: mask is read
    pairs = [
        (*locations(demo_cd_dir), ("uint16", "nodata")),
        (*locations(demo_cd_warped_dir), ("uint16", "warped")),
        (_loc(RASTERIO / "rgb1.tif"), _loc(RASTERIO / "rgb1.tif"), None, ("uint8", "real")),
        (_loc(floats), _loc(floats), None, ("float32", "read")),
    ]
    for pre, post, label, case in pairs:
        with open_aligned(pre, post, label) as pair:
            assert pair.pre.dtypes[0] == case[0], case
            window = Window.from_slices((3, pair.height - 2), (5, pair.width - 1))
            strip = pair.read_window(3, pair.height - 5, 5, pair.width - 6)
            assert strip.pre_valid is not None and strip.post_valid is not None
            pre_mask = pair.pre.dataset_mask(window=window) > 0
            post_mask = pair.post.dataset_mask(window=window) > 0
            np.testing.assert_array_equal(strip.pre_valid, pre_mask, err_msg=str(case))
            np.testing.assert_array_equal(strip.post_valid, post_mask, err_msg=str(case))
            np.testing.assert_array_equal(strip.valid, pre_mask & post_mask)
            assert 0 < strip.valid.mean() < 1, case


def test_preview_sampler_picks_the_decimated_read_out_of_column_bands(demo_cd_dir: Path) -> None:
    with open_aligned(*locations(demo_cd_dir)) as pair:
        for side in (50, 64, 384):
            expected = np.asarray(pair.preview(max_side=side))
            sampler = PreviewSampler(pair, max_side=side)
            bands = [(0, 40, 0, 37), (30, 98, 37, 90), (80, 128, 90, 128)]  # read, own
            for lo, hi, own_lo, own_hi in bands:
                buffer = RowBuffer(pair, lo, hi - lo)
                for row in (0, 40, 96):
                    _, fresh = buffer.ensure(row, 32)
                    if fresh is not None:
                        sampler.add(fresh, own_lo, own_hi)
            np.testing.assert_array_equal(np.asarray(sampler.image()), expected, err_msg=str(side))


def test_rgb_bands_from_descriptions_colour_interpretation_or_one_band(
    demo_cd_dir: Path,
) -> None:
    expected = {
        demo_cd_dir / "pre.tif": [3, 2, 1],  # described blue, green, red, nir
        RASTERIO / "all-nodata.tif": [3, 2, 1],
        RASTERIO / "rgb1.tif": [1, 2, 3],  # no descriptions; colour interpretation RGB
        RASTERIO / "byte.tif": [1, 1, 1],  # grey
    }
    for path, bands in expected.items():
        with rasterio.open(path) as src:
            assert rgb_bands(src) == bands, path.name


def test_rgb_image_stretches_valid_pixels_and_blacks_out_nodata() -> None:
    ramp = np.tile(np.arange(100, dtype=np.uint16), (3, 10, 1))  # [3, 10, 100]
    valid = np.ones((10, 100), bool)
    valid[:, :5] = False
    image = np.asarray(rgb_image(ramp, valid))
    assert image.shape == (10, 100, 3)
    assert (image[:, :5] == 0).all()
    assert image[0, 5:].min() == 0 and image[0, -1].max() == 255  # 2 % and 98 % clip
    assert (np.diff(image[0, 5:, 0].astype(int)) >= 0).all()
    assert not np.asarray(rgb_image(ramp, np.zeros((10, 100), bool))).any()


def test_overlay_tints_only_changed_pixels_and_panels_line_up() -> None:
    base = Image.new("RGB", (4, 2), (100, 100, 100))
    change = np.array([[True, False, False, False], [False, False, False, True]])
    tinted = np.asarray(overlay_image(base, change, colour=(200, 0, 0)))
    assert tuple(tinted[0, 0]) == (165, 35, 35)  # 0.35 * 100 + 0.65 * colour
    assert (tinted[~change] == 100).all()
    row = side_by_side([base, Image.new("RGB", (3, 5))], gap=2)
    assert row.size == (4 + 2 + 3, 5)
    assert label_image(np.array([[0, 1, 255]]), np.ones((1, 3), bool)).getpixel((2, 0)) == (
        96,
        96,
        96,
    )


def test_a_pixel_grid_pair_is_read_as_it_is_and_needs_one_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    pre = rng.integers(0, 256, (3, 30, 50), dtype=np.uint8)
    post = rng.integers(0, 256, (3, 30, 50), dtype=np.uint8)
    write_pixel_raster(tmp_path / "pre.tif", list(pre))
    write_pixel_raster(tmp_path / "post.tif", list(post))
    write_pixel_raster(tmp_path / "label.tif", [np.ones((30, 50), np.uint8)], nodata=255)
    with open_aligned(*locations(tmp_path), pixel_grid=True) as pair:
        strip = pair.read_rows(0, 30)
        np.testing.assert_array_equal(strip.post, post)  # no warp, no resampling
        assert strip.valid.all() and strip.label is not None and (strip.label == 1).all()
    write_pixel_raster(tmp_path / "label.tif", [np.ones((30, 49), np.uint8)], nodata=255)
    with (
        pytest.raises(AlignmentError, match=r"^label\.tif is 49x30 px but pre\.tif is 50x30 px"),
        open_aligned(*locations(tmp_path), pixel_grid=True),
    ):
        pass
