"""Training on the inputs real datasets bring: 3-band uint8 crops, 13-band uint16 Sentinel-2,
crops smaller than a window, scenes without change; ``in_channels`` follows the scenes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mlops_assets.core.cd.config import TilingConfig, TrainConfig, preset
from mlops_assets.core.cd.dataset import TileRef, tile_refs
from mlops_assets.core.cd.raster import open_aligned
from mlops_assets.core.cd.tiles import TileIndex, tile_scene
from mlops_assets.core.cd.train import TrainingError, train_change_model
from mlops_assets.core.importers import dataset_format
from mlops_assets.core.importers.base import prepare_import
from mlops_assets.core.store.base import RasterLocation
from mlops_assets_tests.core.importers import make_levircd, make_oscd

TILING = preset(TilingConfig, "tiny")  # 64 px windows
TINY = preset(TrainConfig, "tiny", device="cpu")


def _tile(folder: Path, out: Path, scene_id: str) -> tuple[Path, TileIndex]:
    pre, post, label = (
        RasterLocation(str(folder / n)) for n in ("pre.tif", "post.tif", "label.tif")
    )
    with open_aligned(pre, post, label, pixel_grid=True) as pair:
        return out, tile_scene(pair, out, TILING, scene_id, "scenes", "0" * 64, {})


def _import(name: str, root: Path, work: Path) -> list[tuple[Path, TileIndex]]:
    dataset = dataset_format(name)
    scenes = prepare_import(dataset, root, (), dataset.default_prefix, work / "scenes")
    return [_tile(s.folder, work / "tiles" / s.scene_id, s.scene_id) for s in scenes]


@pytest.fixture(scope="module")
def rgb_sets(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, TileIndex]]:
    """LEVIR-CD crops: train 96 px, val 48 px (under one window), val_2 without change."""
    root = tmp_path_factory.mktemp("levir")
    make_levircd(root, splits=("train",), size=96, seed=1)
    make_levircd(root, splits=("val",), size=48, seed=7)
    return _import("levir-cd", root, tmp_path_factory.mktemp("levir-work"))


@pytest.fixture(scope="module")
def s2_sets(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, TileIndex]]:
    """Two OSCD cities: 13 uint16 bands on the 10 m grid."""
    root = make_oscd(tmp_path_factory.mktemp("oscd"), {"paris": "train", "lyon": "train"}, 72)
    return _import("oscd", root, tmp_path_factory.mktemp("oscd-work"))


def _refs(sets: list[tuple[Path, TileIndex]]) -> list[TileRef]:
    return tile_refs(sets)


def test_rgb_crops_train_on_whole_scenes_and_the_split_is_recorded(
    rgb_sets: list[tuple[Path, TileIndex]],
) -> None:
    indexes = {index.scene_id: index for _, index in rgb_sets}
    small = indexes["levircd-val-1"]
    assert (small.width, small.height, small.padded_tiles, len(small.tiles)) == (48, 48, 1, 1)
    quiet = indexes["levircd-val-2"]
    assert quiet.change_pixels == 0 and quiet.labelled_pixels == 48 * 48  # still teaches
    assert all(i.grid == "pixel" and i.bands == 3 for i in indexes.values())
    config = dataclasses.replace(TINY, split="scene", val_scenes=("levircd-val-*",))
    result = train_change_model(_refs(rgb_sets), config)
    assert result.spec["in_channels"] == 6  # 3 bands per date, from the scenes
    assert result.train_scenes == ["levircd-train-1", "levircd-train-2"]
    assert result.val_scenes == ["levircd-val-1", "levircd-val-2"]
    assert result.val_tiles == 2 and result.buffer_tiles == 0
    assert len(result.history) == config.epochs
    # The model kept is the epoch with the best validation F1 of this run.
    assert result.best in result.history
    assert result.best.f1 == max(m.f1 for m in result.history)


def test_sentinel2_13_bands_give_a_26_channel_model(
    s2_sets: list[tuple[Path, TileIndex]],
) -> None:
    assert all(index.bands == 13 for _, index in s2_sets)
    result = train_change_model(_refs(s2_sets), dataclasses.replace(TINY, split="scene"))
    assert result.spec["in_channels"] == 26
    assert sorted(result.train_scenes + result.val_scenes) == [
        "oscd-train-lyon",
        "oscd-train-paris",
    ]
    assert len(result.val_scenes) == 1


def test_scenes_of_different_band_counts_are_a_clear_error(
    rgb_sets: list[tuple[Path, TileIndex]], s2_sets: list[tuple[Path, TileIndex]]
) -> None:
    refs = _refs(s2_sets[:1] + rgb_sets)
    with pytest.raises(
        TrainingError,
        match=r"^tile sets have different band counts: cd/oscd-train-lyon has 13, "
        r"cd/levircd-train-1 has 3; train one model per sensor$",
    ):
        train_change_model(refs, dataclasses.replace(TINY, split="scene"))
