"""Time and memory of the ingest checks on hostile files, each in a fresh process.

Every file is one the issue met (or its worst neighbour): sparse GeoTIFFs whose headers claim
10^12 pixels, a sparse one just under the pixel budget, an all-zero DEFLATE "bomb", GeoTIFFs of
one block at and over the block bound, photos at and over the photo budget (the worst legal ones:
a black PNG and a progressive 4:4:4 JPEG, a few hundred KB that decode to 256 MiB), a label
holding 0..255, a post image in an engineering CRS, binary COLMAP files cut in half or claiming a
billion points, a JPEG truncated to a third and one with garbage after its header. Each runs the
check ``mlops-assets ingest`` runs on it (`inspect_raster`, `validate_local_cd`,
`validate_local_nvs`) in a child process started for that file alone, which reports its peak
resident set (VmHWM), the same after its imports, and the check's wall time. Targets: at most
512 MB and 10 s each. Each file must also get the right verdict: the broken ones refused, the
ones that are merely expensive (at the budgets, the bomb) accepted within the bounds. A
valid 200k-point model is checked too, as a control (shown, not judged).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window

from benchmarks.common import BenchResult, Target, cache_root, run_child
from mlops_assets.core.demo.nvs import DEMO_NVS_SCENES, write_nvs_scene
from mlops_assets.core.scenes.checks import MAX_BLOCK_BYTES, MAX_PHOTO_PIXELS
from mlops_assets.core.scenes.colmap import Camera, ColmapModel, PosedImage, write_model

MAX_MB = 512.0
MAX_SECONDS = 10.0
_MAUPERTUIS = Path(__file__).resolve().parent.parent / "mlops_assets_tests/data/kapture/maupertuis"


@dataclass(frozen=True)
class Case:
    """One file (or folder) and the check that meets it."""

    name: str
    job: str  # a `benchmarks._child` job: check-raster, check-label, check-cd, check-nvs
    path: Path
    refuse: bool = True  # False: valid, however expensive, so it must be accepted
    control: bool = False  # an ordinary valid file: shown for comparison, not judged


def _geotiff(path: Path, size: int, count: int, dtype: str, **profile: object) -> Path:
    meta: dict[str, object] = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": count,
        "dtype": dtype,
        "crs": "EPSG:32633",
        "transform": from_origin(500000, 5000000, 1, 1),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        **profile,
    }
    with rasterio.open(path, "w", **meta):  # type: ignore[arg-type]
        pass
    return path


def _sparse(path: Path, size: int, count: int, dtype: str, one_block: bool = False) -> Path:
    _geotiff(path, size, count, dtype, sparse_ok=True, blockxsize=1024, blockysize=1024)
    if one_block:
        with rasterio.open(path, "r+") as dst:
            window = Window.from_slices((0, 1024), (0, 1024))
            dst.write(np.ones((count, 1024, 1024), dtype), window=window)
    return path


def _bomb(path: Path, size: int) -> Path:
    """A dense, all-zero DEFLATE GeoTIFF: a few hundred KB that decode to size² bytes."""
    _geotiff(path, size, 1, "uint8", compress="deflate")
    with rasterio.open(path, "r+") as dst:
        zeros = np.zeros((1, 1024, size), np.uint8)
        for row in range(0, size, 1024):
            dst.write(zeros, window=Window.from_slices((row, row + 1024), (0, size)))
    return path


def _noisy_label(path: Path, size: int) -> Path:
    _geotiff(path, size, 1, "uint8", compress="deflate")
    rng = np.random.default_rng(0)
    with rasterio.open(path, "r+") as dst:
        for row in range(0, size, 1024):
            values = rng.integers(0, 256, (1, 1024, size), dtype=np.uint8)
            dst.write(values, window=Window.from_slices((row, row + 1024), (0, size)))
    return path


def _one_block(path: Path, size: int, count: int) -> Path:
    """An all-zero DEFLATE GeoTIFF stored as one ``size``-px square, ``count``-band block."""
    _geotiff(path, size, count, "uint8", compress="deflate", blockxsize=size, blockysize=size)
    with rasterio.open(path, "r+") as dst:
        dst.write(np.zeros((count, size, size), np.uint8))
    return path


def _photo(folder: Path, name: str, size: int, **save: object) -> Path:
    """A photos-only NVS scene (no model: the check decodes the photo) of one black photo."""
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (size, size)).save(folder / "images" / name, **save)  # type: ignore[arg-type]
    return folder


def _local_crs_pair(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, (4, 512, 512), dtype=np.uint16)
    local = CRS.from_wkt('LOCAL_CS["Site grid",UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]')
    for name, crs in (("pre.tif", CRS.from_epsg(32633)), ("post.tif", local)):
        path = _geotiff(folder / name, 512, 4, "uint16")
        with rasterio.open(path, "r+") as dst:
            dst.crs = crs
            dst.write(data)
    return folder


def _big_model(directory: Path, points: int) -> Path:
    """A binary COLMAP model with ``points`` points, each seen by 3 of 24 images."""
    rng = np.random.default_rng(0)
    camera = Camera(1, "PINHOLE", 640, 480, (500.0, 500.0, 320.0, 240.0))
    images = [
        PosedImage(i + 1, f"view_{i:03d}.png", 1, np.eye(3), np.array([0.1 * i, 0.0, 4.0]))
        for i in range(24)
    ]
    xyz = rng.uniform(-1, 1, (points, 3))
    seen = rng.integers(1, 25, (points, 3))
    observations = [
        [(int(i), float(x), float(y)) for i, x, y in zip(ids, xs, ys, strict=True)]
        for ids, xs, ys in zip(
            seen, rng.uniform(0, 640, (points, 3)), rng.uniform(0, 480, (points, 3)), strict=True
        )
    ]
    colours = rng.integers(0, 255, (points, 3), dtype=np.uint8)
    model = ColmapModel({1: camera}, images, xyz, colours, observations)
    return write_model(model, directory, "bin")


def _nvs_variant(base: Path, folder: Path, change: str) -> Path:
    shutil.copytree(base, folder)
    sparse = folder / "sparse" / "0"
    if change in ("half-points", "half-cameras"):
        name = "points3D.bin" if change == "half-points" else "cameras.bin"
        data = (sparse / name).read_bytes()
        (sparse / name).write_bytes(data[: len(data) // 2])
    elif change == "billion-points":
        data = (sparse / "points3D.bin").read_bytes()
        (sparse / "points3D.bin").write_bytes((10**9).to_bytes(8, "little") + data[8:])
    return folder


def _jpeg_variant(folder: Path, change: str) -> Path:
    shutil.copytree(_MAUPERTUIS, folder)
    photo = folder / "images" / "01.jpg"
    data = photo.read_bytes()
    if change == "truncated":
        photo.write_bytes(data[: len(data) // 3])
    else:
        start = data.index(b"\xff\xda") + 20  # start of scan: the compressed data
        noise = np.random.default_rng(0).integers(0, 256, len(data) - start, dtype=np.uint8)
        photo.write_bytes(data[:start] + noise.tobytes())
    return folder


def make_cases(root: Path, quick: bool = False) -> list[Case]:
    """Write every hostile file (and two valid controls) under ``root``."""
    huge = 1_000_000
    cases = [
        Case("sparse 10^6 px square, 1 band uint8", "check-raster", root / "s1.tif"),
        Case("sparse 10^6 px square, 4 bands uint16", "check-raster", root / "s4.tif"),
        Case(
            "sparse 46,000 px square, 4 x uint16, one block",
            "check-raster",
            root / "u.tif",
            refuse=False,
        ),
        Case(
            f"all-zero DEFLATE bomb, {4096 if quick else 16_384:,} px square",
            "check-raster",
            root / "bomb.tif",
            refuse=False,
        ),
        Case(
            "one 4,096 px square block, 4 x uint8 (64 MiB, the block bound), DEFLATE",
            "check-raster",
            root / "block64.tif",
            refuse=False,
        ),
        Case(
            "one 8,192 px square block, 4 x uint8 (256 MiB), DEFLATE",
            "check-raster",
            root / "block256.tif",
        ),
        Case(
            "black RGB PNG, 8,192 px square (2^26 px, the photo budget)",
            "check-nvs",
            root / "png-budget",
            refuse=False,
        ),
        Case("black RGB PNG, 11,585 px square (just under 2^27 px)", "check-nvs", root / "png-27"),
        Case(
            "progressive 4:4:4 JPEG, 5,176 px square (at the budget, coefficients counted)",
            "check-nvs",
            root / "jpeg-progressive",
            refuse=False,
        ),
        Case(
            f"label holding 0..255, {1024 if quick else 4096} px",
            "check-label",
            root / "label.tif",
        ),
        Case("post in an engineering (LOCAL_CS) CRS", "check-cd", root / "local"),
        Case(
            f"points3D.bin cut in half ({20 if quick else 200}k points)",
            "check-nvs",
            root / "half-points",
        ),
        Case("points3D.bin claiming 10^9 points", "check-nvs", root / "billion-points"),
        Case("cameras.bin cut in half", "check-nvs", root / "half-cameras"),
        Case("JPEG truncated to a third", "check-nvs", root / "jpeg-truncated"),
        Case("JPEG with garbage after its header", "check-nvs", root / "jpeg-garbage"),
        Case(
            f"control: valid model, {20 if quick else 200}k points",
            "check-nvs",
            root / "valid",
            refuse=False,
            control=True,
        ),
    ]
    _sparse(cases[0].path, huge, 1, "uint8")
    _sparse(cases[1].path, huge, 4, "uint16")
    _sparse(cases[2].path, 46_000, 4, "uint16", one_block=True)
    _bomb(cases[3].path, 4096 if quick else 16_384)
    budget = math.isqrt(MAX_PHOTO_PIXELS)
    _one_block(cases[4].path, math.isqrt(MAX_BLOCK_BYTES // 4), 4)
    _one_block(cases[5].path, 2 * math.isqrt(MAX_BLOCK_BYTES // 4), 4)
    _photo(cases[6].path, "black.png", budget)
    _photo(cases[7].path, "black.png", math.isqrt(2 * MAX_PHOTO_PIXELS))
    # 2.5 pixels a pixel (4 bytes, plus 3 x 2 bytes of coefficients), in whole 8 px blocks
    edge = math.isqrt(MAX_PHOTO_PIXELS * 2 // 5) // 8 * 8
    _photo(cases[8].path, "black.jpg", edge, quality=95, subsampling=0, progressive=True)
    _noisy_label(cases[9].path, 1024 if quick else 4096)
    _local_crs_pair(cases[10].path)
    base = root / "valid"
    spec = dataclasses.replace(DEMO_NVS_SCENES[0], views=24)
    write_nvs_scene(spec, base, image_size=64)
    shutil.rmtree(base / "sparse" / "0")
    _big_model(base / "sparse" / "0", 20_000 if quick else 200_000)
    for case in cases[11:14]:
        _nvs_variant(base, case.path, case.path.name)
    _jpeg_variant(cases[14].path, "truncated")
    _jpeg_variant(cases[15].path, "garbage")
    return cases


@functools.cache
def _runs(quick: bool) -> tuple[tuple[Case, dict[str, object]], ...]:
    """Each case checked in its own fresh process (run once per benchmark process)."""
    cache_root().mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-adversarial-", dir=cache_root()))
    try:
        cases = make_cases(root, quick)
        results: list[tuple[Case, dict[str, object]]] = []
        for case in cases:
            started = time.perf_counter()
            result = run_child(case.job, str(case.path), str(root), timeout=600)
            result["process_s"] = time.perf_counter() - started
            result["size_bytes"] = (
                case.path.stat().st_size
                if case.path.is_file()
                else sum(p.stat().st_size for p in case.path.rglob("*") if p.is_file())
            )
            results.append((case, result))
        return tuple(results)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _details(quick: bool) -> tuple[list[dict[str, object]], list[str]]:
    rows: list[dict[str, object]] = []
    wrong: list[str] = []
    for case, result in _runs(quick):
        refused = bool(result["refused"])
        if refused != case.refuse:
            wrong.append(f"{case.name}: {'refused' if refused else 'accepted'}")
        rows.append({"case": case.name, "refuse": case.refuse, "control": case.control, **result})
    return rows, wrong


def _worst(rows: list[dict[str, object]], key: str) -> dict[str, object]:
    return max((r for r in rows if not r["control"]), key=lambda r: float(str(r[key])))


def bench_adversarial_rss(quick: bool = False) -> BenchResult:
    """The highest peak RSS of the checks over every hostile file, each in a fresh process."""
    rows, wrong = _details(quick)
    worst = _worst(rows, "peak_mb")
    return BenchResult(
        name="check peak RSS, hostile files",
        unit="MB",
        measured=float(str(worst["peak_mb"])) if not wrong else None,
        reference=None,
        target=Target("measured", "<=", MAX_MB),
        judged=not quick,
        note=f"worst: {worst['case']}; "
        + (f"WRONG VERDICTS: {wrong}; " if wrong else "")
        + "per file: "
        + "; ".join(f"{r['case']} {float(str(r['peak_mb'])):.0f} MB" for r in rows),
        details={"runs": json.loads(json.dumps(rows, default=str))},
    )


def bench_adversarial_time(quick: bool = False) -> BenchResult:
    """The longest check over every hostile file, each in a fresh process."""
    rows, wrong = _details(quick)
    worst = _worst(rows, "seconds")
    return BenchResult(
        name="check time, hostile files",
        unit="s",
        measured=float(str(worst["seconds"])) if not wrong else None,
        reference=None,
        target=Target("measured", "<=", MAX_SECONDS),
        judged=not quick,
        note=f"worst: {worst['case']}; "
        + (f"WRONG VERDICTS: {wrong}; " if wrong else "")
        + "per file (check / whole process): "
        + "; ".join(
            f"{r['case']} {float(str(r['seconds'])):.2f} / {float(str(r['process_s'])):.1f} s"
            for r in rows
        ),
        details={"runs": json.loads(json.dumps(rows, default=str))},
    )
