"""A TorchGeo dataset over tile sets, and the spatial train/validation split.

Samples follow TorchGeo's convention (``{"image": Tensor[2C, T, T], "mask": Tensor[T, T]}``): the
image stacks the pre bands and the post bands, each normalised with its own date's statistics
from the tile index, so illumination and season offsets between dates are removed the same way
in training and inference. The mask holds 0 (no change), 1 (change) and 255 (ignore).
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchgeo.datasets import NonGeoDataset

from mlops_assets.core.cd.tiles import TileIndex, TileRecord

IGNORE = 255


@dataclass(frozen=True)
class TileRef:
    """One tile of one tile set."""

    directory: Path
    index: TileIndex
    tile: TileRecord

    @property
    def path(self) -> Path:
        """The tile's file."""
        return self.directory / "tiles" / f"{self.tile.name}.npz"


def tile_refs(tile_sets: Sequence[tuple[Path, TileIndex]]) -> list[TileRef]:
    """Every tile of every set, in a stable order."""
    return [TileRef(d, index, t) for d, index in tile_sets for t in index.tiles]


def load_sample(ref: TileRef) -> dict[str, Tensor]:
    """The normalised image and the mask of one tile."""
    with np.load(ref.path) as data:
        valid = data["valid"]
        pre = ref.index.pre_stats.normalise(data["pre"], valid)
        post = ref.index.post_stats.normalise(data["post"], valid)
        mask = data["mask"].astype(np.int64)
    return {
        "image": torch.from_numpy(np.concatenate([pre, post])),
        "mask": torch.from_numpy(mask),
    }


class ChangeTileDataset(NonGeoDataset):
    """Bi-temporal change-detection tiles (early fusion) for a segmentation model."""

    def __init__(self, refs: Sequence[TileRef], augment: bool = False) -> None:
        self.refs = list(refs)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = load_sample(self.refs[index])
        if self.augment:  # dihedral augmentation, drawn from torch's (seeded) generator
            k = int(torch.randint(0, 4, (1,)))
            flip = bool(torch.randint(0, 2, (1,)))
            image, mask = (
                torch.rot90(sample["image"], k, (1, 2)),
                torch.rot90(sample["mask"], k, (0, 1)),
            )
            if flip:
                image, mask = torch.flip(image, (2,)), torch.flip(mask, (1,))
            sample = {"image": image.contiguous(), "mask": mask.contiguous()}
        return sample

    def plot(self, sample: dict[str, Tensor], suptitle: str | None = None) -> Figure:
        """Pre, post and mask (and the prediction, if the sample has one), as TorchGeo plots."""
        bands = sample["image"].shape[0] // 2
        rgb = [2, 1, 0] if bands >= 3 else [0, 0, 0]
        panels = [
            ("pre", sample["image"][:bands][rgb]),
            ("post", sample["image"][bands:][rgb]),
        ]
        figure = Figure(figsize=(4 * (len(panels) + 2), 4))
        axes = figure.subplots(1, len(panels) + (2 if "prediction" in sample else 1))
        for ax, (title, image) in zip(axes, panels, strict=False):
            array = image.permute(1, 2, 0).numpy()
            ax.imshow(np.clip((array - array.min()) / max(float(np.ptp(array)), 1e-6), 0, 1))
            ax.set_title(title)
        axes[len(panels)].imshow(sample["mask"].numpy(), vmin=0, vmax=1)
        axes[len(panels)].set_title("mask")
        if "prediction" in sample:
            axes[-1].imshow(sample["prediction"].numpy(), vmin=0, vmax=1)
            axes[-1].set_title("prediction")
        for ax in axes:
            ax.axis("off")
        if suptitle:
            figure.suptitle(suptitle)
        return figure


@dataclass(frozen=True)
class Split:
    """Tiles for training and validation, and how many were held back as a buffer."""

    train: list[TileRef]
    val: list[TileRef]
    buffer: int


