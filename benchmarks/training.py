"""Training: throughput against a bare PyTorch loop, and held-out F1 of the default preset.

The bare loop is `train_change_model`'s inner loop with everything else taken away: the same
split, dataset (augmentation included, so both sides see the same batches), seeded `DataLoader`,
model, AdamW and loss, but no learning-rate schedule, no weight averaging (EMA), no divergence
check, no loss bookkeeping, no evaluation and no callback.
Both sides time the whole epoch, data loading included; the package's figure is the
``samples_per_second`` its own `EpochMetrics` report.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader

from benchmarks.common import BenchResult, Target, cached_scene, open_scene, ratio
from mlops_assets.core.cd.config import TilingConfig, TrainConfig
from mlops_assets.core.cd.dataset import ChangeTileDataset, TileRef, tile_refs
from mlops_assets.core.cd.model import BceDiceLoss, build_unet
from mlops_assets.core.cd.tiles import TileIndex, tile_scene
from mlops_assets.core.cd.train import TrainResult, make_split, train_change_model
from mlops_assets.core.compute import seed_everything, select_device
from mlops_assets.core.demo.cd import DEMO_CD_SCENES, CDSceneSpec

#: The scene size `mlops-assets demo-data` writes.
DEMO_SIZE = 768


def tile_demo_scenes(
    specs: Sequence[CDSceneSpec], size: int, config: TilingConfig, work: Path
) -> list[TileRef]:
    """Tile each cached scene under ``work``; every tile of every scene."""
    sets: list[tuple[Path, TileIndex]] = []
    for spec in specs:
        out = work / spec.scene_id
        with open_scene(cached_scene(spec, size), config.resampling) as pair:
            index = tile_scene(
                pair, out, config, spec.scene_id, "bench", "0" * 64, {"scene": spec.scene_id}
            )
        sets.append((out, index))
    return tile_refs(sets)


def bare_loop(refs: Sequence[TileRef], config: TrainConfig) -> list[float]:
    """Samples per second of each epoch of a bare training loop on the same batches."""
    generator = seed_everything(config.seed, deterministic=True)
    device = select_device(config.device)
    split = make_split(refs, config)
    model = build_unet(2 * refs[0].index.bands, config).to(device)
    loss_fn = BceDiceLoss(config.dice_weight)
    loader: DataLoader[dict[str, torch.Tensor]] = DataLoader(
        ChangeTileDataset(split.train, augment=config.augment),
        batch_size=config.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=0,
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    rates: list[float] = []
    for _ in range(config.epochs):
        model.train()
        started = time.perf_counter()
        samples = 0
        for batch in loader:
            image, mask = batch["image"].to(device), batch["mask"].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(image), mask).backward()
            optimizer.step()
            samples += image.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(samples / (time.perf_counter() - started))
    return rates


def compare_training(
    refs: Sequence[TileRef], config: TrainConfig, rounds: int, name: str
) -> tuple[BenchResult, TrainResult]:
    """Best-epoch samples/s of `train_change_model` against the bare loop on ``refs``.

    Each round trains from scratch with the bare loop, then with `train_change_model`, for
    ``config.epochs`` epochs each; alternating rounds spread load from other processes over both.
    Returns the row and the package's last result (its model, for a change map).
    """
    package_rates: list[float] = []
    reference_rates: list[float] = []
    results: list[TrainResult] = []
    for _ in range(max(rounds, 1)):
        reference_rates += bare_loop(refs, config)
        results.append(train_change_model(refs, config))
        package_rates += [m.samples_per_second for m in results[-1].history]
    measured, reference = max(package_rates), max(reference_rates)
    row = BenchResult(
        name=name,
        unit="samples/s",
        measured=measured,
        reference=reference,
        ratio=ratio(measured, reference),
        target=Target("ratio", ">=", 0.9),
        note=f"vs bare PyTorch loop; best epoch of {rounds} x {config.epochs}, alternating",
        details={
            "train_tiles": results[0].train_tiles,
            "batch_size": config.batch_size,
            "encoder": config.encoder,
            "device": results[0].device,
            "package_rates": package_rates,
            "reference_rates": reference_rates,
        },
    )
    return row, results[-1]


def bench_training_throughput(
    size: int = 512,
    scenes: int = 2,
    epochs: int = 3,
    rounds: int = 2,
    device: Literal["auto", "cpu", "cuda"] = "auto",
) -> BenchResult:
    """Best-epoch samples/s of `train_change_model` against the bare loop (default architecture)."""
    config = dataclasses.replace(TrainConfig(), epochs=epochs, overlay_images=0, device=device)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        refs = tile_demo_scenes(DEMO_CD_SCENES[:scenes], size, TilingConfig(), Path(tmp))
        name = f"training throughput ({scenes} scenes, {size} px)"
        return compare_training(refs, config, rounds, name)[0]


def bench_heldout_f1(size: int = DEMO_SIZE, epochs: int | None = None) -> BenchResult:
    """Best validation F1 of the default preset on all demo scenes (``epochs`` overrides)."""
    config = TrainConfig()
    quick = epochs is not None and epochs != config.epochs
    if epochs is not None:
        config = dataclasses.replace(config, epochs=epochs)
    with tempfile.TemporaryDirectory(prefix="bench-f1-") as tmp:
        refs = tile_demo_scenes(DEMO_CD_SCENES, size, TilingConfig(), Path(tmp))
        started = time.perf_counter()
        result = train_change_model(refs, config)
        seconds = time.perf_counter() - started
    best = result.best
    name = f"held-out F1 ({len(DEMO_CD_SCENES)} scenes, {size} px, {config.epochs} ep)"
    return BenchResult(
        name=name + (" [quick]" if quick else ""),
        unit="F1",
        measured=best.f1,
        reference=None,
        target=Target("measured", ">=", 0.95),
        judged=not quick,
        note=(
            f"P {best.precision:.3f} R {best.recall:.3f} IoU {best.iou:.3f} at epoch "
            f"{best.epoch}; trained in {seconds / 60:.1f} min"
            + ("; fewer epochs than the preset, not judged" if quick else "")
        ),
        details={
            "precision": best.precision,
            "recall": best.recall,
            "iou": best.iou,
            "best_epoch": best.epoch,
            "epochs": config.epochs,
            "train_seconds": seconds,
            "epoch_seconds_median": statistics.median(m.seconds for m in result.history),
            "train_tiles": result.train_tiles,
            "val_tiles": result.val_tiles,
            "buffer_tiles": result.buffer_tiles,
            "device": result.device,
            "f1_by_epoch": [round(m.f1, 4) for m in result.history],
        },
    )
