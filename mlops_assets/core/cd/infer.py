"""Sliding-window change prediction over a whole scene, streamed to a GeoTIFF.

Windows overlap and are blended with weights that ramp down over the overlap, so seams vanish.
Rows are predicted one window-row at a time; an accumulator of one window height holds the
weighted sums, and rows no later window touches are finished and written at once. The scene is
read through a `RowBuffer` (each source block decoded once) and normalised one batch of windows
at a time, so memory is a few window-heights of raw rows: it depends on the scene's width and
the window size, not on its height.

The output has the pre image's CRS, transform and size: band 1 is the change probability, band 2
the binary change mask (probability > threshold); nodata (-1) wherever pre or post has none. A
pixel-grid scene's map has no CRS and no geotransform (its ``grid`` tag says so), and its areas
are counted in pixels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from numpy.typing import NDArray
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from torch import nn

from mlops_assets.core.cd.config import InferenceConfig
from mlops_assets.core.cd.raster import (
    AlignedPair,
    RowBuffer,
    overlay_image,
    positions,
    rgb_bands,
    rgb_image,
)
from mlops_assets.core.cd.tiles import BandStats

NODATA = -1.0


@dataclass(frozen=True)
class ChangeMapSummary:
    """What a change map says about its scene."""

    width: int
    height: int
    valid_pixels: int
    changed_pixels: int
    pixel_area_m2: float | None  # None on a pixel grid: areas are in pixels
    f1: float | None  # against the label, where one exists
    precision: float | None
    recall: float | None
    labelled_pixels: int

    @property
    def changed_area_m2(self) -> float | None:
        """Area predicted as changed (None on a pixel grid, which has no ground units)."""
        if self.pixel_area_m2 is None:
            return None
        return self.changed_pixels * self.pixel_area_m2

    @property
    def changed_percent(self) -> float:
        """Share of the valid area predicted as changed, in percent."""
        return 100.0 * self.changed_pixels / max(self.valid_pixels, 1)


def pixel_area_m2(pair: AlignedPair) -> float | None:
    """Ground area of a pixel: exact in a projected CRS, at the scene centre in a geographic one.

    None on a pixel grid (no CRS): there are no ground units.
    """
    if pair.crs is None:
        return None
    t = pair.transform
    area = abs(t.a * t.e - t.b * t.d)
    if pair.crs.is_geographic:
        lat = math.radians(t.f + t.e * pair.height / 2 + t.d * pair.width / 2)
        metres_per_degree = 111_320.0
        return area * metres_per_degree**2 * math.cos(lat)
    _, factor = pair.crs.linear_units_factor
    return area * factor**2


def blend_weights(size: int, overlap: int) -> NDArray[np.float32]:
    """2-D weights: 1 inside, ramping linearly down over ``overlap`` pixels at each edge."""
    ramp = np.ones(size, np.float32)
    if overlap > 0:
        edge = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
        ramp[:overlap] = edge
        ramp[-overlap:] = edge[::-1]
    return np.outer(ramp, ramp)


class ModelMismatchError(ValueError):
    """The model was trained on another number of bands than the scene has."""


def model_in_channels(model: nn.Module) -> int | None:
    """Input channels of the model's first convolution (None if it has none)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if first is None else int(first.in_channels)


