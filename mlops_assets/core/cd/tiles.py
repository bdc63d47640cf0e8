"""Cutting an aligned scene into training windows, in one streaming pass.

The scene is cut into column bands at most `MAX_BAND_WIDTH` wide (overlapping by what a window
needs). Each band is read once from top to bottom through a `RowBuffer` and windows are cut from
it, so memory depends on the band width and the window size, never on the scene's size. In the
same pass the per-band statistics of each date are accumulated as exact integer sums (every valid
pixel counted once), the label balance is counted, the preview is sampled, and a sample of windows
measures how well post is aligned to pre.

A tile set is a directory: ``tiles/<n>.npz`` (``pre`` and ``post`` [C, T, T] in the source dtype,
``valid`` [T, T], ``mask`` [T, T] with 0 / 1 / 255 = ignore; uncompressed, as `np.load` reads
them), ``preview.png``, and ``index.json`` (written last) with the grid, the statistics that
normalise the tiles, and every window's fate. Tiles are numbered in row-major order of their
windows, whatever order the bands are read in.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from mlops_assets.core.cd.config import TilingConfig, config_hash
from mlops_assets.core.cd.raster import (
    MAX_BAND_WIDTH,
    AlignedPair,
    PreviewSampler,
    RowBuffer,
    positions,
)
from mlops_assets.core.outputs import MARKER

#: 2: alignment from confident phase-correlation windows, padded tiles, the pixel grid.
INDEX_VERSION = 2
#: `TileIndex.grid` of a georeferenced scene, and of a pixel-grid one (`mlops_assets.core.scenes`).
GRID_CRS = "crs"
GRID_PIXEL = "pixel"


@dataclass(frozen=True)
class BandStats:
    """Mean and standard deviation of each band over valid pixels.

    A standard deviation is never below ``floor``: one digital number for integer data, so a
    constant or all-zero band normalises to 0 and a band with a few stray values does not blow
    them up to thousands of standard deviations.
    """

    mean: list[float]
    std: list[float]
    floor: float = 1e-6

    def normalise(self, data: NDArray[Any], valid: NDArray[np.bool_]) -> NDArray[np.float32]:
        """``(data - mean) / std`` per band, within +-`CLIP`; invalid pixels become 0 (the mean)."""
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        out = (data.astype(np.float32) - mean) / std
        np.clip(out, -CLIP, CLIP, out=out)
        out[:, ~valid] = 0.0
        return out


#: Normalised values are clipped to this many standard deviations (outliers, near-constant bands).
CLIP = 50.0
#: Smallest standard deviation of integer data, in digital numbers.
INTEGER_STD_FLOOR = 1.0


#: Pixels per band that `_Moments` squares at a time: its uint32 scratch stays in the L2 cache.
_MOMENT_BLOCK_PIXELS = 2**15


class _Moments:
    """Streaming per-band statistics for mean and standard deviation, in any pixel order.

    For 8- and 16-bit data the count, sum and sum of squares of each band are kept as exact
    integers (squares of 16-bit values fit uint32, sums are uint64 per block and Python integers
    across blocks), so the result does not depend on the order, and the moments are taken once
    at the end and rounded once. The values are squared a few rows at a time, in a cache-sized
    scratch array. Measured in `tile_scene` on the 2048 px bench scene: 41-44 ms for its 48
    strips, against 67-81 ms for per-band histograms (``np.bincount``, which casts to int64
    and adds a 65536-level histogram per call) and 92-117 ms for whole-strip int64 copies.
    Other types keep float64 sums.
    """

    def __init__(self, bands: int) -> None:
        self.bands = bands
        self.exact: tuple[list[int], list[int], list[int]] | None = None  # count, sum, sum sq.
        self.n = np.zeros(bands)
        self.total = np.zeros(bands)
        self.total_sq = np.zeros(bands)
        self.integer = False

    def add(self, data: NDArray[Any], valid: NDArray[np.bool_]) -> None:
        self.integer |= bool(np.issubdtype(data.dtype, np.integer))
        if data.dtype == np.uint8 or data.dtype == np.uint16:
            self._add_exact(data, valid)
            return
        values = data[:, valid].astype(np.float64)
        self.n += values.shape[1]
        self.total += values.sum(axis=1)
        self.total_sq += np.square(values).sum(axis=1)

    def _add_exact(
        self,
        data: NDArray[Any],  # [C, h, w], 8- or 16-bit
        valid: NDArray[np.bool_],  # [h, w]
    ) -> None:
        if self.exact is None:
            self.exact = ([0] * self.bands, [0] * self.bands, [0] * self.bands)
        count, total, total_sq = self.exact
        bands, height, width = data.shape
        step = max(1, _MOMENT_BLOCK_PIXELS // max(width, 1))
        for lo in range(0, height, step):
            block = data[:, lo : lo + step].astype(np.uint32)  # [C, step, w]
            inside = valid[lo : lo + step]
            kept = int(np.count_nonzero(inside))
            if kept != inside.size:
                block[:, ~inside] = 0  # adds nothing to either sum
            sums = block.reshape(bands, -1).sum(axis=1, dtype=np.uint64)
            np.multiply(block, block, out=block)  # at most 65535**2 < 2**32
            squares = block.reshape(bands, -1).sum(axis=1, dtype=np.uint64)
            for band in range(bands):
                count[band] += kept
                total[band] += int(sums[band])
                total_sq[band] += int(squares[band])

    def stats(self) -> BandStats:
        if self.exact is None:
            n = np.maximum(self.n, 1)
            mean = self.total / n
            var = np.maximum(self.total_sq / n - mean**2, 0.0)
            floor = INTEGER_STD_FLOOR if self.integer else 1e-6
            return BandStats(
                [float(m) for m in mean], [float(max(math.sqrt(v), floor)) for v in var], floor
            )
        means: list[float] = []
        stds: list[float] = []
        floor = INTEGER_STD_FLOOR
        for count, total, total_sq in zip(*self.exact, strict=True):
            n = max(count, 1)
            means.append(total / n)  # Python integers: exact, then rounded once
            stds.append(max(math.sqrt(max((total_sq * n - total * total) / (n * n), 0.0)), floor))
        return BandStats(means, stds, floor)


def scene_stats(pair: AlignedPair, rows: int = 256) -> tuple[BandStats, BandStats]:
    """Pre and post statistics over the pixels valid in both, as `tile_scene` computes them.

    For a scene that has no tile index (an evaluation scene, a pair given to ``predict``): the
    same streaming moments over the same pixels, so the same numbers, ``rows`` rows at a time.
    """
    pre_moments, post_moments = _Moments(pair.count), _Moments(pair.count)
    for strip in pair.strips(rows):
        pre_moments.add(strip.pre, strip.valid)
        post_moments.add(strip.post, strip.valid)
    return pre_moments.stats(), post_moments.stats()


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
    alignment_residual_px: float | None = None  # median shift of the confident windows
    alignment_samples: int = 0  # confident windows: those that voted
    alignment_dy: float | None = None
    alignment_dx: float | None = None
    alignment_windows: list[AlignmentWindow] = field(
        default_factory=lambda: list[AlignmentWindow]()
    )
    padded_tiles: int = 0  # windows reaching past a scene smaller than one window
    grid: str = GRID_CRS  # "crs", or "pixel" for a pixel-grid scene (no CRS, areas in pixels)
    version: int = INDEX_VERSION

    @property
    def constant_bands(self) -> list[int]:
        """1-based bands whose spread is at the floor in either date: constant, or nearly."""
        return [
            band + 1
            for band in range(self.bands)
            if self.pre_stats.std[band] <= self.pre_stats.floor
            or self.post_stats.std[band] <= self.post_stats.floor
        ]

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
        values["alignment_windows"] = [
            AlignmentWindow(**w) for w in values.get("alignment_windows", [])
        ]
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


UPSAMPLE = 20  # sub-pixel resolution of the alignment estimate: 1/20 px
#: Correlation samples within this many pixels of the highest belong to its peak, not to the
#: sidelobes the confidence is measured against.
PEAK_RADIUS = 2
#: The normalised cross-power spectrum is weighted by a Gaussian falling to 1/e at this
#: frequency (cycles per pixel): whitening gives noise the same weight as structure, and on
#: real pairs (Sentinel-2 NDVI dates, Landsat) the weighting raised the share of windows with a
#: distinct peak without moving the peaks.
LOWPASS_CUTOFF = 0.25
#: Windows with fewer valid pixels than this share of the window are not measured.
MIN_VALID_FRACTION = 0.9


@dataclass(frozen=True)
class ShiftEstimate:
    """The shift (pixels) that best moves one window onto another, and how sure it is."""

    dy: float
    dx: float
    # Peak-to-sidelobe ratio of the phase-correlation surface: (peak - sidelobe mean) / sidelobe
    # standard deviation. Unrelated real windows (another place, another date) stay mostly
    # under 10; a window matched to a shifted copy of itself reaches hundreds.
    confidence: float

    @property
    def magnitude(self) -> float:
        """Length of the shift."""
        return math.hypot(self.dy, self.dx)


@functools.lru_cache(maxsize=16)
def _dft_kernel(size: int, n: int, factor: int) -> NDArray[np.complex128]:
    """``exp(2 pi i k f)`` for ``size`` fine samples ``k`` and the ``n`` frequencies ``f``."""
    kernel = np.arange(size, dtype=np.float64)[:, None] * np.fft.fftfreq(n, factor)
    return np.exp(2j * np.pi * kernel)


def _upsampled_correlation(
    spectrum: NDArray[np.complex128], size: int, factor: int, offsets: NDArray[np.float64]
) -> NDArray[np.complex128]:
    """The inverse DFT of ``spectrum`` on a ``size``-point grid, ``factor`` times finer.

    Sampled around ``offsets`` by matrix-multiply DFT: only the neighbourhood of the peak is
    computed, never the whole upsampled array. The kernel is a cached part that depends on the
    sizes only, times a phase ramp for the offset.
    """
    data = spectrum
    for n, offset in zip(spectrum.shape[::-1], offsets[::-1], strict=True):
        ramp = np.exp(-2j * np.pi * offset * np.fft.fftfreq(n, factor))
        # einsum, not tensordot: these products are tiny, and BLAS's thread hand-off made them
        # 20-50 ms each on an oversubscribed 2-core machine (measured), against ~1 ms.
        data = np.einsum("ij,...j->i...", _dft_kernel(size, n, factor) * ramp, data)
    return data


@functools.lru_cache(maxsize=16)
def _taper_and_weight(height: int, width: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The Hann taper of a window and the low-pass weight of its spectrum (cached per shape)."""
    taper = np.outer(np.hanning(height), np.hanning(width))
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    return taper, np.exp(-(fy**2 + fx**2) / LOWPASS_CUTOFF**2)


