"""OSCD, the Onera Satellite Change Detection dataset: 13 Sentinel-2 bands of two dates per city.

Layout read (the one `torchgeo.datasets.OSCD` reads)::

    ROOT/Onera Satellite Change Detection dataset - Images/<city>/imgs_1_rect/B01.tif ... B8A.tif
    ROOT/Onera Satellite Change Detection dataset - Images/<city>/imgs_2_rect/...
    ROOT/Onera Satellite Change Detection dataset - Images/<city>/dates.txt
    ROOT/Onera Satellite Change Detection dataset - Train Labels/<city>/cm/cm.png
    ROOT/Onera Satellite Change Detection dataset - Test Labels/<city>/cm/cm.png

A city's split is the labels folder that holds it. Each date's 13 single-band files are stacked
in TorchGeo's band order (B01..B08, B8A, B09..B12), every band resampled (bilinear) onto the
grid of the largest one, the 10 m bands' grid; the stored values are the dataset's Sentinel-2
L1C digital numbers, and the manifest records ``reflectance_scale`` 1e-4 (reflectance = value x
1e-4; the GeoTIFF bands carry the same scale). When the 10 m band of both dates has the same CRS
and geotransform, the scene keeps that georeferencing; otherwise (TorchGeo's fixtures, bands
written without georeferencing) it is stored on a pixel grid. ``cm.png`` is 0/255 (or 0/1);
stored as 0/1.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
from numpy.typing import NDArray
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

from mlops_assets.core.importers.base import (
    ConvertedScene,
    DatasetFormat,
    DatasetImportError,
    SourcePair,
    check_decodable,
    read_label_image,
    scene_id_for,
)
from mlops_assets.core.scenes.layout import SceneError
from mlops_assets.core.scenes.manifest import SceneManifest
from mlops_assets.core.scenes.pixel_grid import (
    LABEL_NODATA,
    label_from_values,
    write_pixel_raster,
)

IMAGES = "Onera Satellite Change Detection dataset - Images"
LABELS = {
    "train": "Onera Satellite Change Detection dataset - Train Labels",
    "test": "Onera Satellite Change Detection dataset - Test Labels",
}
#: TorchGeo's `OSCD.all_bands` order.
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
#: Sentinel-2 L1C: reflectance = digital number / 10000.
REFLECTANCE_SCALE = 1e-4
_DATE_RE = re.compile(r"^\s*date_([12])\s*:\s*(\d{8})\s*$")


def _dates(path: Path) -> tuple[str, str]:
    """``date_1`` and ``date_2`` of a city's ``dates.txt``."""
    if not path.is_file():
        raise DatasetImportError(f"{path}: missing (OSCD gives each city's two dates there)")
    found: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines()[:20]:
        match = _DATE_RE.match(line)
        if match:
            found[match.group(1)] = match.group(2)
    missing = [k for k in ("1", "2") if k not in found]
    if missing:
        raise DatasetImportError(f"{path}: no date_{missing[0]}: YYYYMMDD line")
    return found["1"], found["2"]


def _band_files(folder: Path) -> tuple[Path, ...]:
    """The 13 band files of one date, in `BANDS` order."""
    if not folder.is_dir():
        raise DatasetImportError(f"{folder}: missing (OSCD needs imgs_1_rect and imgs_2_rect)")
    files: list[Path] = []
    for band in BANDS:
        path = folder / f"{band}.tif"
        if not path.is_file():
            raise DatasetImportError(f"{path}: missing (OSCD needs the 13 bands of each date)")
        files.append(path)
    return tuple(files)


def _open(path: Path) -> Any:
    with warnings.catch_warnings():  # the band files of OSCD's fixtures have no georeferencing
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            return rasterio.open(path)
        except rasterio.errors.RasterioError as exc:
            raise DatasetImportError(f"{path}: not a readable GeoTIFF ({exc})") from exc


def _georeference(path: Path) -> tuple[Any, Any] | None:
    """(CRS, transform) of a band file, None without georeferencing."""
    with _open(path) as src:
        return None if src.crs is None else (src.crs, src.transform)


def _stack(files: Sequence[Path], height: int, width: int) -> list[NDArray[Any]]:
    """Each band file read onto a ``height`` x ``width`` grid (bilinear where it is coarser)."""
    bands: list[NDArray[Any]] = []
    for path in files:
        with _open(path) as src:
            if src.count != 1:
                raise DatasetImportError(f"{path}: {src.count} bands, expected 1")
            try:
                if (src.height, src.width) == (height, width):
                    data = src.read(1)
                else:
                    data = src.read(1, out_shape=(height, width), resampling=Resampling.bilinear)
            except rasterio.errors.RasterioError as exc:
                raise DatasetImportError(f"{path}: does not decode ({exc})") from exc
        bands.append(data)
    dtypes = {b.dtype for b in bands}
    if len(dtypes) > 1:
        common = np.result_type(*dtypes)
        bands = [b.astype(common) for b in bands]
    return bands


def _grid(files: Sequence[Path]) -> tuple[int, int, Path]:
    """(height, width) of the largest band, and that band's file."""
    sizes: list[tuple[int, int, Path]] = []
    for path in files:
        with _open(path) as src:
            check_decodable(path, src.width, src.height)
            sizes.append((int(src.height), int(src.width), path))
    return max(sizes, key=lambda s: s[0] * s[1])


