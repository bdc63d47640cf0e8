"""Reading and checking change-detection scenes: a pre and a post GeoTIFF, an optional label.

`read_cd_scene` pins a scene to one commit and describes every file (checksum, size, CRS, bounds,
shape, bands, dtype) without loading rasters into memory; files that are missing or unreadable are
recorded as problems rather than raised, so the checks can report all of them at once.
`check_cd_scene` turns a scene into check outcomes. A scene whose manifest declares a pixel grid
(`mlops_assets.core.scenes.manifest`) may have CRS-less rasters, which must then be the same size.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.io
from numpy.typing import NDArray
from rasterio._err import CPLE_BaseError  # GDAL errors rasterio does not wrap (e.g. PROJ's)
from rasterio.crs import CRS
from rasterio.errors import RasterBlockError
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from mlops_assets.core.scenes.checks import CheckLimits, CheckOutcome, content_hash
from mlops_assets.core.scenes.layout import CDPaths, SceneError
from mlops_assets.core.scenes.manifest import MAX_MANIFEST_BYTES, SceneManifest
from mlops_assets.core.store.base import RasterLocation, VersionedStore
from mlops_assets.core.store.types import CorruptObjectError, NotFoundError, lakefs_uri

FILES_CHECK = "files_present_and_readable"
OVERLAP_CHECK = "footprints_overlap_and_bands_match"


@dataclass(frozen=True)
class RasterInfo:
    """What the pipeline needs to know about one GeoTIFF."""

    path: str
    checksum: str
    size_bytes: int
    crs: str
    bounds: tuple[float, float, float, float]
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    resolution: tuple[float, float]
    block_shape: tuple[int, int]
    compression: str | None
    #: Things the pipeline does differently for this file (float64 read as float32, areas in a
    #: geographic CRS only approximate ...), shown in the asset and check metadata.
    notes: tuple[str, ...] = ()

    @property
    def geographic(self) -> bool:
        """True for a CRS in degrees: areas and distances computed from it are approximate."""
        return bool(self.crs) and CRS.from_string(self.crs).is_geographic

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RasterInfo:
        """The description `to_dict` wrote (JSON turned its tuples into lists)."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for name in ("bounds", "resolution", "block_shape", "notes"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


@dataclass
class DecodeStats:
    """What one decode pass did: windows read, windows skipped as sparse (never written)."""

    windows: int = 0
    sparse_windows: int = 0


BlockVisitor = Callable[[NDArray[Any]], None]


def _sparse(src: rasterio.io.DatasetReader, rows: range, cols: range) -> bool:
    """True when every block of every band in ``rows`` x ``cols`` was never written.

    GDAL answers "no size" for a sparse TIFF block (offset and byte count 0) and fills it with
    nodata (or 0) without reading anything: a pass can skip it too.
    """
    try:
        for band in src.indexes:
            for i in rows:
                for j in cols:
                    if src.block_size(band, i, j) > 0:
                        return False
    except RasterBlockError:
        return True
    return True


