"""A registered model applied to any pre/post pair on disk, as ``cd/change_map`` applies it.

The pair need not be in the store: post is warped onto pre's grid (any CRS or resolution that
overlaps it), or, when neither file has a CRS, compared pixel for pixel (same size required). The
band statistics are computed over the pixels both images have, as the tiles of a stored scene
record them, and the map is predicted by `predict_scene`: the same windows, blending, threshold
and output (a GeoTIFF on pre's grid with probability and mask, plus an overlay PNG).

Nothing is written unless everything succeeds: the map and the overlay are written to hidden
files beside their targets and renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning

from mlops_assets.core.cd.config import InferenceConfig
from mlops_assets.core.cd.infer import (
    ChangeMapSummary,
    ModelMismatchError,
    change_overlay,
    model_in_channels,
    predict_scene,
)
from mlops_assets.core.cd.raster import AlignedPair, open_aligned
from mlops_assets.core.cd.registry import LoadedModel, load_cd_model
from mlops_assets.core.cd.tiles import scene_stats
from mlops_assets.core.store.base import RasterLocation
from mlops_assets.core.tracking import Tracker, TrackingError

_MODEL_RE = re.compile(r"^(?P<name>[^@/\s]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))?$")


class ModelRefError(ValueError):
    """A ``--model`` value that is not ``name@alias`` or ``name/version``."""


@dataclass(frozen=True)
class ModelRef:
    """A registered model by alias (``name@champion``) or version (``name/3``)."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, text: str, default_alias: str = "champion") -> ModelRef:
        """``name``, ``name@alias`` or ``name/version``; a bare name means ``default_alias``."""
        match = _MODEL_RE.match(text.strip())
        if match is None:
            raise ModelRefError(
                f"--model {text!r}: expected NAME@ALIAS (e.g. change-detection-unet@champion) "
                "or NAME/VERSION"
            )
        version = match.group("version")
        alias = match.group("alias") or (None if version else default_alias)
        return cls(match.group("name"), alias, version)

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"


def load_model(tracker: Tracker, ref: ModelRef) -> LoadedModel:
    """The registered model ``ref`` names; `TrackingError` saying what exists when it does not."""
    if ref.alias is not None:
        return load_cd_model(tracker, ref.name, ref.alias)
    from mlflow.exceptions import MlflowException

    from mlops_assets.core.tracking import load_pyfunc

    try:
        version = tracker.client.get_model_version(ref.name, str(ref.version))
    except MlflowException:
        raise TrackingError(f"registered model {ref.name!r} has no version {ref.version}") from None
    python_model = load_pyfunc(tracker, f"models:/{ref.name}/{version.version}")
    return LoadedModel(
        net=python_model.net,
        spec=dict(python_model.spec),
        name=ref.name,
        version=str(version.version),
        run_id=str(version.run_id),
        alias="",
    )


def _has_crs(path: Path) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.crs is not None


@contextlib.contextmanager
def open_pair(pre: Path, post: Path, resampling: str = "bilinear") -> Generator[AlignedPair]:
    """``pre`` and ``post`` on pre's grid (pixel for pixel when neither has a CRS)."""
    pixel_grid = not _has_crs(pre) and not _has_crs(post)
    with open_aligned(
        RasterLocation(str(pre)),
        RasterLocation(str(post)),
        None,
        resampling=resampling,
        names=(str(pre), str(post), ""),
        pixel_grid=pixel_grid,
    ) as pair:
        yield pair


def overlay_path(out: Path) -> Path:
    """Where the overlay of the map ``out`` goes: beside it, ``<stem>.png``."""
    return out.with_suffix(".png")


def inference_config(model: LoadedModel, base: InferenceConfig) -> InferenceConfig:
    """``base`` with the threshold the model was logged with (when it has one)."""
    threshold = model.spec.get("threshold")
    return base if threshold is None else dataclasses.replace(base, threshold=float(threshold))


def predict_pair(
    pre: Path,
    post: Path,
    out: Path,
    model: LoadedModel,
    config: InferenceConfig,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
) -> ChangeMapSummary:
    """Write the change map of ``pre``/``post`` to ``out`` and its overlay beside it.

    Raises `AlignmentError` (no overlap, band counts differ) or `ModelMismatchError` (the model
    takes another number of bands) before anything is written.
    """
    overlay = overlay_path(out)
    if out.resolve() == overlay.resolve() or out.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"{out}: the change map is a GeoTIFF: name it *.tif")
    with open_pair(pre, post) as pair:
        expected = model_in_channels(model.net)
        if expected is not None and expected != 2 * pair.count:
            raise ModelMismatchError(
                f"{pre} has {pair.count} bands but {model.name} v{model.version} takes "
                f"{expected // 2} per image: use a model trained on this sensor"
            )
        pre_stats, post_stats = scene_stats(pair)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_map = out.with_name(f".{out.name}.{os.getpid()}.partial")
        tmp_overlay = overlay.with_name(f".{overlay.name}.{os.getpid()}.partial")
        try:
            summary = predict_scene(
                pair,
                model.net,
                pre_stats,
                post_stats,
                config,
                tmp_map,
                device,
                model.size_multiple,
                progress,
            )
            change_overlay(pair, tmp_map).save(tmp_overlay, format="PNG")
            tmp_map.replace(out)
            tmp_overlay.replace(overlay)
        finally:
            tmp_map.unlink(missing_ok=True)
            tmp_overlay.unlink(missing_ok=True)
    return summary
