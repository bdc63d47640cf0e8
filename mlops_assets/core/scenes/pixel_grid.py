"""Pixel-grid change-detection scenes: writing their rasters and planning their upload.

A pixel-grid scene is declared, never guessed: ``mlops-assets ingest cd --pixel-grid`` and the
dataset importers write a manifest (``scene.json``, `SceneManifest` with ``grid="pixel"``) next
to CRS-less ``pre.tif``/``post.tif``/``label.tif`` of one size. An undeclared GeoTIFF without a
CRS is still refused by the checks.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning

from mlops_assets.core.scenes.checks import CheckLimits
from mlops_assets.core.scenes.folders import folder_check
from mlops_assets.core.scenes.ingest import UploadPlan, plan_upload
from mlops_assets.core.scenes.layout import CDPaths, SceneError, SceneKind
from mlops_assets.core.scenes.manifest import MANIFEST_NAME, SceneManifest

#: Label value for "not labelled": ignored by training and scoring.
LABEL_NODATA = 255


def write_pixel_raster(
    path: Path,
    bands: Sequence[NDArray[Any]],  # each [H, W], one dtype
    *,
    nodata: float | None = None,
    descriptions: Sequence[str] | None = None,
    scales: Sequence[float] | None = None,
    rgb: bool = False,
) -> Path:
    """A tiled, DEFLATE-compressed GeoTIFF without CRS or geotransform, written band by band."""
    height, width = bands[0].shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": len(bands),
        "dtype": bands[0].dtype.name,
        "nodata": nodata,
        "compress": "deflate",
    }
    if width >= 256 and height >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the point of a pixel grid: no georeferencing
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            for index, band in enumerate(bands, start=1):
                dst.write(band, index)
            if descriptions is not None:
                dst.descriptions = tuple(descriptions)
            if scales is not None:
                dst.scales = tuple(scales)
            if rgb and len(bands) == 3:
                dst.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    return path


def plan_pixel_grid_upload(
    src: Path,
    scene_id: str,
    manifest_dir: Path,
    manifest: SceneManifest | None = None,
    *,
    validate: bool = True,
    follow_symlinks: bool = False,
    limits: CheckLimits | None = None,
) -> UploadPlan:
    """The upload of a local pixel-grid scene folder: its rasters and a manifest saying so.

    The folder is planned as any CD scene (`plan_upload`: scene id, symbolic links, checks with
    ``limits``), judged as a pixel grid. The manifest is ``manifest`` if given, else the folder's
    own ``scene.json`` (made a pixel grid), else a fresh one; it is written to ``manifest_dir``
    (the folder is never modified).
    """
    check = folder_check(SceneKind.CD, limits, pixel_grid=True) if validate else None
    plan = plan_upload(SceneKind.CD, src, scene_id, check, follow_symlinks=follow_symlinks)
    if manifest is None:
        manifest = SceneManifest.read(src) or SceneManifest(grid="pixel", source="ingest")
    if not manifest.pixel_grid:
        manifest = SceneManifest(**{**manifest.to_dict(), "grid": "pixel"})
    manifest_dir.mkdir(parents=True, exist_ok=True)
    files = [*plan.files, (manifest.write(manifest_dir), CDPaths(scene_id).manifest)]
    own = (src / MANIFEST_NAME).resolve()
    ignored = [p for p in plan.ignored if p.resolve() != own]
    return UploadPlan(SceneKind.CD, scene_id, files, ignored)


def label_from_values(
    values: NDArray[Any],  # [H, W], any integer type
    name: str,
) -> tuple[NDArray[np.uint8], str]:
    """A stored label (0 no change, 1 change) from a dataset's 0/1 or 0/255 encoding.

    Returns the label and how it was mapped; raises `SceneError` naming ``name`` when the
    values are neither (the other encodings change detection datasets use need a decision).
    """
    present = {int(v) for v in np.unique(values)}
    if present <= {0, 1}:
        return values.astype(np.uint8), "0 no change, 1 change (kept)"
    if present <= {0, 255}:
        return (values == 255).astype(np.uint8), "0 no change, 255 change -> 0, 1"
    shown = ", ".join(str(v) for v in sorted(present)[:6]) + (", ..." if len(present) > 6 else "")
    raise SceneError(f"{name}: label values {shown}; expected 0/1 or 0/255 (0 = no change)")
