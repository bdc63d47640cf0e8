"""Tiling: throughput against a plain rasterio windowed copy, and peak memory against scene size.

The reference does the least work that produces the same windows: it opens pre and post, warps
post onto pre's grid through the same `WarpedVRT` `open_aligned` builds, reads every window of
both images, and writes each as ``.npz`` (pre and post). No validity masks, no label, no
statistics, no alignment residual, no preview, no index. `tile_scene` does all of those.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from benchmarks.common import (
    PERF_SCENE,
    BenchResult,
    Target,
    cached_scene,
    open_plain,
    open_scene,
    ratio,
    run_child,
    side_by_side,
)
from mlops_assets.core.cd.config import TilingConfig
from mlops_assets.core.cd.raster import positions
from mlops_assets.core.cd.tiles import TileIndex, tile_scene


def reference_copy(scene: Path, out_dir: Path, config: TilingConfig) -> int:
    """Copy every window of pre and post-on-pre's-grid into ``.npz`` files; return the count."""
    size = config.tile_size
    tiles = out_dir / "tiles"
    tiles.mkdir(parents=True, exist_ok=True)
    written = 0
    with open_plain(scene, config.resampling) as (pre, post):
        for row in positions(pre.height, size, config.stride):
            for col in positions(pre.width, size, config.stride):
                window = Window.from_slices((row, row + size), (col, col + size))
                np.savez(
                    tiles / f"{written:06d}.npz",
                    pre=pre.read(window=window),
                    post=post.read(window=window),
                )
                written += 1
    return written


def package_tile(scene: Path, out_dir: Path, config: TilingConfig) -> TileIndex:
    """What the ``cd/tiles`` asset does to a scene: `open_aligned` then `tile_scene`."""
    with open_scene(scene, config.resampling) as pair:
        return tile_scene(
            pair, out_dir, config, PERF_SCENE.scene_id, "bench", "0" * 64, {"pre": str(scene)}
        )


def bench_tiling_throughput(size: int = 2048, repeats: int = 3) -> BenchResult:
    """Scene megapixels per second of `tile_scene` and of the reference, best of ``repeats``."""
    scene = cached_scene(PERF_SCENE, size)
    config = TilingConfig()
    work = Path(tempfile.mkdtemp(prefix="bench-tiling-"))
    counts: dict[str, int] = {}

    def run(kind: str) -> None:
        out = work / kind
        shutil.rmtree(out, ignore_errors=True)
        if kind == "reference":
            counts[kind] = reference_copy(scene, out, config)
        else:
            counts[kind] = len(package_tile(scene, out, config).tiles)

    try:
        run("reference")  # warm the page cache and GDAL's drivers; not timed
        ref_times, pkg_times = side_by_side(
            lambda: run("reference"), lambda: run("package"), repeats
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mpx = size * size / 1e6
    measured, reference = mpx / min(pkg_times), mpx / min(ref_times)
    return BenchResult(
        name=f"tiling throughput ({size} px)",
        unit="Mpx/s",
        measured=measured,
        reference=reference,
        ratio=ratio(measured, reference),
        target=Target("ratio", ">=", 0.8),
        note=f"vs rasterio windowed copy; best of {repeats}",
        details={
            "scene": f"{PERF_SCENE.scene_id}-{size}",
            "tile_size": config.tile_size,
            "overlap": config.overlap,
            "tiles_package": counts.get("package"),
            "windows_reference": counts.get("reference"),
            "package_seconds": pkg_times,
            "reference_seconds": ref_times,
        },
    )


def bench_tiling_rss(small: int = 1024, large: int = 8192) -> BenchResult:
    """Peak RSS of tiling a ``large`` scene against a ``small`` one, each in a fresh process."""
    peaks: dict[int, dict[str, float]] = {}
    for size in (small, large):
        scene = cached_scene(PERF_SCENE, size)
        with tempfile.TemporaryDirectory(prefix="bench-tiling-rss-") as tmp:
            peaks[size] = run_child("tile", str(scene), tmp)
    measured, reference = peaks[large]["peak_mb"], peaks[small]["peak_mb"]
    return BenchResult(
        name=f"tiling peak RSS ({large} vs {small} px)",
        unit="MB",
        measured=measured,
        reference=reference,
        ratio=ratio(measured, reference),
        target=Target("ratio", "<=", 1.2),
        note="peak RSS (VmHWM) of a fresh process after tile_scene",
        details={str(size): peak for size, peak in peaks.items()},
    )
