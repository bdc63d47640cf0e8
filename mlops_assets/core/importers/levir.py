"""LEVIR-CD and LEVIR-CD+: RGB crops of two dates and a building-change label, as PNG files.

Layouts read (the ones TorchGeo's `torchgeo.datasets.LEVIRCD` / `LEVIRCDPlus` read, and the
one the LEVIR-CD release unpacks to):

* LEVIR-CD, one folder per split: ``ROOT/{train,val,test}/{A,B,label}/<name>.png``;
* LEVIR-CD, TorchGeo's layout (its three zips unpacked into one root):
  ``ROOT/{A,B,label}/{train,val,test}_<n>.png``;
* LEVIR-CD+: ``ROOT/LEVIR-CD+/{train,test}/{A,B,label}/<name>.png`` (or ROOT may be the
  ``LEVIR-CD+`` folder itself).

``A`` is the earlier date, ``B`` the later, ``label`` 255 where a building appeared or went
(stored as 1; 0/1 labels are kept). The PNGs carry no georeferencing, so every scene is stored
on a pixel grid. TorchGeo's classes pair files by sorted position and clamp label values, which
would hide exactly the problems an import must report (unpaired names, other label values), so
the layouts are read here and TorchGeo's own readers are used in the tests to confirm them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlops_assets.core.importers.base import (
    ConvertedScene,
    DatasetFormat,
    DatasetImportError,
    SourcePair,
    read_label_image,
    read_rgb_image,
    scene_id_for,
)
from mlops_assets.core.scenes.layout import SceneError
from mlops_assets.core.scenes.manifest import SceneManifest
from mlops_assets.core.scenes.pixel_grid import (
    LABEL_NODATA,
    label_from_values,
    write_pixel_raster,
)

FOLDERS = ("A", "B", "label")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _images(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by name (without suffix)."""
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }


def pair_folders(
    root: Path, split: str, folders: dict[str, Path], names_prefix: str = ""
) -> list[tuple[str, Path, Path, Path]]:
    """(name, A file, B file, label file) for each name, every folder holding it.

    Raises `DatasetImportError` naming the first file without its partner (or a missing folder).
    """
    for role in FOLDERS:
        if not folders[role].is_dir():
            raise DatasetImportError(f"{folders[role]}: missing ({split} needs A/, B/ and label/)")
    found = {role: _images(folders[role]) for role in FOLDERS}
    if names_prefix:
        found = {
            role: {n: p for n, p in files.items() if n.startswith(names_prefix)}
            for role, files in found.items()
        }
    if not found["A"]:
        raise DatasetImportError(f"{folders['A']}: no {split} image found")
    everything = sorted(set(found["A"]) | set(found["B"]) | set(found["label"]))
    pairs: list[tuple[str, Path, Path, Path]] = []
    for name in everything:
        missing = [role for role in FOLDERS if name not in found[role]]
        if missing:
            have = next(found[role][name] for role in FOLDERS if name in found[role])
            raise DatasetImportError(
                f"{have}: no matching {missing[0]}/{name}.* in {folders[missing[0]]} "
                "(A/, B/ and label/ must hold the same names)"
            )
        pairs.append((name, found["A"][name], found["B"][name], found["label"][name]))
    return pairs


def convert_rgb_pair(pair: SourcePair, folder: Path, source: str) -> ConvertedScene:
    """Write an RGB crop pair and its label as a pixel-grid scene folder."""
    pre, post = read_rgb_image(pair.pre[0]), read_rgb_image(pair.post[0])
    if pair.label is None:
        raise DatasetImportError(f"{pair.pre[0]}: no label")
    raw = read_label_image(pair.label)
    for path, shape in ((pair.post[0], post.shape[1:]), (pair.label, raw.shape)):
        if shape != pre.shape[1:]:
            raise DatasetImportError(
                f"{path} is {shape[1]}x{shape[0]} px but {pair.pre[0]} is "
                f"{pre.shape[2]}x{pre.shape[1]} px: a pair must have one size"
            )
    try:
        label, encoding = label_from_values(raw, str(pair.label))
    except SceneError as exc:
        raise DatasetImportError(str(exc)) from exc
    names = ("red", "green", "blue")
    write_pixel_raster(folder / "pre.tif", list(pre), descriptions=names, rgb=True)
    write_pixel_raster(folder / "post.tif", list(post), descriptions=names, rgb=True)
    write_pixel_raster(folder / "label.tif", [label], nodata=LABEL_NODATA)
    SceneManifest(
        grid="pixel",
        source=source,
        split=pair.split,
        original=pair.originals,
        bands=list(names),
        label_encoding=encoding,
    ).write(folder)
    height, width = label.shape
    return ConvertedScene(
        scene_id=pair.scene_id,
        split=pair.split,
        folder=folder,
        width=width,
        height=height,
        bands=3,
        dtype="uint8",
        grid="pixel",
        changed_pixels=int(np.count_nonzero(label)),
        labelled_pixels=int(label.size),
    )


