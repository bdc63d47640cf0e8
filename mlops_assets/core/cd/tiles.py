"""Cutting an aligned scene into training windows, in one streaming pass.

Rows are read once, in strips of one window height, into a rolling buffer; windows are cut from
it, so memory depends on the scene's width and the window size, never on its height. In the same
pass the per-band statistics of each date are accumulated (every valid pixel counted once), the
label balance is counted, and a sample of windows measures how well post is aligned to pre.

A tile set is a directory: ``tiles/<n>.npz`` (``pre`` and ``post`` [C, T, T] in the source dtype,
``valid`` [T, T], ``mask`` [T, T] with 0 / 1 / 255 = ignore), ``preview.png``, and ``index.json``
(written last) with the grid, the statistics that normalise the tiles, and every window's fate.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlops_assets.core.cd.config import TilingConfig, config_hash
from mlops_assets.core.cd.raster import AlignedPair, Strip, positions
from mlops_assets.core.outputs import MARKER

INDEX_VERSION = 1


@dataclass(frozen=True)
class BandStats:
    """Mean and standard deviation of each band over valid pixels."""

    mean: list[float]
    std: list[float]

    def normalise(self, data: NDArray[Any], valid: NDArray[np.bool_]) -> NDArray[np.float32]:
        """``(data - mean) / std`` per band; invalid pixels become 0 (the mean)."""
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        out = (data.astype(np.float32) - mean) / std
        out[:, ~valid] = 0.0
        return out


class _Moments:
    """Streaming per-band sums (float64) for mean and standard deviation."""

    def __init__(self, bands: int) -> None:
        self.n = np.zeros(bands)
        self.total = np.zeros(bands)
        self.total_sq = np.zeros(bands)

    def add(self, data: NDArray[Any], valid: NDArray[np.bool_]) -> None:
        if data.dtype == np.uint8 or data.dtype == np.uint16:
            # Histogram sums are exact and ~9x faster than squaring every pixel in float64
            # (measured: 8.6 ms vs 81 ms per 2048 px strip; the statistics were a third of tiling).
            levels = np.arange(256 if data.dtype == np.uint8 else 65536, dtype=np.float64)
            for band in range(data.shape[0]):
                counts = np.bincount(data[band][valid], minlength=levels.size).astype(np.float64)
                self.n[band] += counts.sum()
                self.total[band] += counts @ levels
                self.total_sq[band] += counts @ (levels * levels)
            return
        values = data[:, valid].astype(np.float64)
        self.n += values.shape[1]
        self.total += values.sum(axis=1)
        self.total_sq += np.square(values).sum(axis=1)

    def stats(self) -> BandStats:
        n = np.maximum(self.n, 1)
        mean = self.total / n
        var = np.maximum(self.total_sq / n - mean**2, 0.0)
        return BandStats([float(m) for m in mean], [float(max(math.sqrt(v), 1e-6)) for v in var])


@dataclass(frozen=True)
class TileRecord:
    """One kept window."""

    name: str
    row: int
    col: int
    nodata_fraction: float
    change_pixels: int
    labelled_pixels: int


@dataclass
class TileIndex:
    """Everything needed to read, normalise and trace a tile set."""

    scene_id: str
    repository: str
    commit_id: str
    sources: dict[str, str]  # role -> commit-pinned URI
    config: dict[str, Any]
    config_hash: str
    crs: str
    transform: list[float]
    width: int
    height: int
    bands: int
    pre_stats: BandStats
    post_stats: BandStats
    windows_total: int
    tiles: list[TileRecord] = field(default_factory=lambda: list[TileRecord]())
    dropped: dict[str, int] = field(default_factory=lambda: dict[str, int]())
    has_label: bool = False
    change_pixels: int = 0
    labelled_pixels: int = 0
    alignment_residual_px: float | None = None
    alignment_samples: int = 0
    version: int = INDEX_VERSION

    @property
    def label_fraction(self) -> float | None:
        """Fraction of labelled pixels that changed (None without a label)."""
        if not self.has_label or self.labelled_pixels == 0:
            return None
        return self.change_pixels / self.labelled_pixels

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TileIndex:
        """Inverse of `to_dict`."""
        values = dict(data)
        values["pre_stats"] = BandStats(**values["pre_stats"])
        values["post_stats"] = BandStats(**values["post_stats"])
        values["tiles"] = [TileRecord(**t) for t in values["tiles"]]
        return cls(**values)

    def save(self, directory: Path) -> Path:
        """Write ``index.json`` (the marker of a complete tile set)."""
        path = directory / MARKER
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, directory: Path) -> TileIndex:
        """Read ``index.json``."""
        return cls.from_dict(json.loads((directory / MARKER).read_text()))


def tile_key(scene_id: str, commit_id: str, config: TilingConfig) -> str:
    """The output key of a tile set: the same inputs always give the same key."""
    return f"cd/tiles/{scene_id}/{commit_id[:16]}-{config_hash(config)}"


# Alignment -----------------------------------------------------------------------------------


def _gradient(image: NDArray[np.float32]) -> NDArray[np.float32]:
    gy, gx = np.gradient(image)
    return np.hypot(gx, gy).astype(np.float32)


UPSAMPLE = 20  # sub-pixel resolution of the alignment estimate: 1/20 px


def _upsampled_correlation(
    spectrum: NDArray[np.complex128], size: int, factor: int, offsets: NDArray[np.float64]
) -> NDArray[np.complex128]:
    """The inverse DFT of ``spectrum`` on a ``size``-point grid, ``factor`` times finer.

    Sampled around ``offsets`` by matrix-multiply DFT: only the neighbourhood of the peak is
    computed, never the whole upsampled array.
    """
    data = spectrum
    for n, offset in zip(spectrum.shape[::-1], offsets[::-1], strict=True):
        kernel = (np.arange(size) - offset)[:, None] * np.fft.fftfreq(n, factor)
        data = np.tensordot(np.exp(2j * np.pi * kernel), data, axes=(1, -1))
    return data


def phase_shift(a: NDArray[np.float32], b: NDArray[np.float32]) -> tuple[float, float]:
    """Sub-pixel (dy, dx) that best moves ``b`` onto ``a``, by cross-correlation in frequency.

    The integer peak of the cross-correlation is refined by an upsampled DFT around
    it (Guizar-Sicairos et al., Opt. Lett. 33, 2008), which has none of the pull towards whole
    pixels that fitting a parabola through three samples has.
    """
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa = np.fft.fft2((a - a.mean()) * window)
    fb = np.fft.fft2((b - b.mean()) * window)
    # Plain (not phase-only) correlation of Hann-windowed gradients: measured on shifted
    # textures, phase-only normalisation pulls the refined peak towards zero by up to 0.1 px.
    cross = fa * np.conj(fb)
    corr = np.fft.ifft2(cross).real
    peak = np.array(np.unravel_index(int(np.argmax(corr)), corr.shape), dtype=np.float64)
    shape = np.array(corr.shape, dtype=np.float64)
    peak[peak > shape // 2] -= shape[peak > shape // 2]
    region = int(np.ceil(UPSAMPLE * 1.5))
    centre = float(region // 2)
    fine = _upsampled_correlation(cross, region, UPSAMPLE, centre - peak * UPSAMPLE)
    best = np.array(np.unravel_index(int(np.argmax(np.abs(fine))), fine.shape), dtype=np.float64)
    shift = peak + (best - centre) / UPSAMPLE
    return float(shift[0]), float(shift[1])


def alignment_residual(
    pre: NDArray[Any], post: NDArray[Any], valid: NDArray[np.bool_]
) -> float | None:
    """Misalignment of one window in pixels, from the gradients of the band means (None if empty).

    Gradients make the estimate insensitive to the radiometric differences between the dates.
    """
    if valid.mean() < 0.9:
        return None
    a = _gradient(pre.astype(np.float32).mean(axis=0))
    b = _gradient(post.astype(np.float32).mean(axis=0))
    dy, dx = phase_shift(a, b)
    return math.hypot(dy, dx)


# Tiling --------------------------------------------------------------------------------------


class _Buffer:
    """The rows of the aligned pair currently in memory."""

    def __init__(self, pair: AlignedPair) -> None:
        self.pair = pair
        self.start = 0
        self.strip: Strip | None = None

    @property
    def end(self) -> int:
        return self.start + (0 if self.strip is None else self.strip.valid.shape[0])

    def ensure(self, row: int, height: int) -> tuple[Strip, Strip | None]:
        """Hold rows ``[row, row + height)``; return the buffer and the newly read rows."""
        if self.strip is not None and row >= self.start and row + height <= self.end:
            return self.strip, None
        keep_from = max(row, self.start)
        fresh_from = max(row, self.end)
        fresh = self.pair.read_rows(fresh_from, row + height - fresh_from)
        if self.strip is None or keep_from >= self.end:
            self.strip, self.start = fresh, row
            return fresh, fresh
        k = keep_from - self.start
        old = self.strip
        label = None
        if old.label is not None and fresh.label is not None:
            label = np.concatenate([old.label[k:], fresh.label])
        self.strip = Strip(
            row,
            np.concatenate([old.pre[:, k:], fresh.pre], axis=1),
            np.concatenate([old.post[:, k:], fresh.post], axis=1),
            np.concatenate([old.valid[k:], fresh.valid]),
            label,
        )
        self.start = row
        return self.strip, fresh


def tile_scene(
    pair: AlignedPair,
    out_dir: Path,
    config: TilingConfig,
    scene_id: str,
    repository: str,
    commit_id: str,
    sources: dict[str, str],
) -> TileIndex:
    """Cut ``pair`` into windows under ``out_dir``; write ``index.json`` last and return it."""
    size, count = config.tile_size, pair.count
    rows = positions(pair.height, size, config.stride)
    cols = positions(pair.width, size, config.stride)
    tiles_dir = out_dir / "tiles"
    tiles_dir.mkdir(parents=True, exist_ok=True)
    pre_moments, post_moments = _Moments(count), _Moments(count)
    windows_total = len(rows) * len(cols)
    sample_every = max(1, windows_total // max(config.alignment_samples, 1))
    residuals: list[float] = []
    records: list[TileRecord] = []
    dropped: dict[str, int] = {}
    change_pixels = labelled_pixels = 0
    buffer = _Buffer(pair)
    window_index = 0
    counted_to = 0  # rows below this are already in the statistics

    for row in rows:
        strip, _ = buffer.ensure(row, size)
        if row + size > counted_to:  # statistics and label balance: each row once
            lo = max(counted_to, row) - buffer.start
            hi = row + size - buffer.start
            valid_rows = strip.valid[lo:hi]
            pre_moments.add(strip.pre[:, lo:hi], valid_rows)
            post_moments.add(strip.post[:, lo:hi], valid_rows)
            if strip.label is not None:
                labelled = (strip.label[lo:hi] != 255) & valid_rows
                labelled_pixels += int(labelled.sum())
                change_pixels += int(((strip.label[lo:hi] == 1) & labelled).sum())
            counted_to = row + size
        r0 = row - buffer.start
        for col in cols:
            window_index += 1
            valid = strip.valid[r0 : r0 + size, col : col + size]
            nodata_fraction = 1.0 - float(valid.mean())
            if nodata_fraction > config.max_nodata_fraction:
                dropped["nodata"] = dropped.get("nodata", 0) + 1
                continue
            pre = strip.pre[:, r0 : r0 + size, col : col + size]
            post = strip.post[:, r0 : r0 + size, col : col + size]
            if strip.label is not None:
                mask = strip.label[r0 : r0 + size, col : col + size].copy()
                mask[~valid] = 255
            else:
                mask = np.full((size, size), 255, np.uint8)
            name = f"{len(records):06d}"
            np.savez(tiles_dir / f"{name}.npz", pre=pre, post=post, valid=valid, mask=mask)
            records.append(
                TileRecord(
                    name=name,
                    row=row,
                    col=col,
                    nodata_fraction=round(nodata_fraction, 4),
                    change_pixels=int((mask == 1).sum()),
                    labelled_pixels=int((mask != 255).sum()),
                )
            )
            if window_index % sample_every == 0 and len(residuals) < config.alignment_samples:
                residual = alignment_residual(pre, post, valid)
                if residual is not None:
                    residuals.append(residual)

    index = TileIndex(
        scene_id=scene_id,
        repository=repository,
        commit_id=commit_id,
        sources=sources,
        config=dataclasses.asdict(config),
        config_hash=config_hash(config),
        crs=pair.crs.to_string(),
        transform=list(pair.transform)[:6],
        width=pair.width,
        height=pair.height,
        bands=count,
        pre_stats=pre_moments.stats(),
        post_stats=post_moments.stats(),
        windows_total=windows_total,
        tiles=records,
        dropped=dropped,
        has_label=pair.label is not None,
        change_pixels=change_pixels,
        labelled_pixels=labelled_pixels,
        alignment_residual_px=round(float(np.median(residuals)), 4) if residuals else None,
        alignment_samples=len(residuals),
    )
    pair.preview().save(out_dir / "preview.png")
    index.save(out_dir)
    return index
