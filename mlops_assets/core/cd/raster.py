"""Reading a pre/post pair on one grid, window by window, in memory independent of scene size.

The post image is resampled onto the pre image's grid through a `WarpedVRT` (CRS, resolution and
extent may differ); GDAL warps only the pixels asked for. A pixel-grid scene (declared so in its
manifest: no CRS, pixels of the same size in both dates) is read as it is, with no warp.
`AlignedPair.strips` yields consecutive row ranges, each read once; `RowBuffer` walks down one
column band of the scene in reads aligned to the source blocks, so each block is decoded once and
a scene of any size streams through a buffer whose size depends only on the band width and the
window. `PreviewSampler` picks a decimated preview out of the same reads, so a preview never
reads the scene a second time.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio.io
from numpy.typing import NDArray
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from mlops_assets.core.store.base import RasterLocation

#: GDAL block cache while a scene is open: a fixed ceiling instead of GDAL's 5% of RAM, which
#: grows with the scene (measured: tiling a 4096 px scene peaked at 581 MB RSS uncapped). Reads
#: are aligned to the source blocks and at most `MAX_BAND_WIDTH` wide, so the cache only has to
#: bridge one read: a 256-row read of a 1024 px band touches about 10 MB of decoded blocks of pre,
#: the warp's source and the warped post. Kept below what a 1024 px scene fills on its own, so
#: tiling it and tiling a 8192 px scene use the same cache (measured peak RSS, 32 MB cap: 156 and
#: 212 MB; 8 MB cap: 147 and 186 MB, with 2048 px bands).
GDAL_CACHE_BYTES = 16 * 2**20

#: Widest column band `RowBuffer` users read at once, in pixels. The buffers are a few hundred rows
#: of this width; bands overlap by a window, so each band edge decodes one block column twice.
MAX_BAND_WIDTH = 1024

#: Most rows `RowBuffer` reads beyond a request, whatever the source's block height.
MAX_CHUNK_ROWS = 512


class AlignmentError(ValueError):
    """A pre/post/label combination that cannot be put on one grid."""


@dataclass(frozen=True)
class Strip:
    """Rows ``[row, row + h)`` of the columns ``[col, col + w)`` of the aligned pair."""

    row: int
    pre: NDArray[Any]  # [C, h, w], the source dtype (float64 read as float32: `read_dtype`)
    post: NDArray[Any]  # [C, h, w], resampled onto pre's grid
    valid: NDArray[np.bool_]  # [h, w]: both images have data
    label: NDArray[np.uint8] | None  # [h, w]: 0, 1, or 255 (no label)
    col: int = 0
    pre_valid: NDArray[np.bool_] | None = None  # [h, w]: pre has data (previews)
    post_valid: NDArray[np.bool_] | None = None  # [h, w]: post has data (previews)

    @property
    def height(self) -> int:
        """Rows held."""
        return int(self.valid.shape[0])

    @property
    def width(self) -> int:
        """Columns held."""
        return int(self.valid.shape[1])

    def rows(self, lo: int, hi: int) -> Strip:
        """Rows ``[lo, hi)`` of the scene (which this strip holds), as views."""
        a, b = lo - self.row, hi - self.row
        return Strip(
            lo,
            self.pre[:, a:b],
            self.post[:, a:b],
            self.valid[a:b],
            None if self.label is None else self.label[a:b],
            self.col,
            None if self.pre_valid is None else self.pre_valid[a:b],
            None if self.post_valid is None else self.post_valid[a:b],
        )


def _nodata_value(src: rasterio.io.DatasetReader | WarpedVRT) -> int | None:
    """The integer nodata value that alone makes ``src``'s mask, else None.

    Where it exists, the mask rasterio's ``dataset_mask`` would compute is "any band differs from
    it", which can be taken from the pixels already read instead of reading them a second time.
    """
    dtypes = set(src.dtypes)
    if len(dtypes) != 1 or not np.issubdtype(np.dtype(dtypes.pop()), np.integer):
        return None
    if any(list(flags) != [MaskFlags.nodata] for flags in src.mask_flag_enums):
        return None
    values = set(src.nodatavals)
    if len(values) != 1:
        return None
    value = values.pop()
    if value is None or not float(value).is_integer():
        return None
    info = np.iinfo(np.dtype(src.dtypes[0]))
    return int(value) if info.min <= value <= info.max else None


def read_dtype(src: rasterio.io.DatasetReader | WarpedVRT) -> np.dtype[Any]:
    """The type the pixels of ``src`` are read as: float64 as float32, anything else as stored.

    Training and inference compute in float32; casting while GDAL reads halves what a strip of
    a float64 scene holds (the raw-scene check notes the cast in its metadata).
    """
    dtype = np.dtype(src.dtypes[0])
    return np.dtype(np.float32) if dtype == np.float64 else dtype


def _mask(
    src: rasterio.io.DatasetReader | WarpedVRT,
    data: NDArray[Any],  # [C, h, w], just read from ``window``
    window: Window,
    nodata: int | None,
    out: NDArray[np.bool_] | None = None,  # [h, w]
) -> NDArray[np.bool_]:
    """Where ``src`` has data in ``window``: from ``data`` when a nodata value makes the mask."""
    mask: NDArray[np.bool_] = np.empty(data.shape[1:], bool) if out is None else out
    if nodata is None:
        np.greater(src.dataset_mask(window=window), 0, out=mask)
        return mask
    np.not_equal(data[0], nodata, out=mask)
    for band in data[1:]:
        mask |= band != nodata
    return mask


def positions(length: int, size: int, stride: int) -> list[int]:
    """Window origins covering ``[0, length)``: every ``stride``, plus one flush with the end."""
    if length < size:
        return []
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


class AlignedPair:
    """An open pre image, the post image warped onto its grid, and an optional label."""

    def __init__(
        self,
        pre: rasterio.io.DatasetReader,
        post: WarpedVRT | rasterio.io.DatasetReader,
        label: rasterio.io.DatasetReader | None,
        names: tuple[str, str, str],
        pixel_grid: bool = False,
    ) -> None:
        self.pre = pre
        self.post = post
        self.label = label
        self.pixel_grid = pixel_grid
        self.pre_name, self.post_name, self.label_name = names
        self._nodata = (
            _nodata_value(pre),
            _nodata_value(post),
            None if label is None else _nodata_value(label),
        )

    @property
    def width(self) -> int:
        """Width of the common grid (pre's)."""
        return int(self.pre.width)

    @property
    def height(self) -> int:
        """Height of the common grid (pre's)."""
        return int(self.pre.height)

    @property
    def count(self) -> int:
        """Bands per image."""
        return int(self.pre.count)

    @property
    def block_height(self) -> int:
        """Rows per block of the pre image (reads aligned to it decode each block once)."""
        return max(1, min(int(self.pre.block_shapes[0][0]), MAX_CHUNK_ROWS))

    @property
    def transform(self) -> Affine:
        """Pre's geotransform."""
        return self.pre.transform

    @property
    def crs(self) -> CRS | None:
        """Pre's CRS (None on a pixel grid)."""
        return None if self.pixel_grid else self.pre.crs

    def read_rows(self, row: int, height: int) -> Strip:
        """Read rows ``[row, row + height)`` of everything, across the whole width."""
        return self.read_window(row, height, 0, self.width)

    def read_window(
        self, row: int, height: int, col: int, width: int, out: Strip | None = None
    ) -> Strip:
        """Read rows ``[row, row + height)`` of columns ``[col, col + width)`` of everything.

        With ``out`` (arrays of exactly that size, ``pre_valid`` and ``post_valid`` included),
        the pixels are read into its arrays and nothing large is allocated.
        """
        window = Window.from_slices((row, row + height), (col, col + width))
        pre_nodata, post_nodata, label_nodata = self._nodata
        pre = self.pre.read(
            window=window, out=None if out is None else out.pre, out_dtype=read_dtype(self.pre)
        )
        post = self.post.read(
            window=window, out=None if out is None else out.post, out_dtype=read_dtype(self.post)
        )
        pre_valid = _mask(self.pre, pre, window, pre_nodata, None if out is None else out.pre_valid)
        post_valid = _mask(
            self.post, post, window, post_nodata, None if out is None else out.post_valid
        )
        valid = np.logical_and(pre_valid, post_valid, out=None if out is None else out.valid)
        label: NDArray[np.uint8] | None = None
        if self.label is not None:
            raw = self.label.read(1, window=window)  # the source type: no clamping on the way
            label = np.empty(raw.shape, np.uint8) if out is None else out.label
            if label is None:
                raise ValueError("out has no label array but the pair has a label")
            np.equal(raw, 1, out=label)  # 1 where changed, else 0
            labelled = _mask(self.label, raw[None], window, label_nodata)
            label[~labelled | ((raw != 0) & (raw != 1))] = 255
        return Strip(row, pre, post, valid, label, col, pre_valid, post_valid)

    def strips(self, rows: int) -> Iterator[Strip]:
        """Consecutive strips of ``rows`` rows (the last may be shorter), each read once."""
        for row in range(0, self.height, rows):
            yield self.read_rows(row, min(rows, self.height - row))

    def preview(self, max_side: int = 384) -> Image.Image:
        """Pre | post | label, side by side, decimated to at most ``max_side`` pixels high.

        This reads the scene again (at a decimated size); `PreviewSampler` builds the same
        panels from reads already made.
        """
        h, w = preview_shape(self.height, self.width, max_side)
        bands = rgb_bands(self.pre)
        panels = [
            rgb_image(
                self.pre.read(bands, out_shape=(3, h, w)),
                self.pre.dataset_mask(out_shape=(h, w)) > 0,
            ),
            rgb_image(
                self.post.read(bands, out_shape=(3, h, w)),
                self.post.dataset_mask(out_shape=(h, w)) > 0,
            ),
        ]
        if self.label is not None:
            raw = self.label.read(1, out_shape=(h, w))
            panels.append(label_image(raw, self.label.dataset_mask(out_shape=(h, w)) > 0))
        return side_by_side(panels)


class RowBuffer:
    """Rows of the columns ``[col, col + width)`` of a pair, read downwards in aligned chunks.

    `ensure` asks for rows ``[row, row + height)`` with ``row`` never decreasing. Rows above
    ``row`` are dropped; missing rows are read up to the next multiple of the pre image's block
    height, so every source block is decoded once and nothing is read twice. The rows live in
    arrays allocated once (``height`` + one block height of rows) and are read into them in
    place: no large array is allocated per read, which keeps the heap from fragmenting as the
    pass goes on. The strips returned are views, valid until the next call.
    """

    def __init__(self, pair: AlignedPair, col: int = 0, width: int | None = None) -> None:
        self.pair = pair
        self.col = col
        self.width = pair.width - col if width is None else width
        self.chunk = pair.block_height
        self.strip: Strip | None = None
        self._store: Strip | None = None  # the arrays the rows live in

    @property
    def end(self) -> int:
        """The row after the last row held (0 before the first read)."""
        return 0 if self.strip is None else self.strip.row + self.strip.height

    def _allocate(self, rows: int) -> Strip:
        pair, shape = self.pair, (rows, self.width)
        return Strip(
            0,
            np.empty((pair.count, *shape), read_dtype(pair.pre)),
            np.empty((pair.count, *shape), read_dtype(pair.post)),
            np.empty(shape, bool),
            None if pair.label is None else np.empty(shape, np.uint8),
            self.col,
            np.empty(shape, bool),
            np.empty(shape, bool),
        )

    def ensure(self, row: int, height: int) -> tuple[Strip, Strip | None]:
        """Rows ``[row, row + height)`` (views), and the rows read for them (None if none were)."""
        want = row + height
        old = self.strip
        if old is not None and row < old.row:
            raise ValueError(f"rows go downwards only: {row} is above {old.row}")
        if old is not None and want <= self.end:
            return old.rows(row, want), None
        start = max(row, self.end)
        stop = min(self.pair.height, max(want, -(-want // self.chunk) * self.chunk))
        keep = self.end - row if old is not None and row < self.end else 0
        store = self._store
        if store is None or store.height < keep + stop - start:
            store = self._allocate(max(keep + stop - start, height + self.chunk))
        if keep and old is not None:  # move the rows still needed to the top of the store
            kept = old.rows(row, self.end)
            for target, source in _pairs(store, kept, keep):
                target[...] = source
        self._store = store
        at = Strip(start, *_fields(store, keep, keep + stop - start, self.col))
        fresh = self.pair.read_window(start, stop - start, self.col, self.width, out=at)
        self.strip = Strip(row, *_fields(store, 0, keep + stop - start, self.col))
        return self.strip.rows(row, want), fresh


def _fields(
    store: Strip, lo: int, hi: int, col: int
) -> tuple[
    NDArray[Any],
    NDArray[Any],
    NDArray[np.bool_],
    NDArray[np.uint8] | None,
    int,
    NDArray[np.bool_] | None,
    NDArray[np.bool_] | None,
]:
    """Rows ``[lo, hi)`` of ``store``'s arrays, as `Strip` takes them after ``row``."""
    view = store.rows(store.row + lo, store.row + hi)
    return view.pre, view.post, view.valid, view.label, col, view.pre_valid, view.post_valid


def _pairs(store: Strip, kept: Strip, rows: int) -> list[tuple[NDArray[Any], NDArray[Any]]]:
    """(the first ``rows`` rows of each of ``store``'s arrays, ``kept``'s same array)."""
    top = store.rows(store.row, store.row + rows)
    pairs = [(top.pre, kept.pre), (top.post, kept.post), (top.valid, kept.valid)]
    for a, b in (
        (top.label, kept.label),
        (top.pre_valid, kept.pre_valid),
        (top.post_valid, kept.post_valid),
    ):
        if a is not None and b is not None:
            pairs.append((a, b))
    return pairs


def preview_shape(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) of a preview: the scene shrunk to at most ``max_side`` on its longer side."""
    scale = max(max(width, height) / max_side, 1)
    return max(1, round(height / scale)), max(1, round(width / scale))


def _nearest(length: int, size: int) -> NDArray[np.intp]:
    """Source index of each of ``size`` samples of ``length`` pixels: GDAL's nearest decimation."""
    return np.minimum(((np.arange(size) + 0.5) * (length / size)).astype(np.intp), length - 1)


def _pick(array: NDArray[Any], rows: NDArray[np.intp], cols: NDArray[np.intp]) -> NDArray[Any]:
    """``array[..., rows, :][..., cols]``: the samples at every (row, col) pair, last two axes."""
    return np.take(np.take(array, rows, axis=-2), cols, axis=-1)


class PreviewSampler:
    """The panels of `AlignedPair.preview`, picked out of strips as a pass reads them.

    Each scene pixel must reach `add` at most once (any order); the image is complete once every
    row and column has.
    """

    def __init__(self, pair: AlignedPair, max_side: int = 384) -> None:
        h, w = preview_shape(pair.height, pair.width, max_side)
        self.rows = _nearest(pair.height, h)
        self.cols = _nearest(pair.width, w)
        self.bands = [b - 1 for b in rgb_bands(pair.pre)]
        self.pre = np.zeros((3, h, w), read_dtype(pair.pre))
        self.post = np.zeros((3, h, w), read_dtype(pair.post))
        self.pre_valid = np.zeros((h, w), bool)
        self.post_valid = np.zeros((h, w), bool)
        self.label = None if pair.label is None else np.full((h, w), 255, np.uint8)

    def add(self, strip: Strip, col_lo: int | None = None, col_hi: int | None = None) -> None:
        """Take the samples in ``strip``, only from columns ``[col_lo, col_hi)`` if given."""
        lo = strip.col if col_lo is None else col_lo
        hi = strip.col + strip.width if col_hi is None else col_hi
        r = slice(*np.searchsorted(self.rows, [strip.row, strip.row + strip.height]))
        c = slice(*np.searchsorted(self.cols, [lo, hi]))
        if r.start == r.stop or c.start == c.stop:
            return
        ri = self.rows[r] - strip.row
        ci = self.cols[c] - strip.col
        # Rows, then columns, then bands: each step copies only what the next needs (indexing
        # the three bands of the whole strip first was 4x slower: 0.52 vs 0.13 ms a strip).
        self.pre[:, r, c] = _pick(strip.pre, ri, ci)[self.bands]
        self.post[:, r, c] = _pick(strip.post, ri, ci)[self.bands]
        if strip.pre_valid is None or strip.post_valid is None:
            raise ValueError("PreviewSampler needs strips read by AlignedPair.read_window")
        self.pre_valid[r, c] = _pick(strip.pre_valid, ri, ci)
        self.post_valid[r, c] = _pick(strip.post_valid, ri, ci)
        if self.label is not None and strip.label is not None:
            self.label[r, c] = _pick(strip.label, ri, ci)

    def image(self) -> Image.Image:
        """Pre | post | label, side by side."""
        panels = [rgb_image(self.pre, self.pre_valid), rgb_image(self.post, self.post_valid)]
        if self.label is not None:
            panels.append(label_image(self.label, np.ones(self.label.shape, bool)))
        return side_by_side(panels)


def _open_pixel_grid(
    stack: contextlib.ExitStack,
    pre: RasterLocation,
    post: RasterLocation,
    label: RasterLocation | None,
    names: tuple[str, str, str],
) -> AlignedPair:
    """A pixel-grid scene: pre, post and label read as they are; all must be the same size."""
    with warnings.catch_warnings():  # no georeferencing is what a pixel grid declares
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        sources = [stack.enter_context(location.open()) for location in (pre, post)]
        if label is not None:
            sources.append(stack.enter_context(label.open()))
    pre_src = sources[0]
    for name, src in zip(names[1:], sources[1:], strict=False):
        if (src.width, src.height) != (pre_src.width, pre_src.height):
            raise AlignmentError(
                f"{name} is {src.width}x{src.height} px but {names[0]} is "
                f"{pre_src.width}x{pre_src.height} px: a pixel-grid scene needs one size"
            )
    if pre_src.count != sources[1].count:
        raise AlignmentError(
            f"{names[0]} has {pre_src.count} bands but {names[1]} has {sources[1].count}"
        )
    label_src = sources[2] if label is not None else None
    if label_src is not None and label_src.count != 1:
        raise AlignmentError(f"{names[2]} has {label_src.count} bands, expected 1")
    return AlignedPair(pre_src, sources[1], label_src, names, pixel_grid=True)


@contextlib.contextmanager
def open_aligned(
    pre: RasterLocation,
    post: RasterLocation,
    label: RasterLocation | None = None,
    resampling: str = "bilinear",
    names: tuple[str, str, str] = ("pre.tif", "post.tif", "label.tif"),
    *,
    pixel_grid: bool = False,
) -> Generator[AlignedPair, None, None]:
    """Open a scene on pre's grid; raise `AlignmentError` naming the file if impossible.

    ``pixel_grid``: the scene declares it has no georeferencing; its rasters are compared
    pixel for pixel and must have the same size.
    """
    with contextlib.ExitStack() as stack:
        # GDAL's block cache defaults to 5% of RAM and would grow with the scene: cap it.
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))
        if pixel_grid:
            yield _open_pixel_grid(stack, pre, post, label, names)
            return
        pre_src = stack.enter_context(pre.open())
        post_src = stack.enter_context(post.open())
        if pre_src.crs is None or post_src.crs is None:
            raise AlignmentError(f"{names[0 if pre_src.crs is None else 1]} has no CRS")
        if pre_src.count != post_src.count:
            raise AlignmentError(
                f"{names[0]} has {pre_src.count} bands but {names[1]} has {post_src.count}"
            )
        post_bounds = transform_bounds(post_src.crs, pre_src.crs, *post_src.bounds)
        overlap_w = min(pre_src.bounds.right, post_bounds[2]) - max(
            pre_src.bounds.left, post_bounds[0]
        )
        overlap_h = min(pre_src.bounds.top, post_bounds[3]) - max(
            pre_src.bounds.bottom, post_bounds[1]
        )
        if overlap_w <= 0 or overlap_h <= 0:
            raise AlignmentError(f"{names[1]} does not overlap {names[0]}: nothing to compare")
        label_src = None
        if label is not None:
            label_src = stack.enter_context(label.open())
            if (label_src.width, label_src.height) != (pre_src.width, pre_src.height) or (
                label_src.crs != pre_src.crs
                or not label_src.transform.almost_equals(pre_src.transform)
            ):
                raise AlignmentError(
                    f"{names[2]} is {label_src.width}x{label_src.height} "
                    f"({label_src.crs}), {names[0]} is {pre_src.width}x{pre_src.height} "
                    f"({pre_src.crs}): the label must be on the pre image's grid"
                )
            if label_src.count != 1:
                raise AlignmentError(f"{names[2]} has {label_src.count} bands, expected 1")
        vrt = stack.enter_context(
            WarpedVRT(
                post_src,
                crs=pre_src.crs,
                transform=pre_src.transform,
                width=pre_src.width,
                height=pre_src.height,
                resampling=Resampling[resampling],
            )
        )
        yield AlignedPair(pre_src, vrt, label_src, names)


# Previews ------------------------------------------------------------------------------------


def rgb_bands(src: rasterio.io.DatasetReader | WarpedVRT) -> list[int]:
    """1-based (red, green, blue) band indexes: band descriptions, else colour interpretation."""
    count = int(src.count)
    if count < 3:
        return [1, 1, 1]
    names = [(d or "").lower() for d in src.descriptions]
    if all(c in names for c in ("red", "green", "blue")):
        return [names.index(c) + 1 for c in ("red", "green", "blue")]
    interp = [ci.name for ci in src.colorinterp]
    if all(c in interp for c in ("red", "green", "blue")):
        return [interp.index(c) + 1 for c in ("red", "green", "blue")]
    return [1, 2, 3]


def rgb_image(bands: NDArray[Any], valid: NDArray[np.bool_]) -> Image.Image:
    """A 2-98 % stretched RGB image of ``bands`` [3, H, W]; nodata is black."""
    data = bands.astype(np.float32)
    out = np.zeros((*data.shape[1:], 3), np.uint8)
    if valid.any():
        for i in range(3):
            lo, hi = np.percentile(data[i][valid], [2, 98])
            out[..., i] = np.clip((data[i] - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(
                np.uint8
            )
    out[~valid] = 0
    return Image.fromarray(out)


def label_image(label: NDArray[Any], valid: NDArray[np.bool_]) -> Image.Image:
    """Change white, no change black, nodata grey."""
    out = np.where(label == 1, 255, 0).astype(np.uint8)
    out[~valid | ((label != 0) & (label != 1))] = 96
    return Image.fromarray(out).convert("RGB")


def overlay_image(
    rgb: Image.Image, change: NDArray[np.bool_], colour: tuple[int, int, int] = (255, 0, 64)
) -> Image.Image:
    """``rgb`` with ``change`` pixels tinted in ``colour``."""
    base = np.asarray(rgb.convert("RGB")).astype(np.float32)
    tint = np.asarray(colour, np.float32)
    base[change] = 0.35 * base[change] + 0.65 * tint
    return Image.fromarray(base.astype(np.uint8))


def side_by_side(panels: list[Image.Image], gap: int = 4) -> Image.Image:
    """Panels in a row on a white background."""
    height = max(p.height for p in panels)
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + gap
    return canvas