class _Levir(DatasetFormat):
    """What LEVIR-CD and LEVIR-CD+ share: per-split folders of A/B/label crops."""

    def _per_split(self, base: Path, split: str, prefix: str, root: Path) -> list[SourcePair]:
        folder = base / split
        if not folder.is_dir():
            raise DatasetImportError(
                f"{folder}: missing; {self.name} splits live in "
                f"{'/'.join(self.splits)} folders holding A/, B/ and label/"
            )
        pairs = pair_folders(root, split, {role: folder / role for role in FOLDERS})
        return [self._pair(split, prefix, root, *found) for found in pairs]

    def _pair(
        self, split: str, prefix: str, root: Path, name: str, a: Path, b: Path, label: Path
    ) -> SourcePair:
        scene_id = scene_id_for(prefix, split, name, a)
        return SourcePair(scene_id, split, name, (a,), (b,), label, root)

    def convert(self, pair: SourcePair, folder: Path) -> ConvertedScene:
        """Write the pair as a pixel-grid scene folder (labels 255 -> 1)."""
        return convert_rgb_pair(pair, folder, self.name)


class LevirCD(_Levir):
    """LEVIR-CD (Chen and Shi 2020): 637 pairs of 1024 px crops, splits train/val/test."""

    name = "levir-cd"
    splits = ("train", "val", "test")
    default_prefix = "levircd-"

    def present_splits(self, root: Path) -> list[str]:
        """Split folders, or split-prefixed names in TorchGeo's flat ``A/``."""
        if (root / "A").is_dir():
            names = [p.name for p in (root / "A").iterdir()]
            return [s for s in self.splits if any(n.startswith(f"{s}_") for n in names)]
        return [s for s in self.splits if (root / s).is_dir()]

    def discover(self, root: Path, splits: Sequence[str], prefix: str) -> list[SourcePair]:
        """Per-split folders, or TorchGeo's flat ``A/B/label`` with split-prefixed names."""
        if all((root / role).is_dir() for role in ("A", "B")):  # TorchGeo's layout
            pairs: list[SourcePair] = []
            folders = {role: root / role for role in FOLDERS}
            for split in splits:
                try:
                    found = pair_folders(root, split, folders, names_prefix=f"{split}_")
                except DatasetImportError as exc:
                    if "no " + split + " image found" in str(exc):
                        raise DatasetImportError(
                            f"{root / 'A'}: no {split}_*.png; the requested split {split!r} "
                            "is missing"
                        ) from exc
                    raise
                pairs += [self._pair(split, prefix, root, *f) for f in found]
            return pairs
        return [p for split in splits for p in self._per_split(root, split, prefix, root)]


class LevirCDPlus(_Levir):
    """LEVIR-CD+ (Shen et al. 2021): 985 pairs of 1024 px crops, splits train/test."""

    name = "levir-cd-plus"
    splits = ("train", "test")
    default_prefix = "levircdplus-"

    def present_splits(self, root: Path) -> list[str]:
        """The split folders in ``LEVIR-CD+`` (or in ROOT)."""
        base = root / "LEVIR-CD+" if (root / "LEVIR-CD+").is_dir() else root
        return [s for s in self.splits if (base / s).is_dir()]

    def discover(self, root: Path, splits: Sequence[str], prefix: str) -> list[SourcePair]:
        """``ROOT/LEVIR-CD+/<split>/{A,B,label}``, or ROOT being ``LEVIR-CD+`` itself."""
        base = root / "LEVIR-CD+" if (root / "LEVIR-CD+").is_dir() else root
        return [p for split in splits for p in self._per_split(base, split, prefix, root)]