def decode_all(
    src: rasterio.io.DatasetReader,
    limits: CheckLimits | None = None,
    visit: BlockVisitor | None = None,
) -> DecodeStats:
    """Decode every full-resolution block, in block-aligned windows of bounded size.

    A window is whole blocks: as many as fit in ``limits.decode_chunk_bytes`` (at least one), so
    memory is bounded by that or by one block, never by the scene's width; windows of blocks that
    were never written (a sparse TIFF) are skipped. ``visit`` sees each decoded window
    ([bands, rows, cols]). A reduced-resolution read is not enough: it may be served from
    (intact) overviews while the full-resolution blocks are broken, as in rasterio's
    ``corrupt.tif``. Raises `ValueError` when the pass runs past ``limits.seconds_per_file``.
    """
    limits = limits or CheckLimits()
    deadline = limits.deadline()
    block_rows, block_cols = (int(n) for n in src.block_shapes[0])
    block_bytes = block_rows * block_cols * src.count * np.dtype(src.dtypes[0]).itemsize
    blocks_across = -(-src.width // block_cols)
    blocks_down = -(-src.height // block_rows)
    per_window = max(1, limits.decode_chunk_bytes // max(block_bytes, 1))
    cols_per = min(blocks_across, per_window)
    rows_per = max(1, per_window // blocks_across) if cols_per == blocks_across else 1
    tiff = src.driver == "GTiff"
    stats = DecodeStats()
    for i0 in range(0, blocks_down, rows_per):
        rows = range(i0, min(i0 + rows_per, blocks_down))
        for j0 in range(0, blocks_across, cols_per):
            cols = range(j0, min(j0 + cols_per, blocks_across))
            stats.windows += 1
            if tiff and _sparse(src, rows, cols):
                stats.sparse_windows += 1
                continue
            window = Window.from_slices(
                (rows.start * block_rows, min(rows.stop * block_rows, src.height)),
                (cols.start * block_cols, min(cols.stop * block_cols, src.width)),
            )
            data = src.read(window=window)
            if visit is not None:
                visit(data)
            if time.monotonic() > deadline:
                raise ValueError(
                    f"decoding took longer than {limits.seconds_per_file:.0f} s "
                    f"(stopped at row {window.row_off} of {src.height})"
                )
    return stats


def crs_problem(crs: CRS | None, pixel_grid: bool = False) -> str | None:
    """Why a raster's CRS cannot place it on the Earth, or None if it can.

    A projected or a geographic CRS can (areas in degrees are approximate: see `RasterInfo`).
    No CRS at all, an engineering (``LOCAL_CS``) or a geocentric one cannot: pre, post and label
    could not be aligned. ``pixel_grid`` scenes (a pair declared to share one pixel grid) need no
    CRS, and skip this rule.
    """
    if pixel_grid:
        return None
    if crs is None or not crs.to_wkt():
        return "has no coordinate reference system (not georeferenced)"
    if crs.is_projected or crs.is_geographic:
        return None
    wkt = crs.to_wkt()
    kind = wkt.split("[", 1)[0]
    what = {
        "LOCAL_CS": "an engineering (local) CRS",
        "ENGCRS": "an engineering (local) CRS",
        "GEOCCS": "a geocentric CRS",
    }.get(kind, f"a {kind} CRS")
    name = wkt.split('"', 2)[1] if wkt.count('"') >= 2 else kind
    return (
        f"its CRS is {what} ({name!r}), which does not place the image on the Earth, so pre, "
        "post and label cannot be aligned; reproject it to a projected (or geographic) CRS"
    )


class _LabelValues:
    """Counts label pixels other than 0, 1 and the declared nodata (255 = ignore in tiles)."""

    def __init__(self, nodata: float | None) -> None:
        self.nodata = nodata
        self.bad = 0
        self.values: set[float] = set()

    def __call__(self, data: NDArray[Any]) -> None:
        band = data[0]
        ok = (band == 0) | (band == 1)
        if self.nodata is not None:
            ok |= np.isnan(band) if math.isnan(self.nodata) else band == self.nodata
        bad = band[~ok]
        if bad.size:
            self.bad += int(bad.size)
            if len(self.values) < 10:
                self.values.update(float(v) for v in np.unique(bad)[:10])

    def problem(self, total: int) -> str | None:
        if not self.bad:
            return None
        shown = ", ".join(f"{v:g}" for v in sorted(self.values)[:8])
        allowed = "0, 1" + (f" and its nodata {self.nodata:g}" if self.nodata is not None else "")
        return (
            f"a change label may only hold {allowed} (declare nodata 255 for pixels to ignore); "
            f"{self.bad:,} of {total:,} pixels hold other values ({shown}"
            f"{' ...' if len(self.values) > 8 else ''})"
        )


def describe_raster(
    src: rasterio.io.DatasetReader,
    path: str,
    checksum: str,
    size: int,
    limits: CheckLimits | None = None,
    *,
    label: bool = False,
    pixel_grid: bool = False,
) -> RasterInfo:
    """Describe an open raster after checking it; raise `ValueError` naming ``path`` if unusable.

    The cheap refusals come first, before a pixel is decoded: the CRS (`crs_problem`), the data
    type (complex is refused), the pixel budget and the block size. Then every block is decoded
    (`decode_all`); a ``label`` must hold only 0, 1 and its declared nodata. Raises
    `rasterio.errors.RasterioError` if a block does not decode.
    """
    limits = limits or CheckLimits()
    crs: CRS | None = src.crs
    problem = crs_problem(crs, pixel_grid)
    if problem is not None:
        raise ValueError(f"{path}: {problem}")
    dtype = np.dtype(src.dtypes[0])
    if dtype.kind == "c":
        raise ValueError(
            f"{path}: complex data type {dtype} is not supported (bands must be real numbers)"
        )
    pixels = src.width * src.height
    if pixels > limits.max_raster_pixels:
        raise ValueError(
            f"{path}: {src.width:,} x {src.height:,} px is {pixels:,} pixels, over the budget of "
            f"{limits.max_raster_pixels:,} (refused before decoding; raise --max-pixels if it "
            "is real)"
        )
    block_rows, block_cols = (int(n) for n in src.block_shapes[0])
    block_bytes = block_rows * block_cols * src.count * dtype.itemsize
    if block_bytes > limits.max_block_bytes:
        raise ValueError(
            f"{path}: its blocks are {block_cols:,} x {block_rows:,} px x {src.count} band(s), "
            f"{block_bytes / 2**20:,.0f} MiB each when decoded, over the "
            f"{limits.max_block_bytes / 2**20:,.0f} MiB a check may decode at once; write it "
            "tiled (e.g. gdal_translate -co TILED=YES)"
        )
    nodata = src.nodata
    values = _LabelValues(None if nodata is None else float(nodata)) if label else None
    decode_all(src, limits, values)
    if values is not None:
        label_problem = values.problem(pixels)
        if label_problem is not None:
            raise ValueError(f"{path}: {label_problem}")
    notes: list[str] = []
    if dtype == np.float64:
        notes.append("float64 bands are read as float32 (about 7 significant digits)")
    if crs is not None and crs.is_geographic:
        notes.append(
            f"geographic CRS ({crs.to_string()}): areas and distances in degrees are approximate"
        )
    return RasterInfo(
        path=path,
        checksum=checksum,
        size_bytes=size,
        crs=crs.to_string() if crs else "",
        bounds=(src.bounds.left, src.bounds.bottom, src.bounds.right, src.bounds.top),
        width=src.width,
        height=src.height,
        count=src.count,
        dtype=str(src.dtypes[0]),
        nodata=None
        if nodata is None or (isinstance(nodata, float) and math.isnan(nodata))
        else float(nodata),
        resolution=(float(src.res[0]), float(src.res[1])),
        block_shape=(block_rows, block_cols),
        compression=src.compression.value if src.compression else None,
        notes=tuple(notes),
    )


def inspect_raster(
    location: RasterLocation,
    path: str,
    checksum: str,
    size: int,
    limits: CheckLimits | None = None,
    *,
    label: bool = False,
    pixel_grid: bool = False,
) -> RasterInfo:
    """Open ``location`` and describe it; raise `ValueError` naming ``path`` if it is unusable.

    GDAL's block cache is held to ``limits.gdal_cache_mb`` meanwhile (its default, 5 % of the
    machine's memory, would let one check grow by gigabytes).
    """
    limits = limits or CheckLimits()
    try:
        with warnings.catch_warnings():
            if pixel_grid:  # declared CRS-less: rasterio's warning says nothing new
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.Env(GDAL_CACHEMAX=limits.gdal_cache_mb), location.open() as src:
                return describe_raster(
                    src, path, checksum, size, limits, label=label, pixel_grid=pixel_grid
                )
    except (rasterio.errors.RasterioError, CPLE_BaseError) as exc:
        raise ValueError(f"{path}: not a readable GeoTIFF ({' '.join(str(exc).split())})") from exc


@dataclass(frozen=True)
class CDScene:
    """A change-detection scene pinned to one commit."""

    scene_id: str
    repository: str
    ref: str
    commit_id: str
    pre: RasterInfo | None = None
    post: RasterInfo | None = None
    label: RasterInfo | None = None
    problems: dict[str, str] = field(default_factory=lambda: dict[str, str]())
    manifest: SceneManifest | None = None  # the scene's scene.json, if it has one
    manifest_checksum: str = ""

    @property
    def grid(self) -> str:
        """``pixel`` when the manifest declares a pixel grid, else ``crs``."""
        return "pixel" if self.manifest is not None and self.manifest.pixel_grid else "crs"

    @property
    def paths(self) -> CDPaths:
        """The scene's object paths."""
        return CDPaths(self.scene_id)

    @property
    def rasters(self) -> list[RasterInfo]:
        """The rasters that were read, in pre/post/label order."""
        return [r for r in (self.pre, self.post, self.label) if r is not None]

    def uri(self, path: str) -> str:
        """A commit-pinned ``lakefs://`` URI."""
        return lakefs_uri(self.repository, self.commit_id, path)

    @property
    def content_hash(self) -> str:
        """A hash of the scene's files only: unchanged when other scenes change."""
        files = [(r.path, r.checksum) for r in self.rasters]
        if self.manifest_checksum:
            files.append((self.paths.manifest, self.manifest_checksum))
        return content_hash(files, self.problems)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable manifest."""
        return {
            "scene_id": self.scene_id,
            "repository": self.repository,
            "ref": self.ref,
            "commit_id": self.commit_id,
            "pre": self.pre.to_dict() if self.pre else None,
            "post": self.post.to_dict() if self.post else None,
            "label": self.label.to_dict() if self.label else None,
            "problems": dict(self.problems),
            "grid": self.grid,
            "manifest": None if self.manifest is None else self.manifest.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CDScene:
        """The scene `to_dict` wrote (the ``cd/scene`` asset's value)."""

        def raster(role: str) -> RasterInfo | None:
            value = data.get(role)
            return None if not value else RasterInfo.from_dict(value)

        manifest = data.get("manifest")
        return cls(
            scene_id=data["scene_id"],
            repository=data["repository"],
            ref=data.get("ref", ""),
            commit_id=data["commit_id"],
            pre=raster("pre"),
            post=raster("post"),
            label=raster("label"),
            problems=dict(data.get("problems") or {}),
            manifest=None if manifest is None else SceneManifest(**manifest),
        )


def read_cd_scene(
    store: VersionedStore,
    ref: str,
    scene_id: str,
    limits: CheckLimits | None = None,
    pixel_grid: bool = False,
) -> CDScene:
    """Pin ``scene_id`` at ``ref`` to a commit and describe its files (within ``limits``)."""
    paths = CDPaths(scene_id)
    commit_id = store.resolve(ref)
    found: dict[str, RasterInfo] = {}
    problems: dict[str, str] = {}
    manifest: SceneManifest | None = None
    manifest_checksum = ""
    try:
        stat = store.stat(commit_id, paths.manifest)
        manifest_checksum = stat.checksum
        if stat.size > MAX_MANIFEST_BYTES:
            problems[paths.manifest] = f"{stat.size} bytes, not a scene manifest (at most 64 KiB)"
        else:
            manifest = SceneManifest.parse(
                store.read_bytes(commit_id, paths.manifest), paths.manifest
            )
    except NotFoundError:
        pass
    except SceneError as exc:
        problems[paths.manifest] = str(exc).removeprefix(f"{paths.manifest}: ")
    pixel_grid = manifest is not None and manifest.pixel_grid
    for role, path, required in (
        ("pre", paths.pre, True),
        ("post", paths.post, True),
        ("label", paths.label, False),
    ):
        try:
            stat = store.stat(commit_id, path)
        except NotFoundError:
            if required:
                problems[path] = f"missing: scene {scene_id!r} has no {role} image"
            continue
        try:
            location = store.raster_location(commit_id, path)  # checks the object's bytes
            found[role] = inspect_raster(
                location,
                path,
                stat.checksum,
                stat.size,
                limits,
                label=role == "label",
                pixel_grid=pixel_grid,
            )
        except (ValueError, CorruptObjectError) as exc:
            problems[path] = str(exc).removeprefix(f"{path}: ")
    return CDScene(
        scene_id=scene_id,
        repository=store.repository,
        ref=ref,
        commit_id=commit_id,
        pre=found.get("pre"),
        post=found.get("post"),
        label=found.get("label"),
        problems=problems,
        manifest=manifest,
        manifest_checksum=manifest_checksum,
    )


def _area(bounds: tuple[float, float, float, float]) -> float:
    return max(0.0, bounds[2] - bounds[0]) * max(0.0, bounds[3] - bounds[1])


def footprint_overlap(pre: RasterInfo, other: RasterInfo) -> float:
    """The fraction of ``pre``'s footprint covered by ``other`` (bounds compared in pre's CRS).

    Raises `ValueError` naming both files when the CRSs cannot be transformed into each other.
    """
    try:
        other_bounds = transform_bounds(
            CRS.from_string(other.crs), CRS.from_string(pre.crs), *other.bounds
        )
    except (rasterio.errors.RasterioError, CPLE_BaseError) as exc:
        raise ValueError(
            f"cannot place {other.path} ({other.crs}) on the grid of {pre.path} ({pre.crs}): "
            f"{' '.join(str(exc).split())[:200]}"
        ) from exc
    inter = (
        max(pre.bounds[0], other_bounds[0]),
        max(pre.bounds[1], other_bounds[1]),
        min(pre.bounds[2], other_bounds[2]),
        min(pre.bounds[3], other_bounds[3]),
    )
    total = _area(pre.bounds)
    return _area(inter) / total if total > 0 else 0.0


def check_cd_scene(scene: CDScene) -> list[CheckOutcome]:
    """The raw-scene checks: files present and readable; footprints overlap; bands match."""
    files = CheckOutcome(
        name=FILES_CHECK,
        passed=not scene.problems,
        description=(
            (
                "pre, post (and label, if any) are present and decode; pixel grid, no CRS"
                if scene.grid == "pixel"
                else "pre, post (and label, if any) are present, decode and are georeferenced"
            )
            if not scene.problems
            else "; ".join(f"{path}: {problem}" for path, problem in sorted(scene.problems.items()))
        ),
        metadata={
            "problems": dict(scene.problems),
            "files": [r.path for r in scene.rasters],
            "notes": {r.path: list(r.notes) for r in scene.rasters if r.notes},
        },
    )
    if scene.pre is None or scene.post is None:
        overlap = CheckOutcome(
            name=OVERLAP_CHECK,
            passed=False,
            description=f"scene {scene.scene_id!r}: cannot compare footprints without pre and post",
        )
        return [files, overlap]
    if scene.grid == "pixel":
        return [files, _check_pixel_grid(scene, scene.pre, scene.post)]
    reasons: list[str] = []
    try:
        fraction = footprint_overlap(scene.pre, scene.post)
    except ValueError as exc:
        reasons.append(str(exc))
        fraction = 0.0
    else:
        if fraction <= 0:
            reasons.append(f"{scene.post.path} does not overlap {scene.pre.path}")
    if scene.pre.count != scene.post.count:
        reasons.append(
            f"band counts differ: {scene.pre.path} has {scene.pre.count}, "
            f"{scene.post.path} has {scene.post.count}"
        )
    metadata: dict[str, Any] = {
        "overlap_fraction": round(fraction, 4),
        "pre_bands": scene.pre.count,
        "post_bands": scene.post.count,
        # Areas (the change map's m², this overlap) come from a CRS in degrees: approximate.
        "areas_approximate": scene.pre.geographic,
    }
    if scene.label is not None:
        if scene.label.count != 1:
            reasons.append(f"{scene.label.path} has {scene.label.count} bands, expected 1")
        try:
            label_fraction = footprint_overlap(scene.pre, scene.label)
        except ValueError as exc:
            reasons.append(str(exc))
        else:
            metadata["label_overlap_fraction"] = round(label_fraction, 4)
            if label_fraction <= 0:
                reasons.append(f"{scene.label.path} does not overlap {scene.pre.path}")
    overlap = CheckOutcome(
        name=OVERLAP_CHECK,
        passed=not reasons,
        description=(
            f"post covers {fraction:.1%} of pre's footprint; {scene.pre.count} bands each"
            if not reasons
            else "; ".join(reasons)
        ),
        metadata=metadata,
    )
    return [files, overlap]


def _check_pixel_grid(scene: CDScene, pre: RasterInfo, post: RasterInfo) -> CheckOutcome:
    """A pixel-grid scene's second check: the same size everywhere, bands match."""
    reasons = [
        f"{other.path} is {other.width}x{other.height} px but {pre.path} is "
        f"{pre.width}x{pre.height} px: a pixel-grid scene needs one size"
        for other in (post, scene.label)
        if other is not None and (other.width, other.height) != (pre.width, pre.height)
    ]
    if pre.count != post.count:
        reasons.append(
            f"band counts differ: {pre.path} has {pre.count}, {post.path} has {post.count}"
        )
    if scene.label is not None and scene.label.count != 1:
        reasons.append(f"{scene.label.path} has {scene.label.count} bands, expected 1")
    return CheckOutcome(
        name=OVERLAP_CHECK,
        passed=not reasons,
        description=(
            f"pixel grid (no CRS): pre, post{' and label' if scene.label else ''} are all "
            f"{pre.width}x{pre.height} px; {pre.count} bands each"
            if not reasons
            else "; ".join(reasons)
        ),
        metadata={"grid": "pixel", "pre_bands": pre.count, "post_bands": post.count},
    )


def validate_local_cd(
    src: Path, limits: CheckLimits | None = None, pixel_grid: bool = False
) -> list[str]:
    """Problems with a local CD scene folder (empty list: ready to ingest)."""
    problems: list[str] = []
    infos: dict[str, RasterInfo] = {}
    for name, required in (("pre.tif", True), ("post.tif", True), ("label.tif", False)):
        path = src / name
        if not path.exists():
            if required:
                problems.append(f"{path}: missing")
            continue
        try:
            infos[name] = inspect_raster(
                RasterLocation(str(path)),
                str(path),
                "",
                path.stat().st_size,
                limits,
                label=name == "label.tif",
                pixel_grid=pixel_grid,
            )
        except ValueError as exc:
            problems.append(str(exc))
    if "pre.tif" in infos and "post.tif" in infos:
        scene = CDScene(
            scene_id="local",
            repository="",
            ref="",
            commit_id="",
            pre=infos["pre.tif"],
            post=infos["post.tif"],
            label=infos.get("label.tif"),
            manifest=SceneManifest(grid="pixel") if pixel_grid else None,
        )
        overlap = check_cd_scene(scene)[1]
        if not overlap.passed:
            problems.append(f"{src}: {overlap.description}")
    return problems