def _pad_multiple(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


@torch.no_grad()
def predict_windows(
    model: nn.Module,
    images: NDArray[np.float32],  # [B, 2C, T, T]
    device: torch.device,
    multiple: int,
) -> NDArray[np.float32]:
    """Change probabilities [B, T, T] for a batch of normalised windows (padded as needed)."""
    _, _, h, w = images.shape
    ph, pw = _pad_multiple(h, multiple), _pad_multiple(w, multiple)
    batch = torch.from_numpy(images).to(device)
    if (ph, pw) != (h, w):
        mode = "reflect" if ph - h < h and pw - w < w else "replicate"
        batch = torch.nn.functional.pad(batch, (0, pw - w, 0, ph - h), mode=mode)
    probs = torch.sigmoid(model(batch)[:, 0, :h, :w])
    return probs.float().cpu().numpy()


def predict_scene(
    pair: AlignedPair,
    model: nn.Module,
    pre_stats: BandStats,
    post_stats: BandStats,
    config: InferenceConfig,
    out_path: Path,
    device: torch.device,
    size_multiple: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> ChangeMapSummary:
    """Predict ``pair`` into the GeoTIFF ``out_path``; return what it contains.

    ``progress(windows done, windows in all)`` is called after each row of windows.

    Raises `ModelMismatchError` when the model takes another number of bands than the scene has.
    """
    expected = model_in_channels(model)
    if expected is not None and expected != 2 * pair.count:
        raise ModelMismatchError(
            f"the model takes {expected} input channels ({expected // 2} bands per date) but "
            f"{pair.pre_name} has {pair.count} bands: use a model trained on this sensor"
        )
    model = model.to(device).eval()
    height, width = pair.height, pair.width
    size = min(config.tile_size, height, width)
    overlap = min(config.overlap, size // 2)
    stride = size - overlap
    rows, cols = positions(height, size, stride), positions(width, size, stride)
    weights = blend_weights(size, overlap)
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 2,
        "dtype": "float32",
        "nodata": NODATA,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 3,
    }
    # Rows [acc_start, acc_start + size): each window row starts at acc_start, because the rows
    # above the next window row are written out before it is predicted.
    acc = np.zeros((size, width), np.float32)  # weighted probability sums
    norm = np.zeros((size, width), np.float32)  # weight sums
    valid_acc = np.zeros((size, width), bool)
    label_acc = np.full((size, width), 255, np.uint8)
    acc_start = 0
    count = pair.count
    buffer = RowBuffer(pair)
    valid_pixels = changed_pixels = tp = fp = fn = labelled = 0

    if pair.crs is not None:
        profile.update(crs=pair.crs, transform=pair.transform)
    with warnings.catch_warnings():  # a pixel grid's map has no georeferencing, by design
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        dst = rasterio.open(out_path, "w", **profile)
    with dst:
        dst.descriptions = ("change_probability", "change_mask")
        dst.update_tags(
            threshold=str(config.threshold), grid="pixel" if pair.crs is None else "crs"
        )

        def flush(until: int) -> None:
            """Write rows [acc_start, until) and shift the accumulators."""
            nonlocal acc_start, valid_pixels, changed_pixels, tp, fp, fn, labelled
            n = until - acc_start
            if n <= 0:
                return
            valid = valid_acc[:n]
            out = np.empty((2, n, width), np.float32)  # probability, mask: written as they are
            prob, mask = out
            np.divide(acc[:n], np.maximum(norm[:n], 1e-12), out=prob)
            prob[norm[:n] <= 0] = 0.0
            change = (prob > config.threshold) & valid
            mask[...] = change
            out[:, ~valid] = NODATA
            dst.write(out, window=Window.from_slices((acc_start, until), (0, width)))
            valid_pixels += int(valid.sum())
            changed_pixels += int(change.sum())
            has_label = (label_acc[:n] != 255) & valid
            truth = label_acc[:n] == 1
            tp += int((change & truth & has_label).sum())
            fp += int((change & ~truth & has_label).sum())
            fn += int((~change & truth & has_label).sum())
            labelled += int(has_label.sum())
            for array in (acc, norm, valid_acc, label_acc):
                array[:-n] = array[n:].copy()
            acc[-n:], norm[-n:], valid_acc[-n:], label_acc[-n:] = 0.0, 0.0, False, 255
            acc_start = until

        for i, row in enumerate(rows):
            strip, _ = buffer.ensure(row, size)
            r0 = row - acc_start
            valid_acc[r0 : r0 + size] |= strip.valid
            if strip.label is not None:
                label_acc[r0 : r0 + size] = strip.label
            for start in range(0, len(cols), config.batch_size):
                batch_cols = cols[start : start + config.batch_size]
                # Normalised per batch: the same float32 operations as on the whole strip.
                windows = np.empty((len(batch_cols), 2 * count, size, size), np.float32)
                for k, c in enumerate(batch_cols):
                    valid = strip.valid[:, c : c + size]
                    windows[k, :count] = pre_stats.normalise(strip.pre[:, :, c : c + size], valid)
                    windows[k, count:] = post_stats.normalise(strip.post[:, :, c : c + size], valid)
                probs = predict_windows(model, windows, device, size_multiple)
                for c, prob in zip(batch_cols, probs, strict=True):
                    acc[r0 : r0 + size, c : c + size] += prob * weights
                    norm[r0 : r0 + size, c : c + size] += weights
            next_row = rows[i + 1] if i + 1 < len(rows) else height
            flush(min(next_row, height))
            if progress is not None:
                progress((i + 1) * len(cols), len(rows) * len(cols))

    precision = recall = f1 = None
    if labelled:
        # No change labelled and none predicted is a perfect score, not an undefined one.
        precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
        recall = tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0)
        f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
    return ChangeMapSummary(
        width=width,
        height=height,
        valid_pixels=valid_pixels,
        changed_pixels=changed_pixels,
        pixel_area_m2=pixel_area_m2(pair),
        f1=f1,
        precision=precision,
        recall=recall,
        labelled_pixels=labelled,
    )


def change_overlay(pair: AlignedPair, change_map: Path, max_side: int = 1024) -> Image.Image:
    """The post image (on pre's grid) with predicted change tinted, at most ``max_side`` px."""
    scale = max(pair.width, pair.height) / max_side
    h = max(1, round(pair.height / max(scale, 1)))
    w = max(1, round(pair.width / max(scale, 1)))
    bands = rgb_bands(pair.pre)
    post = pair.post.read(bands, out_shape=(3, h, w))
    valid = pair.post.dataset_mask(out_shape=(h, w)) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(change_map)
    with src:
        mask = src.read(2, out_shape=(h, w))
    return overlay_image(rgb_image(post, valid), mask == 1)