def _peak_to_sidelobe(corr: NDArray[np.float64], peak: tuple[int, int]) -> float:
    """(peak - mean) / std of the surface outside the peak's neighbourhood (0 if flat)."""
    height, width = corr.shape
    rows = np.arange(peak[0] - PEAK_RADIUS, peak[0] + PEAK_RADIUS + 1) % height
    cols = np.arange(peak[1] - PEAK_RADIUS, peak[1] + PEAK_RADIUS + 1) % width
    near = corr[np.ix_(rows, cols)]
    count = corr.size - near.size
    total = float(corr.sum()) - float(near.sum())
    squares = float(np.square(corr).sum()) - float(np.square(near).sum())
    mean = total / count
    variance = squares / count - mean * mean
    if not math.isfinite(variance) or variance <= 1e-30:
        return 0.0
    return float((corr[peak] - mean) / math.sqrt(variance))


def phase_shift(a: NDArray[np.floating[Any]], b: NDArray[np.floating[Any]]) -> ShiftEstimate:
    """The sub-pixel (dy, dx) that best moves ``b`` onto ``a``, and how sure that is.

    Both windows are Hann-tapered; the cross-power spectrum is normalised to unit magnitude
    (phase correlation: insensitive to gain, offset and contrast differences between dates) and
    low-pass weighted. The integer peak is refined by an upsampled DFT around it (Guizar-Sicairos
    et al., Opt. Lett. 33, 2008). The confidence is the peak-to-sidelobe ratio of the surface: a
    window whose content changed, or that has no texture, has no distinct peak.
    """
    height, width = a.shape
    taper, weight = _taper_and_weight(height, width)
    spectra = np.fft.fft2(np.stack([(a - a.mean()) * taper, (b - b.mean()) * taper]))
    cross = spectra[0] * np.conj(spectra[1])
    magnitude = np.abs(cross)
    top = float(magnitude.max())
    if not math.isfinite(top) or top <= 0.0:  # a flat window: nothing to correlate
        return ShiftEstimate(0.0, 0.0, 0.0)
    cross *= weight / np.maximum(magnitude, 1e-9 * top)
    corr = np.fft.ifft2(cross).real
    at = np.unravel_index(int(np.argmax(corr)), corr.shape)
    confidence = _peak_to_sidelobe(corr, (int(at[0]), int(at[1])))
    peak = np.array(at, dtype=np.float64)
    shape = np.array(corr.shape, dtype=np.float64)
    peak[peak > shape // 2] -= shape[peak > shape // 2]
    region = int(np.ceil(UPSAMPLE * 1.5))
    centre = float(region // 2)
    fine = _upsampled_correlation(cross, region, UPSAMPLE, centre - peak * UPSAMPLE)
    best = np.array(np.unravel_index(int(np.argmax(np.abs(fine))), fine.shape), dtype=np.float64)
    shift = peak + (best - centre) / UPSAMPLE
    return ShiftEstimate(float(shift[0]), float(shift[1]), round(confidence, 2))


def _filled(image: NDArray[np.float64], valid: NDArray[np.bool_]) -> NDArray[np.float64]:
    """``image`` with its invalid pixels set to the valid mean (no edge at nodata)."""
    if bool(valid.all()):
        return image
    out = image.copy()
    out[~valid] = float(image[valid].mean())
    return out


def window_shift(
    pre: NDArray[Any],  # [C, h, w]
    post: NDArray[Any],  # [C, h, w]
    valid: NDArray[np.bool_],  # [h, w]
) -> ShiftEstimate | None:
    """The shift of post against pre in one window, on the band means (None: too little data)."""
    if int(np.count_nonzero(valid)) < MIN_VALID_FRACTION * valid.size:
        return None
    return phase_shift(
        _filled(pre.mean(axis=0, dtype=np.float64), valid),
        _filled(post.mean(axis=0, dtype=np.float64), valid),
    )


def alignment_residual(
    pre: NDArray[Any], post: NDArray[Any], valid: NDArray[np.bool_]
) -> float | None:
    """Misalignment of one window in pixels, whatever its confidence (None if too little data)."""
    estimate = window_shift(pre, post, valid)
    return None if estimate is None else estimate.magnitude


@dataclass(frozen=True)
class AlignmentWindow:
    """One measured window: its position, size and shift estimate."""

    row: int
    col: int
    size: int
    dy: float
    dx: float
    confidence: float


def measure_windows(
    pre: NDArray[Any],  # [C, h, w]: one tile's pixels inside the scene
    post: NDArray[Any],  # [C, h, w]
    valid: NDArray[np.bool_],  # [h, w]
    row: int,
    col: int,
    size: int,
) -> list[AlignmentWindow]:
    """Shift estimates in windows of ``size`` px overlapping by half, covering one tile.

    A tile (or part in the scene) smaller than ``size`` is measured as one window of its
    smaller side.
    """
    height, width = valid.shape
    size = min(size, height, width)
    if size < 8:
        return []
    step = max(size // 2, 1)
    # Band means once per tile, not once per (overlapping) window.
    pre_mean = pre.mean(axis=0, dtype=np.float64)
    post_mean = post.mean(axis=0, dtype=np.float64)
    found: list[AlignmentWindow] = []
    for r in positions(height, size, step):
        for c in positions(width, size, step):
            cut = (slice(r, r + size), slice(c, c + size))
            inside = valid[cut]
            if int(np.count_nonzero(inside)) < MIN_VALID_FRACTION * inside.size:
                continue
            estimate = phase_shift(_filled(pre_mean[cut], inside), _filled(post_mean[cut], inside))
            found.append(
                AlignmentWindow(
                    row + r,
                    col + c,
                    size,
                    round(estimate.dy, 3),
                    round(estimate.dx, 3),
                    estimate.confidence,
                )
            )
    return found


@dataclass(frozen=True)
class AlignmentEstimate:
    """The robust shift of a scene's confident windows."""

    dy: float | None
    dx: float | None
    residual_px: float | None  # length of (dy, dx): the median shift of the confident windows
    confident: int
    measured: int


def combine_windows(windows: list[AlignmentWindow], min_confidence: float) -> AlignmentEstimate:
    """The per-axis median shift of the windows whose confidence reaches ``min_confidence``.

    Windows without a distinct peak (real change, no texture, clouds) do not vote; the median
    keeps a minority of confident but wrong windows from moving the result.
    """
    voting = [w for w in windows if w.confidence >= min_confidence]
    if not voting:
        return AlignmentEstimate(None, None, None, 0, len(windows))
    dy = float(np.median([w.dy for w in voting]))
    dx = float(np.median([w.dx for w in voting]))
    return AlignmentEstimate(
        round(dy, 4), round(dx, 4), round(math.hypot(dy, dx), 4), len(voting), len(windows)
    )


@dataclass(frozen=True)
class AlignmentVerdict:
    """What the alignment check says: ``pass``, ``fail`` or ``inconclusive``, and why."""

    status: Literal["pass", "fail", "inconclusive"]
    description: str


def judge_alignment(index: TileIndex, max_residual_px: float, min_windows: int) -> AlignmentVerdict:
    """Judge a tile set's alignment estimate against a limit.

    Fewer than ``min_windows`` confident windows is inconclusive (the imagery gives no
    trustworthy estimate), never a failure.
    """
    limit = f"limit {max_residual_px} px"
    if not index.tiles:
        return AlignmentVerdict("pass", "no tiles to measure")
    confident, measured = index.alignment_samples, len(index.alignment_windows)
    if index.alignment_residual_px is None or confident < min_windows:
        return AlignmentVerdict(
            "inconclusive",
            f"inconclusive: {confident} of {measured} measured windows have a distinct "
            f"correlation peak (confidence >= {index.config.get('alignment_min_confidence')}), "
            f"fewer than the {min_windows} needed to judge the alignment; not blocking",
        )
    text = (
        f"median shift {index.alignment_residual_px:.3f} px (dy {index.alignment_dy:+.3f}, "
        f"dx {index.alignment_dx:+.3f}) over {confident} of {measured} windows ({limit})"
    )
    if index.alignment_residual_px < max_residual_px:
        return AlignmentVerdict("pass", text)
    return AlignmentVerdict("fail", f"post is misaligned with pre: {text}")


# Tiling --------------------------------------------------------------------------------------


_NPY_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}


def _npy_header(array: NDArray[Any]) -> bytes:
    """The ``.npy`` header of a C-ordered array like ``array`` (cached per dtype and shape)."""
    key = (array.dtype.str, array.shape)
    header = _NPY_HEADERS.get(key)
    if header is None:
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buffer, np.lib.format.header_data_from_array_1_0(np.empty(array.shape, array.dtype))
        )
        header = _NPY_HEADERS[key] = buffer.getvalue()
    return header


def write_npz(path: Path, arrays: Mapping[str, NDArray[Any]]) -> None:
    """What ``np.savez(path, **arrays)`` writes (uncompressed), in one write and reproducibly.

    A stored (uncompressed) ZIP of ``<name>.npy`` members dated 1980-01-01, built in memory and
    written at once. Measured per 4-array tile: 3.0 ms median against 4.2 ms for ``np.savez``,
    whose per-member ``zipfile`` bookkeeping is most of its time.
    """
    parts: list[bytes | memoryview] = []
    directory: list[bytes] = []
    offset = 0
    for key, value in arrays.items():
        array = np.ascontiguousarray(value)
        header = _npy_header(array)
        data = array.reshape(-1).view(np.uint8).data
        crc = zlib.crc32(data, zlib.crc32(header))
        size = len(header) + data.nbytes
        name = f"{key}.npy".encode()
        # Local header: version 2.0, no flags, stored, time 00:00, date 1980-01-01.
        local = struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0x21, crc, size, size, len(name), 0
        )
        directory.append(
            struct.pack(
                "<4s6H3L5H2L",
                *(b"PK\x01\x02", 20, 20, 0, 0, 0, 0x21, crc, size, size, len(name)),
                *(0, 0, 0, 0, 0, offset),
            )
            + name
        )
        parts += [local + name, header, data]
        offset += len(local) + len(name) + size
    central = b"".join(directory)
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(directory), len(directory), len(central), offset, 0
    )
    with path.open("wb") as f:
        f.writelines([*parts, central, end])


