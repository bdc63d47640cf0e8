from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import Affine
from scipy import ndimage

from mlops_assets.core.cd import raster, tiles
from mlops_assets.core.cd.config import TilingConfig, config_hash, preset
from mlops_assets.core.cd.raster import open_aligned, positions
from mlops_assets.core.cd.tiles import (
    BandStats,
    ColumnBand,
    TileIndex,
    _Moments,  # pyright: ignore[reportPrivateUsage]
    alignment_residual,
    column_bands,
    phase_shift,
    tile_key,
    tile_scene,
    write_npz,
)
from mlops_assets.core.outputs import MARKER
from mlops_assets_tests.conftest import DATA
from mlops_assets_tests.core.cd import (
    COMMIT,
    crop_scene,
    locations,
    read_raster,
    textured,
    tile_folder,
    window,
    write_raster,
)
from mlops_assets_tests.core.cd.test_raster import record_reads

TINY = preset(TilingConfig, "tiny")  # 64 px windows every 48 px


@pytest.fixture(scope="module")
def demo_tiles(
    demo_cd_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, TileIndex]:
    out = tmp_path_factory.mktemp("tiles")
    return out, tile_folder(demo_cd_dir, out, TINY, scene_id="farm")


def test_a_tile_set_is_a_directory_with_its_index_written_last(
    demo_tiles: tuple[Path, TileIndex],
) -> None:
    out, index = demo_tiles
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [MARKER, "preview.png", *(f"tiles/{t.name}.npz" for t in index.tiles)]
    marker = (out / MARKER).stat().st_mtime_ns
    assert all(marker >= p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file())
    assert index.windows_total == 9 and len(index.tiles) == 9 and index.dropped == {}
    assert [(t.row, t.col) for t in index.tiles] == [
        (r, c) for r in (0, 48, 64) for c in (0, 48, 64)
    ]
    assert [t.name for t in index.tiles] == [f"{i:06d}" for i in range(9)]
    assert index.scene_id == "farm" and index.commit_id == COMMIT
    assert index.sources["label"] == f"lakefs://scenes/{COMMIT}/cd/farm/label.tif"
    assert index.crs == "EPSG:32633" and (index.width, index.height, index.bands) == (128, 128, 4)
    assert index.transform == [2.0, 0.0, 452000.0, 0.0, -2.0, 5411000.0]
    assert index.config == dataclasses.asdict(TINY) and index.config_hash == config_hash(TINY)


def test_tiles_hold_the_aligned_windows_with_unlabelled_pixels_masked(
    demo_tiles: tuple[Path, TileIndex], demo_cd_dir: Path
) -> None:
    out, index = demo_tiles
    with open_aligned(*locations(demo_cd_dir)) as pair:
        whole = pair.read_rows(0, pair.height)
    assert whole.label is not None
    for tile in index.tiles:
        rows, cols = slice(tile.row, tile.row + 64), slice(tile.col, tile.col + 64)
        with np.load(out / "tiles" / f"{tile.name}.npz") as data:
            assert data["pre"].dtype == np.uint16 and data["pre"].shape == (4, 64, 64)
            np.testing.assert_array_equal(data["pre"], whole.pre[:, rows, cols])
            np.testing.assert_array_equal(data["post"], whole.post[:, rows, cols])
            np.testing.assert_array_equal(data["valid"], whole.valid[rows, cols])
            expected = np.where(whole.valid[rows, cols], whole.label[rows, cols], 255)
            np.testing.assert_array_equal(data["mask"], expected)
        assert tile.change_pixels == int((expected == 1).sum())
        assert tile.labelled_pixels == int((expected != 255).sum())
        assert tile.nodata_fraction == round(1 - whole.valid[rows, cols].mean(), 4)