def _block_order(scene_id: str, block: tuple[int, int], seed: int) -> int:
    digest = hashlib.sha256(f"{seed}:{scene_id}:{block[0]}:{block[1]}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _overlaps(a: TileRef, b: TileRef) -> bool:
    size_a = int(a.index.config["tile_size"])
    size_b = int(b.index.config["tile_size"])
    return (
        a.tile.row < b.tile.row + size_b
        and b.tile.row < a.tile.row + size_a
        and a.tile.col < b.tile.col + size_b
        and b.tile.col < a.tile.col + size_a
    )


def split_by_block(
    refs: Sequence[TileRef], block_size: int, val_fraction: float, seed: int
) -> Split:
    """Split by spatial blocks of ``block_size`` pixels, stratified by change.

    A tile belongs to the block its centre falls in. Blocks are taken for validation in a seeded
    pseudo-random order, those containing change first, until ``val_fraction`` of the labelled
    tiles is reached (so validation always sees change when there is any). Training tiles that
    share a pixel with a validation tile are held back as a buffer: no pixel is on both sides.
    """
    labelled = [r for r in refs if r.tile.labelled_pixels > 0]
    blocks: dict[tuple[str, int, int], list[TileRef]] = {}
    for ref in labelled:
        half = int(ref.index.config["tile_size"]) // 2
        key = (
            ref.index.scene_id,
            (ref.tile.row + half) // block_size,
            (ref.tile.col + half) // block_size,
        )
        blocks.setdefault(key, []).append(ref)
    order = sorted(blocks, key=lambda k: _block_order(k[0], (k[1], k[2]), seed))
    with_change = [k for k in order if any(r.tile.change_pixels for r in blocks[k])]
    target = val_fraction * len(labelled)
    val: list[TileRef] = []
    for key in with_change + [k for k in order if k not in with_change]:
        if len(val) >= target and val:
            break
        val += blocks[key]
    val_ids = {id(r) for r in val}
    train: list[TileRef] = []
    buffer = 0
    for ref in labelled:
        if id(ref) in val_ids:
            continue
        if any(v.index.scene_id == ref.index.scene_id and _overlaps(ref, v) for v in val):
            buffer += 1
        else:
            train.append(ref)
    return Split(train, val, buffer)


def split_by_scene(
    refs: Sequence[TileRef],
    val_scenes: Sequence[str] = (),
    val_fraction: float = 0.25,
    seed: int = 0,
) -> Split:
    """Whole scenes for validation, the others for training.

    ``val_scenes`` are scene ids or shell patterns (``levircd-val-*``: an imported dataset's own
    validation split); each must match a labelled scene. Without them, scenes are taken in a
    seeded pseudo-random order, those with change first, until ``val_fraction`` of the
    labelled tiles is reached, always leaving one scene to train on.
    """
    labelled = [r for r in refs if r.tile.labelled_pixels > 0]
    scenes = sorted({r.index.scene_id for r in labelled})
    if val_scenes:
        missing = [p for p in val_scenes if not any(fnmatch.fnmatchcase(s, p) for s in scenes)]
        if missing:
            raise ValueError(f"validation scene(s) {sorted(missing)} have no labelled tiles")
        chosen = {s for s in scenes if any(fnmatch.fnmatchcase(s, p) for p in val_scenes)}
    else:
        chosen = _pick_scenes(labelled, scenes, val_fraction, seed)
    val = [r for r in labelled if r.index.scene_id in chosen]
    train = [r for r in labelled if r.index.scene_id not in chosen]
    return Split(train, val, 0)


def _pick_scenes(
    labelled: Sequence[TileRef], scenes: Sequence[str], val_fraction: float, seed: int
) -> set[str]:
    tiles = {s: sum(1 for r in labelled if r.index.scene_id == s) for s in scenes}
    changed = {r.index.scene_id for r in labelled if r.tile.change_pixels}
    order = sorted(scenes, key=lambda s: (s not in changed, _block_order(s, (0, 0), seed)))
    chosen: set[str] = set()
    for scene in order[: max(len(order) - 1, 0)]:
        if chosen and sum(tiles[s] for s in chosen) >= val_fraction * len(labelled):
            break
        chosen.add(scene)
    return chosen


def scenes_of(refs: Sequence[TileRef]) -> list[str]:
    """The scene ids of ``refs``, sorted."""
    return sorted({r.index.scene_id for r in refs})
