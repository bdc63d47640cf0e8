"""Dataset folders in LEVIR-CD, LEVIR-CD+ and OSCD layouts, generated with fixed seeds.

As TorchGeo's own ``tests/data/<dataset>/data.py`` do, the folders are written by code in the
datasets' on-disk layouts (compare ``../shared/data/torchgeo``). The pixels are crops of a real
Landsat scene (rasterio's ``rgb1.tif``) with bright rectangles painted into the later date as new
"buildings", so a model trained on an import has something real to learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from numpy.typing import NDArray
from PIL import Image
from rasterio.transform import from_origin

from mlops_assets_tests.conftest import DATA

OSCD_IMAGES = "Onera Satellite Change Detection dataset - Images"
OSCD_LABELS = {
    "train": "Onera Satellite Change Detection dataset - Train Labels",
    "test": "Onera Satellite Change Detection dataset - Test Labels",
}
#: Sentinel-2 band -> its ground resolution (m); OSCD's ``imgs_*`` hold bands at these.
S2_RESOLUTION = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20,
}  # fmt: skip


def landsat() -> NDArray[np.uint8]:
    """The real RGB image the crops come from, [3, 400, 400]."""
    with rasterio.open(DATA / "rasterio" / "rgb1.tif") as src:
        return src.read()


def crop_pair(
    seed: int, size: int, change: bool = True
) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8]]:
    """(A, B, label) [3, H, W], [3, H, W], [H, W]: a real crop and it with new buildings.

    The label is 255 where a building appeared (LEVIR's encoding).
    """
    rng = np.random.default_rng(seed)
    image = landsat()
    row, col = rng.integers(120, 400 - size - 40, 2)
    a = image[:, row : row + size, col : col + size].copy()
    a[a == 0] = 1  # no nodata in a dataset crop
    b = np.clip(a.astype(np.int16) + rng.integers(-6, 7), 1, 255).astype(np.uint8)
    label = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(2, 5)) if change else 0):
        h, w = rng.integers(size // 8, size // 4, 2)
        y, x = rng.integers(0, size - h, 1)[0], rng.integers(0, size - w, 1)[0]
        b[:, y : y + h, x : x + w] = rng.integers(200, 256, (3, 1, 1))
        label[y : y + h, x : x + w] = 255
    return a, b, label


def save_png(path: Path, array: NDArray[np.uint8]) -> Path:
    """``array`` [3, H, W] (RGB) or [H, W] (grey) as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = array.transpose(1, 2, 0) if array.ndim == 3 else array
    Image.fromarray(np.ascontiguousarray(image)).save(path)
    return path


def make_levircd(
    root: Path,
    layout: str = "splits",
    splits: tuple[str, ...] = ("train", "val", "test"),
    per_split: int = 2,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """A LEVIR-CD folder: ``<split>/{A,B,label}/<split>_<n>.png`` (``layout="splits"``) or
    TorchGeo's ``{A,B,label}/<split>_<n>.png`` (``layout="torchgeo"``)."""
    for s, split in enumerate(splits):
        for n in range(per_split):
            a, b, label = crop_pair(seed + 10 * s + n, size, change=n % 2 == 0 or split == "train")
            base = root / split if layout == "splits" else root
            name = f"{split}_{n + 1}.png"
            save_png(base / "A" / name, a)
            save_png(base / "B" / name, b)
            save_png(base / "label" / name, label)
    return root


def make_levircd_plus(root: Path, per_split: int = 2, size: int = 64, seed: int = 100) -> Path:
    """A LEVIR-CD+ folder: ``LEVIR-CD+/{train,test}/{A,B,label}/<nn>.png``."""
    for s, split in enumerate(("train", "test")):
        for n in range(per_split):
            a, b, label = crop_pair(seed + 10 * s + n, size)
            base = root / "LEVIR-CD+" / split
            save_png(base / "A" / f"{n:02d}.png", a)
            save_png(base / "B" / f"{n:02d}.png", b)
            save_png(base / "label" / f"{n:02d}.png", label)
    return root


def _write_band(
    path: Path, data: NDArray[np.uint16], crs: str | None = None, metres: float = 10.0
) -> None:
    """A single-band uint16 TIFF: without georeferencing (as OSCD's fixtures are, via PIL), or
    in ``crs`` with ``metres`` pixels from one corner (as Sentinel-2 band crops are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if crs is None:
        Image.fromarray(data).save(path)
        return
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[1],
        height=data.shape[0],
        count=1,
        dtype="uint16",
        crs=crs,
        transform=from_origin(600000.0, 5400000.0, metres, metres),
    ) as dst:
        dst.write(data, 1)


def make_oscd(
    root: Path,
    cities: dict[str, str] | None = None,
    size: int = 60,
    seed: int = 0,
    native: bool = True,
    crs: str | None = None,
) -> Path:
    """An OSCD folder: 13 band files per city and date, ``dates.txt`` and ``cm/cm.png``.

    ``native``: bands at their own resolution (60 m bands are ``size / 6`` px), as OSCD's
    ``imgs_*`` folders hold them; else every band at ``size`` px, as TorchGeo's fixtures do.
    ``crs``: the band files are georeferenced in it.
    """
    cities = cities or {"paris": "train", "abudhabi": "train", "lasvegas": "test"}
    for c, (city, split) in enumerate(sorted(cities.items())):
        a, b, label = crop_pair(seed + c, size)
        folder = root / OSCD_IMAGES / city
        for date, image in (("imgs_1_rect", a), ("imgs_2_rect", b)):
            grey = image.astype(np.float64).mean(axis=0)
            for k, (band, metres) in enumerate(S2_RESOLUTION.items()):
                values = (grey * (20 + k) + 300).astype(np.uint16)  # DN-like, per band
                side = size * 10 // metres if native else size
                small = Image.fromarray(values).resize((side, side), Image.Resampling.BOX)
                _write_band(
                    folder / date / f"{band}.tif",
                    np.asarray(small),
                    crs,
                    size * 10 / side,  # the same 10 m x size extent for every band
                )
        (folder / "dates.txt").write_text("date_1: 20161130\ndate_2: 20170829\n")
        save_png(root / OSCD_LABELS[split] / city / "cm" / "cm.png", label)
    return root
