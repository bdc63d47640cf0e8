"""Inference: throughput against a bare forward over the same windows, and memory against size.

The model is the default preset's architecture, randomly initialised (speed and memory do not
depend on the weights). The reference reads each window of pre and post-on-pre's-grid (the same
`WarpedVRT`), normalises it with the same statistics, and runs the forward pass in batches of the
same size: no validity masks, no blending, no accumulator, no GeoTIFF written, no label scoring.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from rasterio.windows import Window
from torch import nn

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
from mlops_assets.core.cd.config import InferenceConfig, TrainConfig
from mlops_assets.core.cd.infer import ChangeMapSummary, predict_scene
from mlops_assets.core.cd.model import build_unet
from mlops_assets.core.cd.raster import positions
from mlops_assets.core.cd.tiles import BandStats
from mlops_assets.core.compute import select_device

Stats = tuple[BandStats, BandStats]


def random_model(config: TrainConfig, bands: int = 4) -> tuple[nn.Module, int]:
    """A seeded, randomly initialised U-Net for ``bands`` per date, and its size multiple."""
    torch.manual_seed(0)
    return build_unet(2 * bands, config).eval(), 2**config.encoder_depth


def scene_stats(scene: Path, side: int = 512) -> Stats:
    """Per-band mean and std of pre and of post (on pre's grid), from a decimated read."""

    def stats(data: NDArray[np.float32], valid: NDArray[np.bool_]) -> BandStats:
        values = data[:, valid].astype(np.float64)
        return BandStats(
            [float(v) for v in values.mean(axis=1)],
            [float(max(v, 1e-6)) for v in values.std(axis=1)],
        )

    with open_scene(scene) as pair:
        shape = (min(side, pair.height), min(side, pair.width))
        pre = pair.pre.read(out_shape=(pair.count, *shape))
        post = pair.post.read(out_shape=(pair.count, *shape))
        valid = (pair.pre.dataset_mask(out_shape=shape) > 0) & (
            pair.post.dataset_mask(out_shape=shape) > 0
        )
    return stats(pre, valid), stats(post, valid)


def package_predict(
    scene: Path,
    model: nn.Module,
    multiple: int,
    stats: Stats,
    config: InferenceConfig,
    out_path: Path,
) -> ChangeMapSummary:
    """What the ``cd/change_map`` asset does to a scene: `open_aligned` then `predict_scene`."""
    with open_scene(scene) as pair:
        return predict_scene(
            pair, model, *stats, config, out_path, select_device(config.device), multiple
        )


@torch.no_grad()
def reference_forward(scene: Path, model: nn.Module, stats: Stats, config: InferenceConfig) -> int:
    """Read, normalise and predict every window of the scene; return the window count."""
    device = select_device(config.device)
    model = model.to(device).eval()
    pre_stats, post_stats = stats
    mean = np.asarray(pre_stats.mean + post_stats.mean, np.float32)[:, None, None]
    std = np.asarray(pre_stats.std + post_stats.std, np.float32)[:, None, None]
    windows = 0
    with open_plain(scene) as (pre, post):
        size = min(config.tile_size, pre.height, pre.width)
        stride = size - min(config.overlap, size // 2)
        cols = positions(pre.width, size, stride)
        for row in positions(pre.height, size, stride):
            for start in range(0, len(cols), config.batch_size):
                batch = []
                for col in cols[start : start + config.batch_size]:
                    window = Window.from_slices((row, row + size), (col, col + size))
                    stacked = np.concatenate([pre.read(window=window), post.read(window=window)])
                    batch.append((stacked.astype(np.float32) - mean) / std)
                images = torch.from_numpy(np.stack(batch)).to(device)
                torch.sigmoid(model(images)[:, 0]).cpu().numpy()
                windows += len(batch)
    return windows


def bench_inference_throughput(
    size: int = 2048, repeats: int = 3, device: Literal["auto", "cpu", "cuda"] = "auto"
) -> BenchResult:
    """Scene Mpx/s of `predict_scene` and of the bare forward, best of ``repeats`` each."""
    scene = cached_scene(PERF_SCENE, size)
    config = dataclasses.replace(InferenceConfig(), device=device)
    model, multiple = random_model(TrainConfig())
    stats = scene_stats(scene)
    windows: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        out = Path(tmp) / "change.tif"

        def package() -> None:
            out.unlink(missing_ok=True)
            package_predict(scene, model, multiple, stats, config, out)

        def reference() -> None:
            windows["reference"] = reference_forward(scene, model, stats, config)

        ref_times, pkg_times = side_by_side(reference, package, repeats)
    mpx = size * size / 1e6
    measured, ref = mpx / min(pkg_times), mpx / min(ref_times)
    return BenchResult(
        name=f"inference throughput ({size} px)",
        unit="Mpx/s",
        measured=measured,
        reference=ref,
        ratio=ratio(measured, ref),
        target=Target("ratio", ">=", 0.9),
        note=f"vs bare forward over the same windows; best of {repeats}",
        details={
            "scene": f"{PERF_SCENE.scene_id}-{size}",
            "tile_size": config.tile_size,
            "overlap": config.overlap,
            "batch_size": config.batch_size,
            "windows": windows.get("reference"),
            "device": str(select_device(config.device)),
            "package_seconds": pkg_times,
            "reference_seconds": ref_times,
        },
    )


def bench_inference_rss(small: int = 1024, large: int = 4096) -> BenchResult:
    """Peak RSS of `predict_scene` on a ``large`` scene against a ``small`` one, fresh processes."""
    peaks: dict[int, dict[str, float]] = {}
    for size in (small, large):
        scene = cached_scene(PERF_SCENE, size)
        stats = json.dumps([dataclasses.asdict(s) for s in scene_stats(scene)])
        with tempfile.TemporaryDirectory(prefix="bench-infer-rss-") as tmp:
            peaks[size] = run_child("infer", str(scene), tmp, "--stats", stats)
    measured, reference = peaks[large]["peak_mb"], peaks[small]["peak_mb"]
    return BenchResult(
        name=f"inference peak RSS ({large} vs {small} px)",
        unit="MB",
        measured=measured,
        reference=reference,
        ratio=ratio(measured, reference),
        target=Target("ratio", "<=", 1.2),
        note="peak RSS (VmHWM) of a fresh process after predict_scene",
        details={str(size): peak for size, peak in peaks.items()},
    )
