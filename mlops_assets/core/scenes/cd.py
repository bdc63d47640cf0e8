"""Reading and checking change-detection scenes: a pre and a post GeoTIFF, an optional label.

`read_cd_scene` pins a scene to one commit and describes every file (checksum, size, CRS, bounds,
shape, bands, dtype) without loading rasters into memory; files that are missing or unreadable are
recorded as problems rather than raised, so the checks can report all of them at once.
`check_cd_scene` turns a scene into check outcomes. A scene whose manifest declares a pixel grid
(`mlops_assets.core.scenes.manifest`) may have CRS-less rasters, which must then be the same size.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.io
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from mlops_assets.core.scenes.checks import CheckOutcome, content_hash
from mlops_assets.core.scenes.layout import CDPaths, SceneError
from mlops_assets.core.scenes.manifest import MAX_MANIFEST_BYTES, SceneManifest
from mlops_assets.core.store.base import RasterLocation, VersionedStore
from mlops_assets.core.store.types import NotFoundError, lakefs_uri

#: Bytes decoded per read while proving that a raster decodes end to end.
_DECODE_CHUNK_BYTES = 64 << 20

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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description."""
        return asdict(self)


def decode_all(src: rasterio.io.DatasetReader) -> None:
    """Decode every full-resolution block, in row bands of bounded size.

    A reduced-resolution read is not enough: it may be served from (intact) overviews while the
    full-resolution blocks are broken, as in rasterio's ``corrupt.tif``.
    """
    block_rows = int(src.block_shapes[0][0])
    row_bytes = src.width * src.count * np.dtype(src.dtypes[0]).itemsize
    rows = max(block_rows, _DECODE_CHUNK_BYTES // max(row_bytes, 1) // block_rows * block_rows)
    for row in range(0, src.height, rows):
        src.read(window=Window.from_slices((row, min(row + rows, src.height)), (0, src.width)))


def describe_raster(
    src: rasterio.io.DatasetReader, path: str, checksum: str, size: int
) -> RasterInfo:
    """Describe an open raster; raise `rasterio.errors.RasterioError` if it does not decode."""
    decode_all(src)
    crs: CRS | None = src.crs
    nodata = src.nodata
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
        block_shape=(int(src.block_shapes[0][0]), int(src.block_shapes[0][1])),
        compression=src.compression.value if src.compression else None,
    )


def inspect_raster(
    location: RasterLocation, path: str, checksum: str, size: int, *, pixel_grid: bool = False
) -> RasterInfo:
    """Open ``location`` and describe it; raise `ValueError` naming ``path`` if it is unusable.

    Without a CRS it is refused unless the scene declares a ``pixel_grid``.
    """
    try:
        with warnings.catch_warnings():  # a missing CRS is reported below, not warned about
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with location.open() as src:
                info = describe_raster(src, path, checksum, size)
    except rasterio.errors.RasterioError as exc:
        raise ValueError(f"{path}: not a readable GeoTIFF ({exc})") from exc
    if not info.crs and not pixel_grid:
        raise ValueError(f"{path}: has no coordinate reference system (not georeferenced)")
    return info


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


def read_cd_scene(store: VersionedStore, ref: str, scene_id: str) -> CDScene:
    """Pin ``scene_id`` at ``ref`` to a commit and describe its files."""
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
            location = store.raster_location(commit_id, path)
            found[role] = inspect_raster(
                location, path, stat.checksum, stat.size, pixel_grid=pixel_grid
            )
        except ValueError as exc:
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
    """The fraction of ``pre``'s footprint covered by ``other`` (bounds compared in pre's CRS)."""
    other_bounds = transform_bounds(
        CRS.from_string(other.crs), CRS.from_string(pre.crs), *other.bounds
    )
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
        metadata={"problems": dict(scene.problems), "files": [r.path for r in scene.rasters]},
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
    fraction = footprint_overlap(scene.pre, scene.post)
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
    }
    if scene.label is not None:
        label_fraction = footprint_overlap(scene.pre, scene.label)
        metadata["label_overlap_fraction"] = round(label_fraction, 4)
        if scene.label.count != 1:
            reasons.append(f"{scene.label.path} has {scene.label.count} bands, expected 1")
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


def validate_local_cd(src: Path, *, pixel_grid: bool = False) -> list[str]:
    """Problems with a local CD scene folder (empty list: ready to ingest).

    ``pixel_grid``: the folder is declared a pixel-grid scene (CRS-less, same-size rasters).
    """
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
                RasterLocation(str(path)), str(path), "", path.stat().st_size, pixel_grid=pixel_grid
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