@dataclass(frozen=True)
class ColumnBand:
    """Columns ``[lo, hi)`` read together; the windows starting in them; the columns it counts."""

    lo: int
    hi: int
    first: int  # index of its first window column
    cols: list[int]
    own_lo: int  # statistics, labels and preview come from columns [own_lo, own_hi)
    own_hi: int


def tile_positions(length: int, size: int, stride: int) -> list[int]:
    """Window origins along one axis; a single (padded) window when ``length < size``."""
    return positions(length, size, stride) if length >= size else ([0] if length > 0 else [])


def _padded(arrays: dict[str, NDArray[Any]], size: int) -> dict[str, NDArray[Any]]:
    """The arrays of a window that reaches past the scene, padded to ``size``: no data, ignored."""
    fill = {"pre": 0, "post": 0, "valid": False, "mask": 255}
    out: dict[str, NDArray[Any]] = {}
    for key, array in arrays.items():
        full = np.full((*array.shape[:-2], size, size), fill[key], array.dtype)
        full[..., : array.shape[-2], : array.shape[-1]] = array
        out[key] = full
    return out


def column_bands(width: int, cols: list[int], size: int, max_width: int) -> list[ColumnBand]:
    """Split window columns ``cols`` into bands at most ``max_width`` wide (at least one window).

    Each band reads every column its windows need; neighbouring bands' reads overlap by what a
    window straddling them needs, but each column is owned (counted) by exactly one band.
    """
    if not cols:
        return [ColumnBand(0, width, 0, [], 0, width)]
    per = 1  # the most windows whose span fits max_width (at least one)
    while per < len(cols) and cols[per] + size - cols[0] <= max_width:
        per += 1
    groups = -(-len(cols) // per)
    per = -(-len(cols) // groups)  # balance the bands
    starts = list(range(0, len(cols), per))
    bands: list[ColumnBand] = []
    for k, first in enumerate(starts):
        chunk = cols[first : first + per]
        lo, hi = chunk[0], min(chunk[-1] + size, width)  # a padded window stops at the edge
        own_lo = 0 if k == 0 else lo
        own_hi = width if k == len(starts) - 1 else cols[starts[k + 1]]
        bands.append(ColumnBand(lo, hi, first, chunk, own_lo, own_hi))
    return bands


def tile_scene(
    pair: AlignedPair,
    out_dir: Path,
    config: TilingConfig,
    scene_id: str,
    repository: str,
    commit_id: str,
    sources: dict[str, str],
    *,
    band_width: int = MAX_BAND_WIDTH,
) -> TileIndex:
    """Cut ``pair`` into windows under ``out_dir``; write ``index.json`` last and return it.

    A scene narrower or lower than one window still gives windows: they are padded to the
    window size with invalid, ignored pixels (mask 255), and only the scene's own pixels count
    towards the nodata limit. ``band_width`` bounds the columns read at once (the result does
    not depend on it).
    """
    size, count = config.tile_size, pair.count
    rows = tile_positions(pair.height, size, config.stride)
    cols = tile_positions(pair.width, size, config.stride)
    high, wide = min(size, pair.height), min(size, pair.width)  # a window's part in the scene
    tiles_dir = out_dir / "tiles"
    tiles_dir.mkdir(parents=True, exist_ok=True)
    pre_moments, post_moments = _Moments(count), _Moments(count)
    windows_total = len(rows) * len(cols)
    sample_every = max(1, windows_total // max(config.alignment_samples, 1))
    measured: list[tuple[int, list[AlignmentWindow]]] = []  # (row-major window number, windows)
    kept: list[tuple[int, str, TileRecord]] = []  # (row-major window number, file, record)
    dropped: dict[str, int] = {}
    change_pixels = labelled_pixels = 0
    preview = PreviewSampler(pair) if rows else None

    for band in column_bands(pair.width, cols, size, band_width) if rows else []:
        buffer = RowBuffer(pair, band.lo, band.hi - band.lo)
        own = slice(band.own_lo - band.lo, band.own_hi - band.lo)
        for i, row in enumerate(rows):
            strip, fresh = buffer.ensure(row, high)
            if fresh is not None:  # statistics, label balance, preview: each pixel once
                valid_rows = fresh.valid[:, own]
                pre_moments.add(fresh.pre[:, :, own], valid_rows)
                post_moments.add(fresh.post[:, :, own], valid_rows)
                if fresh.label is not None:
                    labelled = (fresh.label[:, own] != 255) & valid_rows
                    labelled_pixels += int(np.count_nonzero(labelled))
                    change_pixels += int(np.count_nonzero((fresh.label[:, own] == 1) & labelled))
                if preview is not None:
                    preview.add(fresh, band.own_lo, band.own_hi)
            for j, col in enumerate(band.cols, start=band.first):
                window_index = i * len(cols) + j + 1
                c = col - band.lo
                valid = strip.valid[:, c : c + wide]
                # count_nonzero, not mean() or sum(): the same integers, without a float or
                # int64 reduction per call (a third of the per-window bookkeeping).
                nodata_fraction = 1.0 - int(np.count_nonzero(valid)) / valid.size
                if nodata_fraction > config.max_nodata_fraction:
                    dropped["nodata"] = dropped.get("nodata", 0) + 1
                    continue
                pre = strip.pre[:, :, c : c + wide]
                post = strip.post[:, :, c : c + wide]
                if strip.label is not None:
                    mask = strip.label[:, c : c + wide].copy()
                    mask[~valid] = 255
                else:
                    mask = np.full((high, wide), 255, np.uint8)
                if window_index % sample_every == 0:
                    windows = measure_windows(pre, post, valid, row, col, config.alignment_window)
                    measured.append((window_index, windows))
                arrays = {"pre": pre, "post": post, "valid": valid, "mask": mask}
                if (high, wide) != (size, size):
                    arrays = _padded(arrays, size)
                # Numbered once every band is done; until then named by the window.
                temporary = f".r{row}-c{col}.npz"
                write_npz(tiles_dir / temporary, arrays)
                record = TileRecord(
                    name="",
                    row=row,
                    col=col,
                    nodata_fraction=round(nodata_fraction, 4),
                    change_pixels=int(np.count_nonzero(mask == 1)),
                    labelled_pixels=int(np.count_nonzero(mask != 255)),
                )
                kept.append((window_index, temporary, record))

    records: list[TileRecord] = []
    for _, temporary, record in sorted(kept, key=lambda k: k[0]):
        name = f"{len(records):06d}"
        (tiles_dir / temporary).replace(tiles_dir / f"{name}.npz")
        records.append(dataclasses.replace(record, name=name))
    # The first samples in row-major order, as a single pass over full-width rows would take.
    sampled = [ws for _, ws in sorted(measured, key=lambda m: m[0])[: config.alignment_samples]]
    windows = [w for ws in sampled for w in ws]
    alignment = combine_windows(windows, config.alignment_min_confidence)

    index = TileIndex(
        scene_id=scene_id,
        repository=repository,
        commit_id=commit_id,
        sources=sources,
        config=dataclasses.asdict(config),
        config_hash=config_hash(config),
        crs="" if pair.crs is None else pair.crs.to_string(),
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
        alignment_residual_px=alignment.residual_px,
        alignment_samples=alignment.confident,
        alignment_dy=alignment.dy,
        alignment_dx=alignment.dx,
        alignment_windows=windows,
        padded_tiles=len(records) if (high, wide) != (size, size) else 0,
        grid=GRID_PIXEL if pair.pixel_grid else GRID_CRS,
    )
    # zlib level 1: the same pixels in half the encoding time (measured: 0.07 s vs 0.13 s).
    image = pair.preview() if preview is None else preview.image()
    image.save(out_dir / "preview.png", compress_level=1)
    index.save(out_dir)
    return index
