"""Deterministic bi-temporal demo scenes: a pre and a post GeoTIFF and a change label.

A scene is a small synthetic landscape at 2 m resolution, described by vector features in pixel
coordinates of the pre image: fields (a Voronoi partition with per-field crops and row textures),
forest, grassland, water, roads and buildings with shadows. The post date differs in two ways:

* nuisance differences, never labelled: season (crops ripen or are harvested, vegetation dries),
  illumination (per-band gain and offset), haze, sensor noise, a different swath edge (nodata);
* real change, labelled 1 in ``label.tif``: new buildings along new roads, new roads, and forest
  cleared to bare soil.

Rendering works window by window from the vector description, so a ``size=8192`` scene is written
in bounded memory. A spec may put the post image on another grid (CRS and/or resolution); it is
rendered on the pre grid and warped window by window through a `WarpedVRT`.

Four bands (blue, green, red, near infrared), uint16 surface reflectance x 10000, nodata 0; the
label is uint8 (0 no change, 1 change, 255 nodata). All files are tiled and DEFLATE-compressed.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine, from_origin
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform
from rasterio.windows import Window
from scipy.spatial import KDTree

F32 = NDArray[np.float32]
BoolArray = NDArray[np.bool_]

BANDS = ("blue", "green", "red", "nir")
NODATA = 0
LABEL_NODATA = 255
RESOLUTION = 2.0  # metres per pixel of the pre image
# Bumped whenever the same spec and size render different files, so caches keyed by it refresh.
# 2: an old road or roof painted over a new road or clearing is no longer labelled change.
GENERATOR_VERSION = 2

# Land cover classes and their reflectance (blue, green, red, nir) at the two dates.
WATER, FOREST, CROP_A, CROP_B, GRASS, SOIL = range(6)
_PRE_SPECTRA = np.array(
    [
        [0.060, 0.055, 0.030, 0.020],  # water
        [0.030, 0.060, 0.032, 0.340],  # forest
        [0.040, 0.090, 0.050, 0.450],  # crop A (green in the pre season)
        [0.060, 0.100, 0.120, 0.300],  # crop B
        [0.050, 0.100, 0.070, 0.380],  # grass
        [0.100, 0.130, 0.170, 0.240],  # bare soil
    ],
    dtype=np.float32,
)
_POST_SPECTRA = np.array(
    [
        [0.065, 0.060, 0.035, 0.022],  # water
        [0.038, 0.062, 0.050, 0.280],  # forest, autumn
        [0.090, 0.120, 0.130, 0.220],  # crop A harvested
        [0.085, 0.115, 0.130, 0.260],  # crop B ripe
        [0.060, 0.090, 0.085, 0.300],  # grass, drier
        [0.095, 0.125, 0.160, 0.230],  # bare soil
    ],
    dtype=np.float32,
)
_ROAD = np.array([0.090, 0.100, 0.110, 0.130], dtype=np.float32)
_NEW_ROAD = np.array([0.070, 0.080, 0.085, 0.100], dtype=np.float32)  # fresh asphalt
_CLEARED = np.array([0.130, 0.150, 0.190, 0.200], dtype=np.float32)  # soil, slash and tracks
_ROOFS = np.array(
    [
        [0.100, 0.100, 0.250, 0.280],  # red tiles
        [0.200, 0.210, 0.220, 0.240],  # grey concrete
        [0.300, 0.310, 0.320, 0.330],  # bright metal
        [0.080, 0.085, 0.090, 0.110],  # dark shingles
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class CDSceneSpec:
    """How to generate one scene. Counts are per 512 x 512 pixels and scale with area."""

    scene_id: str
    seed: int
    origin: tuple[float, float]  # (easting, northing) of the pre image's top-left corner
    epsg: int = 32633
    cover: tuple[float, float, float, float, float, float] = (0.02, 0.25, 0.25, 0.2, 0.18, 0.1)
    roads: int = 3
    buildings: int = 60
    new_developments: int = 2  # a new road with new buildings along it
    new_buildings_per_development: int = 10
    clearings: int = 2
    post_epsg: int | None = None  # post image on another CRS ...
    post_resolution: float | None = None  # ... and/or another resolution
    pre_date: str = "2024:06:15 10:30:00"
    post_date: str = "2025:09:20 10:45:00"


@dataclass
class _Rect:
    cx: float
    cy: float
    half_w: float
    half_h: float
    angle: float
    roof: int
    new: bool

    def bbox(self) -> tuple[float, float, float, float]:
        r = math.hypot(self.half_w, self.half_h) + 3
        return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)

    def contains(self, xs: F32, ys: F32, dx: float = 0.0, dy: float = 0.0) -> BoolArray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = (xs - self.cx - dx) * c + (ys - self.cy - dy) * s
        v = -(xs - self.cx - dx) * s + (ys - self.cy - dy) * c
        return (np.abs(u) <= self.half_w) & (np.abs(v) <= self.half_h)


@dataclass
class _Road:
    x0: float
    y0: float
    x1: float
    y1: float
    width: float
    new: bool

    def mask(self, xs: F32, ys: F32) -> BoolArray:
        dx, dy = self.x1 - self.x0, self.y1 - self.y0
        length2 = dx * dx + dy * dy
        t = np.clip(((xs - self.x0) * dx + (ys - self.y0) * dy) / length2, 0.0, 1.0)
        px, py = self.x0 + t * dx, self.y0 + t * dy
        return (xs - px) ** 2 + (ys - py) ** 2 <= (self.width / 2) ** 2


@dataclass
class _Ellipse:
    cx: float
    cy: float
    rx: float
    ry: float
    angle: float

    def contains(self, xs: F32, ys: F32, wobble: F32) -> BoolArray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = ((xs - self.cx) * c + (ys - self.cy) * s) / self.rx
        v = (-(xs - self.cx) * s + (ys - self.cy) * c) / self.ry
        return u * u + v * v <= 1.0 + 0.35 * wobble


@dataclass
class _Landscape:
    """The vector description of a scene, in pre-image pixel coordinates."""

    size: int
    seeds: NDArray[np.float64]
    field_class: NDArray[np.int64]
    field_gain: NDArray[np.float32]
    field_angle: NDArray[np.float32]
    tree: KDTree
    roads: list[_Road] = field(default_factory=lambda: list[_Road]())
    rects: list[_Rect] = field(default_factory=lambda: list[_Rect]())
    clearings: list[_Ellipse] = field(default_factory=lambda: list[_Ellipse]())
    swaths: tuple[tuple[float, float, float], ...] = ()
    post_gain: F32 = field(default_factory=lambda: np.ones(4, np.float32))
    post_offset: F32 = field(default_factory=lambda: np.zeros(4, np.float32))


# Procedural noise ----------------------------------------------------------------------------


def _hash(ix: NDArray[np.int64], iy: NDArray[np.int64], seed: int) -> F32:
    """Deterministic pseudo-random values in [0, 1) for integer lattice points."""
    h = (ix.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (
        iy.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    )
    h ^= np.uint64(seed * 0x165667B19E3779F9 & 0xFFFFFFFFFFFFFFFF)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return ((h >> np.uint64(40)).astype(np.float32)) / np.float32(1 << 24)


def _value_noise(xs: F32, ys: F32, scale: float, seed: int) -> F32:
    """Smooth noise in [0, 1) with features about ``scale`` pixels across."""
    gx, gy = xs / scale, ys / scale
    ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    fx, fy = gx - ix, gy - iy
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    v00, v10 = _hash(ix, iy, seed), _hash(ix + 1, iy, seed)
    v01, v11 = _hash(ix, iy + 1, seed), _hash(ix + 1, iy + 1, seed)
    top = v00 + (v10 - v00) * fx
    bottom = v01 + (v11 - v01) * fx
    return (top + (bottom - top) * fy).astype(np.float32)


def _fbm(xs: F32, ys: F32, scale: float, seed: int, octaves: int = 3) -> F32:
    total = np.zeros_like(xs)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        total += amplitude * _value_noise(xs, ys, scale / 2**octave, seed + 101 * octave)
        norm += amplitude
        amplitude *= 0.5
    return (total / norm).astype(np.float32)


# The landscape -------------------------------------------------------------------------------


def _build(spec: CDSceneSpec, size: int) -> _Landscape:
    rng = np.random.default_rng(spec.seed)
    area = (size / 512) ** 2
    n_fields = max(8, round(30 * area))
    seeds = rng.uniform(0, size, (n_fields, 2))
    cover = np.asarray(spec.cover, dtype=np.float64)
    field_class = rng.choice(len(cover), size=n_fields, p=cover / cover.sum())
    land = _Landscape(
        size=size,
        seeds=seeds,
        field_class=field_class,
        field_gain=rng.uniform(0.88, 1.12, n_fields).astype(np.float32),
        field_angle=rng.uniform(0, math.pi, n_fields).astype(np.float32),
        tree=KDTree(seeds),
    )

    def field_at(x: float, y: float) -> int:
        return int(land.field_class[land.tree.query([x, y])[1]])

    def road(new: bool, length: float) -> _Road:
        x0, y0 = rng.uniform(0, size, 2)
        angle = rng.uniform(0, math.pi)
        dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
        return _Road(x0 - dx, y0 - dy, x0 + dx, y0 + dy, float(rng.uniform(3.0, 4.5)), new)

    def houses_along(r: _Road, count: int, new: bool) -> None:
        angle = math.atan2(r.y1 - r.y0, r.x1 - r.x0)
        placed = 0
        for _ in range(count * 6):
            if placed >= count:
                break
            t = rng.uniform(0.05, 0.95)
            side = rng.choice([-1.0, 1.0])
            hw, hh = rng.uniform(4.0, 8.0), rng.uniform(3.5, 6.0)
            offset = r.width / 2 + hh + rng.uniform(2.5, 6.0)
            cx = r.x0 + t * (r.x1 - r.x0) - side * math.sin(angle) * offset
            cy = r.y0 + t * (r.y1 - r.y0) + side * math.cos(angle) * offset
            if not (10 < cx < size - 10 and 10 < cy < size - 10):
                continue
            if field_at(cx, cy) == WATER:
                continue
            candidate = _Rect(cx, cy, hw, hh, angle, int(rng.integers(len(_ROOFS))), new)
            if any(math.hypot(cx - o.cx, cy - o.cy) < hw + o.half_w + 3 for o in land.rects):
                continue
            land.rects.append(candidate)
            placed += 1

    for _ in range(max(1, round(spec.roads * math.sqrt(area)))):
        existing = road(False, size * rng.uniform(0.9, 1.6))
        land.roads.append(existing)
    per_road = round(spec.buildings * area / max(1, len(land.roads)))
    for existing in list(land.roads):
        houses_along(existing, per_road, new=False)
    for _ in range(max(1, round(spec.new_developments * area)) if spec.new_developments else 0):
        new_road = road(True, size * rng.uniform(0.25, 0.45))
        land.roads.append(new_road)
        houses_along(new_road, spec.new_buildings_per_development, new=True)
    forest_seeds = seeds[field_class == FOREST]
    for _ in range(max(1, round(spec.clearings * area)) if spec.clearings else 0):
        if len(forest_seeds) == 0:
            break
        cx, cy = forest_seeds[rng.integers(len(forest_seeds))] + rng.normal(0, 8, 2)
        land.clearings.append(
            _Ellipse(
                float(cx),
                float(cy),
                float(rng.uniform(14, 30)),
                float(rng.uniform(10, 22)),
                float(rng.uniform(0, math.pi)),
            )
        )
    # Swath edges: each date misses a wedge along a different border (a*x + b*y < c is nodata).
    edge = size * rng.uniform(0.01, 0.035, 4)
    tilt = rng.uniform(-0.08, 0.08, 4)
    land.swaths = (
        (1.0, tilt[0], edge[0]),  # pre: left border
        (tilt[1], 1.0, edge[1]),  # pre: top border
        (-1.0, tilt[2], -(size - edge[2])),  # post: right border
        (tilt[3], -1.0, -(size - edge[3])),  # post: bottom border
    )
    land.post_gain = rng.uniform(0.88, 1.12, 4).astype(np.float32)
    land.post_offset = (rng.uniform(0.0, 0.012, 4) * np.array([1.6, 1.2, 1.0, 0.6])).astype(
        np.float32
    )
    return land


def _render(
    land: _Landscape, spec: CDSceneSpec, rows: slice, cols: slice
) -> tuple[F32, F32, NDArray[np.uint8], BoolArray, BoolArray]:
    """Reflectance at both dates, the label and both validity masks for one window."""
    ys, xs = np.mgrid[rows, cols].astype(np.float32)
    xs += 0.5
    ys += 0.5
    shape = xs.shape
    nearest = land.tree.query(np.stack([xs.ravel(), ys.ravel()], axis=1))[1].reshape(shape)
    cls = land.field_class[nearest]
    gain = land.field_gain[nearest]
    angle = land.field_angle[nearest]

    # Ground texture: shared by both dates (it is the same ground).
    crowns = _fbm(xs, ys, 6.0, spec.seed + 1)
    patches = _fbm(xs, ys, 60.0, spec.seed + 2)
    rows_phase = (xs * np.cos(angle) + ys * np.sin(angle)) * (2 * math.pi / 5.0)
    stripes = 0.5 + 0.5 * np.sin(rows_phase)
    texture = np.ones(shape, np.float32)
    texture = np.where(cls == FOREST, 0.65 + 0.7 * crowns, texture)
    texture = np.where((cls == CROP_A) | (cls == CROP_B), 0.9 + 0.2 * stripes, texture)
    texture = np.where(cls == GRASS, 0.85 + 0.3 * patches, texture)
    texture = np.where(cls == SOIL, 0.8 + 0.4 * _fbm(xs, ys, 12.0, spec.seed + 3), texture)
    texture = (texture * gain).astype(np.float32)

    pre = _PRE_SPECTRA[cls] * texture[..., None]
    post = _POST_SPECTRA[cls] * texture[..., None]
    changed = np.zeros(shape, bool)

    wobble = _fbm(xs, ys, 10.0, spec.seed + 4) * 2 - 1
    for ellipse in land.clearings:
        inside = ellipse.contains(xs, ys, wobble) & (cls == FOREST)
        if inside.any():
            soil = _CLEARED * (0.8 + 0.4 * patches[inside])[:, None]
            post[inside] = soil
            changed |= inside

    for road in land.roads:
        on_road = road.mask(xs, ys)
        if not on_road.any():
            continue
        if road.new:
            post[on_road] = _NEW_ROAD
            changed |= on_road
        else:  # painted over whatever came before at both dates: no change shows there
            pre[on_road] = _ROAD
            post[on_road] = _ROAD * 1.02
            changed &= ~on_road

    x0, x1, y0, y1 = cols.start, cols.stop, rows.start, rows.stop
    sun = (2.0, 2.5)  # shadow offset in pixels (sun from the north-west)
    for rect in land.rects:
        bx0, by0, bx1, by1 = rect.bbox()
        if bx1 < x0 or bx0 > x1 or by1 < y0 or by0 > y1:
            continue
        sub = (
            slice(max(0, int(by0) - y0), max(0, min(y1, int(by1) + 4) - y0)),
            slice(max(0, int(bx0) - x0), max(0, min(x1, int(bx1) + 4) - x0)),
        )
        sx, sy = xs[sub], ys[sub]
        roof = rect.contains(sx, sy)
        shadow = rect.contains(sx, sy, *sun) & ~roof
        roof_value = _ROOFS[rect.roof] * (0.95 + 0.1 * crowns[sub][roof])[:, None]
        targets = [post] if rect.new else [pre, post]
        for image in targets:
            view = image[sub]
            view[shadow] *= 0.45
            view[roof] = roof_value
        if rect.new:
            changed[sub] |= roof
        else:  # an old roof hides a new road or clearing under it at both dates
            changed[sub] &= ~roof

    # Sensor and atmosphere: different at each date.
    pre += 0.004 * (_value_noise(xs, ys, 1.0, spec.seed + 10)[..., None] - 0.5)
    post = post * land.post_gain + land.post_offset
    post += 0.004 * (_value_noise(xs, ys, 1.0, spec.seed + 11)[..., None] - 0.5)

    (a0, b0, c0), (a1, b1, c1), (a2, b2, c2), (a3, b3, c3) = land.swaths
    pre_valid = (a0 * xs + b0 * ys >= c0) & (a1 * xs + b1 * ys >= c1)
    post_valid = (a2 * xs + b2 * ys >= c2) & (a3 * xs + b3 * ys >= c3)
    label = changed.astype(np.uint8)
    label[~(pre_valid & post_valid)] = LABEL_NODATA
    return pre.astype(np.float32), post.astype(np.float32), label, pre_valid, post_valid


def _to_dn(reflectance: F32, valid: BoolArray) -> NDArray[np.uint16]:
    dn = np.clip(np.round(reflectance * 10000), 1, 10000).astype(np.uint16)
    dn[~valid] = NODATA
    return np.moveaxis(dn, -1, 0)


def _windows(size: int, block: int) -> Iterator[tuple[slice, slice]]:
    for row in range(0, size, block):
        for col in range(0, size, block):
            yield slice(row, min(size, row + block)), slice(col, min(size, col + block))


def _profile(
    transform: Affine, crs: CRS, width: int, height: int, count: int, dtype: str, nodata: int
) -> dict[str, Any]:
    return {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 2,
        "zlevel": 6,
    }


def write_cd_scene(spec: CDSceneSpec, out_dir: Path, size: int = 512) -> Path:
    """Write ``pre.tif``, ``post.tif`` and ``label.tif`` for ``spec`` into ``out_dir``."""
    if size < 64:
        raise ValueError(f"scene size {size} is too small (at least 64 pixels)")
    out_dir.mkdir(parents=True, exist_ok=True)
    land = _build(spec, size)
    crs = CRS.from_epsg(spec.epsg)
    transform = from_origin(spec.origin[0], spec.origin[1], RESOLUTION, RESOLUTION)
    reprojected = spec.post_epsg is not None or spec.post_resolution is not None
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        post_on_pre_grid = Path(tmp) / "post-pre-grid.tif" if reprojected else out_dir / "post.tif"
        with (
            rasterio.open(
                out_dir / "pre.tif",
                "w",
                **_profile(transform, crs, size, size, 4, "uint16", NODATA),
            ) as pre_dst,
            rasterio.open(
                post_on_pre_grid, "w", **_profile(transform, crs, size, size, 4, "uint16", NODATA)
            ) as post_dst,
            rasterio.open(
                out_dir / "label.tif",
                "w",
                **_profile(transform, crs, size, size, 1, "uint8", LABEL_NODATA),
            ) as label_dst,
        ):
            for rows, cols in _windows(size, 256):
                pre, post, label, pre_valid, post_valid = _render(land, spec, rows, cols)
                window = Window.from_slices(rows, cols)
                pre_dst.write(_to_dn(pre, pre_valid), window=window)
                post_dst.write(_to_dn(post, post_valid), window=window)
                label_dst.write(label[None], window=window)
            for dst, date in ((pre_dst, spec.pre_date), (post_dst, spec.post_date)):
                dst.update_tags(TIFFTAG_DATETIME=date, scene_id=spec.scene_id)
                dst.descriptions = BANDS
            label_dst.update_tags(scene_id=spec.scene_id, classes="0=no change,1=change")
        if reprojected:
            _warp(post_on_pre_grid, out_dir / "post.tif", spec)
    return out_dir


def _warp(src_path: Path, dst_path: Path, spec: CDSceneSpec) -> None:
    """Resample the post image onto its own grid, window by window."""
    with rasterio.open(src_path) as src:
        dst_crs = CRS.from_epsg(spec.post_epsg or spec.epsg)
        resolution = spec.post_resolution or (RESOLUTION if spec.post_epsg is None else None)
        transform, width, height = calculate_default_transform(
            src.crs, dst_crs, src.width, src.height, *src.bounds, resolution=resolution
        )
        assert width is not None and height is not None
        with (
            WarpedVRT(
                src,
                crs=dst_crs,
                transform=transform,
                width=width,
                height=height,
                resampling=Resampling.bilinear,
                src_nodata=NODATA,
                nodata=NODATA,
            ) as vrt,
            rasterio.open(
                dst_path, "w", **_profile(transform, dst_crs, width, height, 4, "uint16", NODATA)
            ) as dst,
        ):
            for row in range(0, height, 256):
                for col in range(0, width, 256):
                    window = Window.from_slices(
                        (row, min(height, row + 256)), (col, min(width, col + 256))
                    )
                    dst.write(vrt.read(window=window), window=window)
            dst.update_tags(**src.tags())
            dst.descriptions = src.descriptions


#: The demo scenes: different landscapes, one with its post image on another grid.
DEMO_CD_SCENES: tuple[CDSceneSpec, ...] = (
    CDSceneSpec(
        scene_id="farmland-north",
        seed=11,
        origin=(452000.0, 5411000.0),
        cover=(0.02, 0.2, 0.3, 0.22, 0.18, 0.08),
    ),
    CDSceneSpec(
        scene_id="suburb-east",
        seed=23,
        origin=(461000.0, 5403000.0),
        cover=(0.0, 0.15, 0.2, 0.15, 0.4, 0.1),
        roads=5,
        buildings=140,
        new_developments=3,
    ),
    CDSceneSpec(
        scene_id="forest-ridge",
        seed=37,
        origin=(447000.0, 5421000.0),
        cover=(0.02, 0.6, 0.1, 0.05, 0.15, 0.08),
        roads=2,
        buildings=25,
        new_developments=1,
        clearings=5,
    ),
    CDSceneSpec(
        scene_id="riverside-utm32",
        seed=41,
        origin=(468000.0, 5398000.0),
        cover=(0.12, 0.25, 0.2, 0.18, 0.17, 0.08),
        buildings=80,
        clearings=3,
        post_epsg=32632,  # the neighbouring UTM zone
        post_resolution=3.0,
    ),
)


#: Demo scenes held out for evaluation: listed in ``eval/scenes.json`` by ``demo-data``, never
#: trained on; champion and challenger are compared on them (`mlops_assets.core.cd.evaluation`).
#: A landscape of its own (mixed farmland and suburb, its own seed), so the comparison is on
#: pixels no model has seen.
DEMO_CD_EVAL_SCENES: tuple[CDSceneSpec, ...] = (
    CDSceneSpec(
        scene_id="valley-eval",
        seed=53,
        origin=(455000.0, 5407000.0),
        cover=(0.04, 0.25, 0.25, 0.18, 0.2, 0.08),
        roads=4,
        buildings=90,
        new_developments=2,
        clearings=3,
    ),
)
