"""Helpers for the change-detection core tests: small GeoTIFFs, aligned pairs, tile sets, MLflow.

Everything here is generated: demo scenes come from `mlops_assets.core.demo.cd` (seeded), the
edge cases are written with rasterio from arrays the tests build.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import rasterio
from mlflow.tracking import MlflowClient
from numpy.typing import NDArray
from rasterio.transform import Affine, from_origin
from rasterio.windows import Window
from scipy import ndimage

from mlops_assets.core.cd.config import TilingConfig
from mlops_assets.core.cd.raster import open_aligned
from mlops_assets.core.cd.tiles import TileIndex, tile_scene
from mlops_assets.core.store.base import RasterLocation

#: A commit id as the embedded store writes them (64 hex digits).
COMMIT = "c0ffee0123456789" * 4
#: Pre's grid in the demo scenes' zone: 2 m pixels in UTM 33N.
UTM = "EPSG:32633"


def write_raster(
    path: Path,
    data: NDArray[Any],  # [C, H, W]
    *,
    crs: str | None = UTM,
    transform: Affine | None = None,
    nodata: float | None = 0,
) -> Path:
    """A tiled GeoTIFF holding ``data`` (the transform defaults to 2 m pixels in UTM 33N)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = data.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=data.dtype.name,
        crs=crs,
        transform=transform or from_origin(452000.0, 5411000.0, 2.0, 2.0),
        nodata=nodata,
        tiled=True,
        blockxsize=16 * max(1, min(16, width // 16)),
        blockysize=16 * max(1, min(16, height // 16)),
    ) as dst:
        dst.write(data)
    return path


def window(col: int, row: int, width: int, height: int) -> Window:
    """The window of ``width`` x ``height`` pixels whose top-left pixel is (``col``, ``row``)."""
    return Window.from_slices((row, row + height), (col, col + width))


def read_raster(path: Path) -> tuple[NDArray[Any], dict[str, Any]]:
    """The whole raster and its profile."""
    with rasterio.open(path) as src:
        return src.read(), dict(src.profile)


def crop_scene(folder: Path, out: Path, window: Window) -> Path:
    """Copy ``window`` of a demo scene's pre, post and label into ``out`` (same CRS and grid).

    The demo scenes' post images are on pre's grid unless the spec warps them, so one window fits
    all three files of an unwarped scene.
    """
    out.mkdir(parents=True, exist_ok=True)
    for name in ("pre.tif", "post.tif", "label.tif"):
        with rasterio.open(folder / name) as src:
            write_raster(
                out / name,
                src.read(window=window),
                crs=src.crs.to_string(),
                transform=src.window_transform(window),
                nodata=src.nodata,
            )
    return out


def locations(
    folder: Path, label: bool = True
) -> tuple[RasterLocation, RasterLocation, RasterLocation | None]:
    """Where GDAL reads a scene folder's pre, post and (optionally) label."""
    return (
        RasterLocation(str(folder / "pre.tif")),
        RasterLocation(str(folder / "post.tif")),
        RasterLocation(str(folder / "label.tif")) if label else None,
    )


def tile_folder(
    folder: Path,
    out_dir: Path,
    config: TilingConfig,
    scene_id: str | None = None,
    label: bool = True,
    commit_id: str = COMMIT,
) -> TileIndex:
    """Tile a scene folder as the ``cd/tiles`` asset does (sources are commit-pinned URIs)."""
    scene_id = scene_id or folder.name
    sources = {
        role: f"lakefs://scenes/{commit_id}/cd/{scene_id}/{role}.tif"
        for role in ("pre", "post", *(("label",) if label else ()))
    }
    with open_aligned(*locations(folder, label), resampling=config.resampling) as pair:
        return tile_scene(pair, out_dir, config, scene_id, "scenes", commit_id, sources)


def mlflow_uri(tmp_path_factory: pytest.TempPathFactory, directory: Path) -> str:
    """A fresh SQLite MLflow store in ``directory``.

    A brand-new store runs every schema migration (about 8 s); it is done once per session into
    a template and copied, which gives each test the same empty, fully migrated database.
    """
    template = tmp_path_factory.getbasetemp() / "mlflow-template.db"
    if not template.exists():
        staging = tmp_path_factory.getbasetemp() / f".mlflow-{uuid.uuid4().hex}.db"
        MlflowClient(f"sqlite:///{staging}").search_experiments()
        staging.replace(template)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, directory / "mlflow.db")
    return f"sqlite:///{directory / 'mlflow.db'}"


def textured(shape: tuple[int, int], seed: int, smooth: float = 2.0) -> NDArray[np.float64]:
    """A smooth random texture (Gaussian-filtered white noise), like ground seen from above."""
    noise = np.random.default_rng(seed).normal(size=shape)
    return np.asarray(ndimage.gaussian_filter(noise, smooth, mode="wrap"), np.float64)


def register_tiny_model(
    tracker: Any, name: str, seed: int = 0, tags: dict[str, str] | None = None
) -> tuple[str, str, str]:
    """An untrained tiny 4-band U-Net (seeded) logged in a run and registered.

    Returns the run id, the logged model URI and the version. Weights differ by ``seed``, so two
    versions predict differently; nothing is trained, so this takes about a second.
    """
    import torch

    from mlops_assets.core.cd.config import TrainConfig, preset
    from mlops_assets.core.cd.model import build_unet, model_spec
    from mlops_assets.core.cd.registry import log_cd_model

    config = preset(TrainConfig, "tiny")
    torch.manual_seed(seed)
    trained = SimpleNamespace(model=build_unet(8, config), spec=model_spec(8, config))
    with tracker.run(f"tiny-{seed}", tags or {}) as run_id:
        uri = log_cd_model(tracker, run_id, trained, 0.5)  # type: ignore[arg-type]
    version = tracker.register(name, uri, run_id, {}, f"tiny seed {seed}")
    return run_id, uri, str(version.version)