def test_band_statistics_and_label_balance_count_every_valid_pixel_once(
    demo_tiles: tuple[Path, TileIndex], demo_cd_dir: Path
) -> None:
    _, index = demo_tiles
    pre, _ = read_raster(demo_cd_dir / "pre.tif")
    post, _ = read_raster(demo_cd_dir / "post.tif")
    label, _ = read_raster(demo_cd_dir / "label.tif")
    valid = (pre[0] != 0) & (post[0] != 0)
    for stats, data in ((index.pre_stats, pre), (index.post_stats, post)):
        values = data[:, valid].astype(np.float64)
        np.testing.assert_allclose(stats.mean, values.mean(axis=1), rtol=1e-9)
        np.testing.assert_allclose(stats.std, values.std(axis=1), rtol=1e-6)
    labelled = valid & (label[0] != 255)
    assert index.labelled_pixels == int(labelled.sum())
    assert index.change_pixels == int((labelled & (label[0] == 1)).sum())
    assert index.label_fraction == pytest.approx(index.change_pixels / index.labelled_pixels)
    assert 0.01 < (index.label_fraction or 0) < 0.3


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_band_statistics_are_exact_whatever_the_strips_and_blocks(
    dtype: type[np.unsignedinteger[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(3)
    top = int(np.iinfo(dtype).max)
    data = rng.integers(0, top + 1, (3, 41, 37), dtype=dtype)
    data[:, :2] = top  # the largest squares, where an overflow would show
    valid = rng.random((41, 37)) > 0.3
    valid[20:24] = False  # whole blocks without a valid pixel
    expected_mean: list[float] = []
    expected_std: list[float] = []
    for band in data:  # Python integers: exact, rounded once
        values = [int(v) for v in band[valid]]
        n, total, total_sq = len(values), sum(values), sum(v * v for v in values)
        expected_mean.append(total / n)
        expected_std.append(math.sqrt((total_sq * n - total * total) / (n * n)))
    whole = _Moments(3)
    whole.add(data, valid)
    monkeypatch.setattr(tiles, "_MOMENT_BLOCK_PIXELS", 100)  # two rows a block
    strips = _Moments(3)
    for lo, hi in ((0, 1), (1, 22), (22, 41)):
        strips.add(data[:, lo:hi, :], valid[lo:hi])
    assert whole.stats() == strips.stats() == BandStats(expected_mean, expected_std, 1.0)
    flat = _Moments(1)  # a constant band: its spread is floored at one digital number
    flat.add(np.full((1, 4, 4), top, dtype), np.ones((4, 4), bool))
    assert flat.stats() == BandStats([float(top)], [1.0], 1.0)


def test_normalise_centres_each_band_and_zeroes_invalid_pixels() -> None:
    stats = BandStats(mean=[10.0, 100.0], std=[2.0, 50.0])
    data = np.array([[[10, 14]], [[100, 0]]], np.uint16)  # [2, 1, 2]
    out = stats.normalise(data, np.array([[True, False]]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[[0.0, 0.0]], [[0.0, 0.0]]])
    np.testing.assert_array_equal(
        stats.normalise(data, np.ones((1, 2), bool)), [[[0, 2]], [[0, -2]]]
    )


def test_the_scene_is_read_in_one_pass_of_bounded_column_bands(
    demo_cd_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(raster, "MAX_CHUNK_ROWS", 16)  # as if the source had 16-row blocks
    reads = record_reads(monkeypatch)
    config = TilingConfig(tile_size=32, overlap=8)
    with open_aligned(*locations(demo_cd_dir)) as pair:
        index = tile_scene(pair, tmp_path, config, "farm", "scenes", COMMIT, {}, band_width=64)
    assert len(index.tiles) > 0
    assert max(h for _, h, _, _ in reads) <= 32 + 16 and max(w for *_, w in reads) <= 64
    bands = sorted({(c, w) for *_, c, w in reads})
    assert len(bands) == 3 and bands[0][0] == 0 and sum(w for _, w in bands) < 128 + 3 * 32
    for col, width in bands:  # each band: consecutive, disjoint rows covering the scene
        rows = [(r, h) for r, h, c, w in reads if (c, w) == (col, width)]
        assert rows[0][0] == 0 and sum(h for _, h in rows) == 128
        assert all(r + h == nxt for (r, h), (nxt, _) in itertools.pairwise(rows))


@pytest.mark.parametrize(("config", "band_width"), [(TINY, 64), (TilingConfig(32, 8), 50)])
def test_column_bands_give_the_same_tile_set_as_one_band(
    demo_cd_dir: Path, tmp_path: Path, config: TilingConfig, band_width: int
) -> None:
    outputs = {}
    for width in (10_000, band_width):
        with open_aligned(*locations(demo_cd_dir)) as pair:
            outputs[width] = tile_scene(
                pair, tmp_path / str(width), config, "farm", "scenes", COMMIT, {}, band_width=width
            )
    whole, banded = outputs[10_000], outputs[band_width]
    assert banded == whole and len(whole.tiles) >= 9
    assert whole.alignment_samples > 0
    for tile in whole.tiles:
        name = f"tiles/{tile.name}.npz"
        assert (tmp_path / str(band_width) / name).read_bytes() == (
            tmp_path / "10000" / name
        ).read_bytes()
    assert sorted(p.name for p in (tmp_path / str(band_width) / "tiles").iterdir()) == sorted(
        f"{t.name}.npz" for t in whole.tiles
    )
    previews = [np.asarray(Image.open(tmp_path / str(w) / "preview.png")) for w in outputs]
    np.testing.assert_array_equal(previews[0], previews[1])


def test_column_bands_own_every_column_once_and_read_what_their_windows_need() -> None:
    for width, size, stride, max_width in [
        (128, 32, 24, 64),
        (2048, 128, 96, 2048),
        (8192, 128, 96, 2048),
        (300, 64, 64, 64),
        (70, 64, 48, 10),
    ]:
        cols = positions(width, size, stride)
        bands = column_bands(width, cols, size, max_width)
        assert [c for b in bands for c in b.cols] == cols
        assert bands[0].own_lo == 0 and bands[-1].own_hi == width
        assert all(a.own_hi == b.own_lo for a, b in itertools.pairwise(bands))
        for band in bands:
            assert band.lo == band.cols[0] and band.hi == band.cols[-1] + size
            assert band.lo <= band.own_lo < band.own_hi <= band.hi
            assert band.hi - band.lo <= max(max_width, size)
            assert cols[band.first] == band.cols[0]
    assert len(column_bands(2048, positions(2048, 128, 96), 128, 2048)) == 1
    assert column_bands(50, [], 64, 2048) == [ColumnBand(0, 50, 0, [], 0, 50)]


def test_write_npz_is_what_np_load_reads_and_is_reproducible(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    big = rng.integers(0, 65535, (4, 96, 96), dtype=np.uint16)
    arrays = {
        "pre": big[:, 10:42, 20:52],  # a view, not contiguous
        "post": rng.normal(size=(3, 5, 7)).astype(np.float32),
        "valid": rng.random((32, 32)) > 0.5,
        "mask": np.full((0, 4), 255, np.uint8),
    }
    write_npz(tmp_path / "a.npz", arrays)
    np.savez(tmp_path / "b.npz", **arrays)
    with np.load(tmp_path / "a.npz") as ours, np.load(tmp_path / "b.npz") as numpys:
        assert ours.files == numpys.files == list(arrays)
        for key, value in arrays.items():
            assert ours[key].dtype == value.dtype and ours[key].shape == value.shape
            np.testing.assert_array_equal(ours[key], value)
    with zipfile.ZipFile(tmp_path / "a.npz") as archive:
        assert archive.testzip() is None
    write_npz(tmp_path / "c.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "c.npz").read_bytes()


def test_a_tall_all_nodata_scene_keeps_nothing_and_says_why(tmp_path: Path) -> None:
    scene = tmp_path / "empty"
    scene.mkdir()
    for role in ("pre", "post"):  # real file: 71 x 2475, 4 bands, every pixel nodata
        shutil.copy(DATA / "rasterio" / "all-nodata.tif", scene / f"{role}.tif")
    index = tile_folder(scene, tmp_path / "out", TINY, label=False)
    assert index.tiles == [] and index.windows_total == 52 * 2
    assert index.dropped == {"nodata": index.windows_total}
    assert not index.has_label and index.label_fraction is None
    assert index.alignment_residual_px is None and index.alignment_samples == 0
    assert TileIndex.load(tmp_path / "out").tiles == []
    assert (tmp_path / "out" / "preview.png").is_file()


def test_windows_with_too_much_nodata_are_dropped(demo_cd_dir: Path, tmp_path: Path) -> None:
    strict = dataclasses.replace(TINY, max_nodata_fraction=0.0)
    index = tile_folder(demo_cd_dir, tmp_path, strict)
    pre, _ = read_raster(demo_cd_dir / "pre.tif")
    post, _ = read_raster(demo_cd_dir / "post.tif")
    valid = (pre[0] != 0) & (post[0] != 0)
    expected = [
        (r, c) for r in (0, 48, 64) for c in (0, 48, 64) if valid[r : r + 64, c : c + 64].all()
    ]
    assert 0 < len(expected) < 9  # the swath edges touch the border windows
    assert [(t.row, t.col) for t in index.tiles] == expected
    assert index.dropped == {"nodata": 9 - len(expected)}
    assert all(t.nodata_fraction == 0.0 for t in index.tiles)


def test_a_scene_smaller_than_a_window_is_one_window_padded_with_ignored_pixels(
    demo_cd_dir: Path, tmp_path: Path
) -> None:
    index = tile_folder(demo_cd_dir, tmp_path, TilingConfig(tile_size=144, overlap=0))
    assert index.windows_total == 1 and len(index.tiles) == 1 and index.padded_tiles == 1
    assert index.dropped == {}
    pre, _ = read_raster(demo_cd_dir / "pre.tif")
    post, _ = read_raster(demo_cd_dir / "post.tif")
    label, _ = read_raster(demo_cd_dir / "label.tif")
    with np.load(tmp_path / "tiles" / "000000.npz") as tile:
        assert tile["pre"].shape == (4, 144, 144) and tile["mask"].shape == (144, 144)
        np.testing.assert_array_equal(tile["pre"][:, :128, :128], pre)
        assert not tile["valid"][128:].any() and not tile["valid"][:, 128:].any()
        assert (tile["mask"][128:] == 255).all() and (tile["mask"][:, 128:] == 255).all()
        labelled = int(np.count_nonzero(tile["mask"] != 255))
    valid = (pre[0] != 0) & (post[0] != 0)
    assert labelled == index.tiles[0].labelled_pixels == int((valid & (label[0] != 255)).sum())
    # The padding is not nodata: only the scene's own pixels count towards the limit.
    assert index.tiles[0].nodata_fraction == pytest.approx(1 - valid.mean(), abs=1e-4)


def test_a_strip_lower_than_a_window_is_padded_only_in_height(
    demo_cd_dir: Path, tmp_path: Path
) -> None:
    crop = crop_scene(demo_cd_dir, tmp_path / "strip", window(0, 20, 100, 40))
    index = tile_folder(crop, tmp_path / "tiles", TINY)  # 64 px windows every 48 px
    assert [(t.row, t.col) for t in index.tiles] == [(0, 0), (0, 36)]
    assert index.padded_tiles == 2 and index.height == 40 and index.width == 100
    with np.load(tmp_path / "tiles" / "tiles" / "000001.npz") as tile:
        assert tile["post"].shape == (4, 64, 64)
        assert tile["valid"][:40].any() and not tile["valid"][40:].any()


def test_index_round_trips_through_json(demo_tiles: tuple[Path, TileIndex]) -> None:
    out, index = demo_tiles
    loaded = TileIndex.load(out)
    assert loaded == index
    assert json.loads((out / MARKER).read_text()) == json.loads(json.dumps(index.to_dict()))
    assert TileIndex.from_dict(index.to_dict()) == index
    assert loaded.version == 2


def test_tile_key_names_the_commit_and_config_and_is_stable() -> None:
    key = tile_key("farm", COMMIT, TINY)
    assert key == f"cd/tiles/farm/{COMMIT[:16]}-{config_hash(TINY)}"
    assert key == tile_key("farm", COMMIT, preset(TilingConfig, "tiny"))
    assert tile_key("farm", COMMIT, dataclasses.replace(TINY, overlap=8)) != key
    assert tile_key("farm", "f" * 64, TINY) != key
    assert tile_key("river", COMMIT, TINY) != key


@pytest.mark.parametrize("shift", [(3, -2), (0, 5), (-4, -4), (1, 0)])
def test_phase_shift_recovers_an_integer_offset(shift: tuple[int, int]) -> None:
    ground = textured((160, 160), seed=1).astype(np.float32)
    dy, dx = shift
    a = ground[48:112, 48:112]
    b = ground[48 - dy : 112 - dy, 48 - dx : 112 - dx]  # b(y, x) = a(y - dy, x - dx)
    # The shift that moves b back onto a. The Hann window both windows share pulls large shifts
    # slightly towards zero (measured: 5 px reads 4.85 px); near the 0.5 px check it is exact.
    estimate = phase_shift(a, b)
    assert (estimate.dy, estimate.dx) == pytest.approx((-dy, -dx), abs=0.2)
    assert estimate.confidence > 20


@pytest.mark.parametrize("shift", [(0.5, 0.0), (1.25, -0.75), (0.0, -2.5)])
def test_phase_shift_recovers_a_subpixel_offset(shift: tuple[float, float]) -> None:
    ground = textured((128, 128), seed=2, smooth=1.0)
    moved = np.fft.ifftn(ndimage.fourier_shift(np.fft.fftn(ground), shift)).real
    a = ground[32:96, 32:96].astype(np.float32)
    b = moved[32:96, 32:96].astype(np.float32)
    estimate = phase_shift(a, b)
    assert (estimate.dy, estimate.dx) == pytest.approx((-shift[0], -shift[1]), abs=0.1)


def test_alignment_residual_needs_mostly_valid_pixels_and_ignores_radiometry() -> None:
    ground = textured((64, 64), seed=3)
    pre = np.stack([ground * 1000 + 3000] * 4)
    post = pre * 1.3 + 250  # another date: gain and offset, same place
    valid = np.ones((64, 64), bool)
    assert alignment_residual(pre, post, valid) == pytest.approx(0.0, abs=1e-6)
    valid[:, :7] = False  # 89 % valid
    assert alignment_residual(pre, post, valid) is None


def test_residual_of_the_warped_demo_scene_is_small(
    demo_cd_warped_dir: Path, tmp_path: Path
) -> None:
    index = tile_folder(demo_cd_warped_dir, tmp_path, TINY)
    assert index.alignment_samples > 0
    assert index.alignment_residual_px is not None and index.alignment_residual_px < 0.3


def _misregister(scene: Path, out: Path, dx: float, dy: float = 0.0) -> TileIndex:
    """Tile ``scene`` with its post image's georeference moved by (dx, dy) pixels."""
    moved = out / "scene"
    shutil.copytree(scene, moved)
    post, profile = read_raster(scene / "post.tif")
    transform = profile["transform"] * Affine.translation(dx, dy)
    write_raster(moved / "post.tif", post, transform=transform)
    return tile_folder(moved, out / "tiles", dataclasses.replace(TINY, alignment_samples=12))


def test_residual_measures_a_known_misregistration(demo_cd_dir: Path, tmp_path: Path) -> None:
    index = _misregister(demo_cd_dir, tmp_path, 2, -1)  # post's grid 2 px east, 1 px north
    with (
        rasterio.open(tmp_path / "scene" / "post.tif") as src,
        rasterio.open(demo_cd_dir / "post.tif") as original,
    ):
        assert src.transform == original.transform * Affine.translation(2, -1)
    assert index.alignment_samples >= 2
    assert index.alignment_residual_px == pytest.approx(np.hypot(2, 1), abs=0.1)


@pytest.mark.parametrize("dx", [0.4, 0.6])
def test_residual_measures_a_subpixel_misregistration(
    demo_cd_dir: Path, tmp_path: Path, dx: float
) -> None:
    index = _misregister(demo_cd_dir, tmp_path, dx)
    assert index.alignment_residual_px == pytest.approx(dx, abs=0.1)
