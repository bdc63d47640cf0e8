from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from mlops_assets.core.cd.config import TilingConfig, preset
from mlops_assets.core.cd.dataset import (
    ChangeTileDataset,
    Split,
    TileRef,
    load_sample,
    split_by_block,
    split_by_scene,
    tile_refs,
)
from mlops_assets.core.cd.tiles import BandStats, TileIndex, TileRecord
from mlops_assets_tests.core.cd import COMMIT, tile_folder, write_raster

TINY = preset(TilingConfig, "tiny")


@pytest.fixture(scope="module")
def demo_refs(demo_cd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[TileRef]:
    out = tmp_path_factory.mktemp("tiles")
    return tile_refs([(out, tile_folder(demo_cd_dir, out, TINY, scene_id="farm"))])


def test_samples_stack_normalised_pre_and_post_with_the_mask(demo_refs: list[TileRef]) -> None:
    dataset = ChangeTileDataset(demo_refs)
    assert len(dataset) == 9
    ref = demo_refs[0]
    sample = dataset[0]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (8, 64, 64)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (64, 64)
    with np.load(ref.path) as data:
        valid, pre, post, mask = data["valid"], data["pre"], data["post"], data["mask"]
    stats = ref.index.pre_stats
    expected_pre = (pre[2].astype(np.float32) - stats.mean[2]) / stats.std[2]
    np.testing.assert_allclose(sample["image"][2][valid], expected_pre[valid], rtol=1e-5)
    expected_post = (post[3].astype(np.float32) - ref.index.post_stats.mean[3]) / (
        ref.index.post_stats.std[3]
    )
    np.testing.assert_allclose(sample["image"][7][valid], expected_post[valid], rtol=1e-5)
    assert (sample["image"][:, ~valid] == 0).all()  # nodata sits at the mean
    np.testing.assert_array_equal(sample["mask"].numpy(), mask)
    assert set(np.unique(mask)) <= {0, 1, 255}
    # Each date is normalised with its own statistics: whole-scene means are about zero.
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    assert images.mean(dim=(0, 2, 3)).abs().max() < 0.3


def _dihedral(image: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    out = torch.rot90(image, k, (-2, -1))
    return torch.flip(out, (-1,)) if flip else out


def test_augmentation_is_one_seeded_dihedral_transform_of_image_and_mask(
    demo_refs: list[TileRef],
) -> None:
    plain = load_sample(demo_refs[4])
    augmented = ChangeTileDataset(demo_refs, augment=True)
    torch.manual_seed(0)
    first = [augmented[4] for _ in range(8)]
    torch.manual_seed(0)
    again = [augmented[4] for _ in range(8)]
    transforms = set()
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        matches = [
            (k, flip)
            for k in range(4)
            for flip in (False, True)
            if torch.equal(_dihedral(plain["image"], k, flip), a["image"])
            and torch.equal(_dihedral(plain["mask"], k, flip), a["mask"])
        ]
        assert matches, "image and mask were not transformed together"
        transforms.add(matches[0])
        assert a["image"].is_contiguous() and a["mask"].is_contiguous()
    assert len(transforms) > 1


def test_plot_shows_pre_post_mask_and_prediction(demo_refs: list[TileRef]) -> None:
    sample = ChangeTileDataset(demo_refs)[0]
    figure = ChangeTileDataset(demo_refs).plot(sample, suptitle="farm 000000")
    assert isinstance(figure, Figure)
    assert [ax.get_title() for ax in figure.axes] == ["pre", "post", "mask"]
    with_prediction = {**sample, "prediction": (sample["mask"] == 1).float()}
    titles = [ax.get_title() for ax in ChangeTileDataset(demo_refs).plot(with_prediction).axes]
    assert titles == ["pre", "post", "mask", "prediction"]


# Splits on a synthetic grid of tiles: two scenes of 8 x 8 windows of 64 px every 48 px.

SIZE, STRIDE, GRID = 64, 48, 8
BLOCK = 2 * STRIDE


def _index(
    scene_id: str, changed: set[tuple[int, int]], unlabelled: set[tuple[int, int]]
) -> TileIndex:
    tiles = [
        TileRecord(
            name=f"{i * GRID + j:06d}",
            row=i * STRIDE,
            col=j * STRIDE,
            nodata_fraction=0.0,
            change_pixels=100 if (i, j) in changed else 0,
            labelled_pixels=0 if (i, j) in unlabelled else SIZE * SIZE,
        )
        for i in range(GRID)
        for j in range(GRID)
    ]
    config = dataclasses.asdict(TilingConfig(tile_size=SIZE, overlap=SIZE - STRIDE))
    stats = BandStats([0.0] * 4, [1.0] * 4)
    return TileIndex(
        scene_id=scene_id,
        repository="scenes",
        commit_id=COMMIT,
        sources={},
        config=config,
        config_hash="x",
        crs="EPSG:32633",
        transform=[2.0, 0.0, 0.0, 0.0, -2.0, 0.0],
        width=STRIDE * (GRID - 1) + SIZE,
        height=STRIDE * (GRID - 1) + SIZE,
        bands=4,
        pre_stats=stats,
        post_stats=stats,
        windows_total=GRID * GRID,
        tiles=tiles,
        has_label=True,
    )


@pytest.fixture
def grid_refs(tmp_path: Path) -> list[TileRef]:
    north = _index("north", changed={(1, 1), (1, 2), (6, 6)}, unlabelled={(0, 7), (7, 0)})
    south = _index("south", changed=set(), unlabelled=set())
    return tile_refs([(tmp_path / "north", north), (tmp_path / "south", south)])


def _names(refs: list[TileRef]) -> list[str]:
    return [f"{r.index.scene_id}/{r.tile.name}" for r in refs]


def _block(ref: TileRef) -> tuple[str, int, int]:
    """The 2 x 2-stride block a window's centre falls in."""
    half = SIZE // 2
    return (ref.index.scene_id, (ref.tile.row + half) // BLOCK, (ref.tile.col + half) // BLOCK)


def _pixels_overlap(a: TileRef, b: TileRef) -> bool:
    """Whether two windows of one scene share a pixel, from their row/col extents."""
    rows_a, cols_a = set(range(a.tile.row, a.tile.row + SIZE)), range(a.tile.col, a.tile.col + SIZE)
    rows_b, cols_b = set(range(b.tile.row, b.tile.row + SIZE)), range(b.tile.col, b.tile.col + SIZE)
    return bool(rows_a & rows_b) and bool(set(cols_a) & set(cols_b))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_block_split_shares_no_pixel_between_train_and_validation(
    grid_refs: list[TileRef], seed: int
) -> None:
    split = split_by_block(grid_refs, block_size=BLOCK, val_fraction=0.25, seed=seed)
    assert split.train and split.val
    for t in split.train:
        for v in split.val:
            assert not (t.index.scene_id == v.index.scene_id and _pixels_overlap(t, v)), (
                _names([t]),
                _names([v]),
            )
    labelled = [r for r in grid_refs if r.tile.labelled_pixels]
    assert len(split.train) + len(split.val) + split.buffer == len(labelled) == 126
    assert not set(_names(split.train)) & set(_names(split.val))
    assert all(r.tile.labelled_pixels for r in split.train + split.val)  # unlabelled: neither
    assert len(split.val) >= 0.25 * len(labelled)
    # Whole blocks (of 2 x 2 strides, by window centre) go to validation, never part of one.
    blocks = {_block(r) for r in split.val}
    in_blocks = [r for r in labelled if _block(r) in blocks]
    assert sorted(_names(in_blocks)) == sorted(_names(split.val))


def test_block_split_is_deterministic_for_a_seed_and_varies_with_it(
    grid_refs: list[TileRef],
) -> None:
    def run(seed: int) -> Split:
        return split_by_block(grid_refs, block_size=BLOCK, val_fraction=0.25, seed=seed)

    first, again = run(5), run(5)
    assert _names(first.val) == _names(again.val) and _names(first.train) == _names(again.train)
    assert first.buffer == again.buffer
    assert len({tuple(_names(run(seed).val)) for seed in range(6)}) > 1
    # The order of the input does not matter either.
    shuffled = split_by_block(list(reversed(grid_refs)), BLOCK, 0.25, 5)
    assert sorted(_names(shuffled.val)) == sorted(_names(first.val))


@pytest.mark.parametrize("seed", range(8))
def test_block_split_puts_change_in_validation_first(grid_refs: list[TileRef], seed: int) -> None:
    # Change is in 3 of 32 blocks: whatever the seed, validation takes from them first.
    split = split_by_block(grid_refs, block_size=BLOCK, val_fraction=0.05, seed=seed)
    changed_blocks = {_block(r) for r in grid_refs if r.tile.change_pixels}
    assert len(changed_blocks) == 3
    assert any(r.tile.change_pixels for r in split.val)
    assert {_block(r) for r in split.val} <= changed_blocks


def test_block_split_of_one_block_leaves_nothing_to_train_on(grid_refs: list[TileRef]) -> None:
    north = [r for r in grid_refs if r.index.scene_id == "north"]
    split = split_by_block(north, block_size=10_000, val_fraction=0.25, seed=0)
    assert split.train == [] and len(split.val) == 62


def test_scene_split_holds_out_whole_scenes(grid_refs: list[TileRef]) -> None:
    split = split_by_scene(grid_refs, ["south"])
    assert {r.index.scene_id for r in split.val} == {"south"} and len(split.val) == 64
    assert {r.index.scene_id for r in split.train} == {"north"} and len(split.train) == 62
    assert split.buffer == 0
    with pytest.raises(
        ValueError, match=r"validation scene\(s\) \['east'\] have no labelled tiles"
    ):
        split_by_scene(grid_refs, ["south", "east"])


def test_scene_split_without_names_holds_out_whole_scenes_change_first(
    grid_refs: list[TileRef],
) -> None:
    for seed in range(4):
        split = split_by_scene(grid_refs, val_fraction=0.25, seed=seed)
        # north has the change: it validates whatever the seed; south trains.
        assert {r.index.scene_id for r in split.val} == {"north"}
        assert {r.index.scene_id for r in split.train} == {"south"}
    north = [r for r in grid_refs if r.index.scene_id == "north"]
    only = split_by_scene(north, val_fraction=0.9)  # one scene: it trains, none validates
    assert only.val == [] and len(only.train) == 62


def test_scene_split_takes_patterns_such_as_an_imported_split(grid_refs: list[TileRef]) -> None:
    split = split_by_scene(grid_refs, ["s*"])
    assert {r.index.scene_id for r in split.val} == {"south"}
    with pytest.raises(ValueError, match=r"validation scene\(s\) \['levircd-val-\*'\]"):
        split_by_scene(grid_refs, ["levircd-val-*"])


def test_constant_and_all_zero_bands_normalise_to_zero_not_to_infinity(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(1, 4000, (4, 40, 40)).astype(np.uint16)
    data[1] = 0  # an all-zero band
    data[2] = 1234  # a constant band
    data[3] = 0
    data[3, 5, 5] = 1  # one stray value in an otherwise empty band
    for name in ("pre.tif", "post.tif"):
        write_raster(tmp_path / "s" / name, data, nodata=None)
    index = tile_folder(tmp_path / "s", tmp_path / "t", TINY, label=False)
    assert index.constant_bands == [2, 3, 4]  # the stray value spreads under one DN
    assert index.pre_stats.std[1] == index.pre_stats.std[2] == 1.0  # floored at one DN
    sample = load_sample(tile_refs([(tmp_path / "t", index)])[0])
    image = sample["image"]
    assert torch.isfinite(image).all() and float(image.abs().max()) <= 50.0
    assert float(image[1].abs().max()) == 0.0 and float(image[2].abs().max()) == 0.0
    assert float(image[3].abs().max()) < 1.0  # the stray value: one DN over a one-DN floor