class OSCD(DatasetFormat):
    """OSCD (Daudt et al. 2018): 24 cities, 13 Sentinel-2 bands, splits train (14) and test (10)."""

    name = "oscd"
    splits = ("train", "test")
    default_prefix = "oscd-"

    def present_splits(self, root: Path) -> list[str]:
        """The splits whose labels folder exists."""
        return [s for s in self.splits if (root / LABELS[s]).is_dir()]

    def discover(self, root: Path, splits: Sequence[str], prefix: str) -> list[SourcePair]:
        """Every city of the requested splits' label folders, with its bands and dates."""
        images = root / IMAGES
        if not images.is_dir():
            raise DatasetImportError(f"{images}: missing (is ROOT the unpacked OSCD folder?)")
        pairs: list[SourcePair] = []
        for split in splits:
            labels = root / LABELS[split]
            if not labels.is_dir():
                raise DatasetImportError(
                    f"{labels}: missing; the requested split {split!r} has no labels"
                )
            cities = sorted(p for p in labels.iterdir() if p.is_dir())
            if not cities:
                raise DatasetImportError(f"{labels}: no city folder")
            for city_labels in cities:
                city = city_labels.name
                label = city_labels / "cm" / "cm.png"
                if not label.is_file():
                    raise DatasetImportError(f"{label}: missing (each city's change mask)")
                folder = images / city
                if not folder.is_dir():
                    raise DatasetImportError(f"{folder}: missing; {label} has no images")
                pre = _band_files(folder / "imgs_1_rect")
                post = _band_files(folder / "imgs_2_rect")
                dates = _dates(folder / "dates.txt")
                scene_id = scene_id_for(prefix, split, city, folder)
                pairs.append(SourcePair(scene_id, split, city, pre, post, label, root, dates))
        return pairs

    def convert(self, pair: SourcePair, folder: Path) -> ConvertedScene:
        """Stack and resample both dates onto the 10 m grid; write the scene folder."""
        height, width, reference = _grid(pair.pre + pair.post)
        pre = _stack(pair.pre, height, width)
        post = _stack(pair.post, height, width)
        if pair.label is None:
            raise DatasetImportError(f"{pair.pre[0].parent}: no label")
        raw = read_label_image(pair.label)
        if raw.shape != (height, width):
            raise DatasetImportError(
                f"{pair.label} is {raw.shape[1]}x{raw.shape[0]} px but the bands of "
                f"{reference.parent.parent} are {width}x{height} px"
            )
        try:
            label, encoding = label_from_values(raw, str(pair.label))
        except SceneError as exc:
            raise DatasetImportError(str(exc)) from exc
        geo = [_georeference(files[BANDS.index("B02")]) for files in (pair.pre, pair.post)]
        georeferenced = (
            geo[0] is not None
            and geo[1] is not None
            and geo[0][0] == geo[1][0]
            and geo[0][1].almost_equals(geo[1][1])
            and _grid([files[BANDS.index("B02")] for files in (pair.pre, pair.post)])[:2]
            == (height, width)
        )
        scales = [REFLECTANCE_SCALE] * len(BANDS)
        if georeferenced and geo[0] is not None:
            crs, transform = geo[0]
            for name, bands in (("pre.tif", pre), ("post.tif", post)):
                _write_georeferenced(folder / name, bands, crs, transform, scales)
            _write_georeferenced(folder / "label.tif", [label], crs, transform, None, LABEL_NODATA)
        else:
            for name, bands in (("pre.tif", pre), ("post.tif", post)):
                write_pixel_raster(folder / name, bands, descriptions=BANDS, scales=scales)
            write_pixel_raster(folder / "label.tif", [label], nodata=LABEL_NODATA)
        dates = pair.dates or ("", "")
        SceneManifest(
            grid="crs" if georeferenced else "pixel",
            source=self.name,
            split=pair.split,
            original=pair.originals,
            bands=list(BANDS),
            dates={"pre": dates[0], "post": dates[1]},
            reflectance_scale=REFLECTANCE_SCALE,
            label_encoding=encoding,
        ).write(folder)
        return ConvertedScene(
            scene_id=pair.scene_id,
            split=pair.split,
            folder=folder,
            width=width,
            height=height,
            bands=len(BANDS),
            dtype=pre[0].dtype.name,
            grid="crs" if georeferenced else "pixel",
            changed_pixels=int(np.count_nonzero(label)),
            labelled_pixels=int(label.size),
        )


def _write_georeferenced(
    path: Path,
    bands: Sequence[NDArray[Any]],
    crs: Any,
    transform: Any,
    scales: Sequence[float] | None,
    nodata: float | None = None,
) -> None:
    height, width = bands[0].shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=len(bands),
        dtype=bands[0].dtype.name,
        crs=crs,
        transform=transform,
        nodata=nodata,
        compress="deflate",
    ) as dst:
        for index, band in enumerate(bands, start=1):
            dst.write(band, index)
        if scales is not None:
            dst.scales = tuple(scales)
            dst.descriptions = BANDS
