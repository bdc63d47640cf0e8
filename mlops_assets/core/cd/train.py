"""Training the change-detection U-Net: seeded, CPU by default, CUDA when present.

`train_change_model` splits the tiles spatially, trains with BCE + Dice (AdamW, linear warm-up then
cosine decay per step, optionally an exponential moving average of the weights), evaluates F1,
IoU, precision and recall on validation pixels after every epoch (torchmetrics, label 255
ignored; the averaged weights when there are any), keeps the best epoch by F1, stops early once
F1 has not improved for ``patience`` epochs, and renders a few validation predictions as overlay
images. It reports each epoch (and, for progress lines, each batch) through callbacks, so the
caller can log to MLflow without this module knowing about it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import (
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
)

from mlops_assets.core.cd.config import TrainConfig
from mlops_assets.core.cd.dataset import (
    IGNORE,
    ChangeTileDataset,
    Split,
    TileRef,
    scenes_of,
    split_by_block,
    split_by_scene,
)
from mlops_assets.core.cd.model import BceDiceLoss, build_unet, model_spec
from mlops_assets.core.cd.raster import label_image, overlay_image, rgb_image, side_by_side
from mlops_assets.core.compute import seed_everything, select_device, torch_threads


class TrainingError(RuntimeError):
    """Training cannot start or diverged."""


class DivergedError(TrainingError):
    """The loss stopped being finite: these settings diverge (a sweep records the trial failed)."""


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch achieved."""

    epoch: int
    train_loss: float
    val_loss: float
    f1: float
    iou: float
    precision: float
    recall: float
    seconds: float
    samples_per_second: float


#: ``on_batch(epoch, batch, batches, loss)``: called after every optimiser step.
BatchCallback = Callable[[int, int, int, float], None]


@dataclass
class TrainResult:
    """A trained model, how it was trained, and how well it does on held-out tiles."""

    model: nn.Module
    spec: dict[str, Any]
    history: list[EpochMetrics]
    best: EpochMetrics
    train_tiles: int
    val_tiles: int
    buffer_tiles: int
    device: str
    train_scenes: list[str] = field(default_factory=lambda: list[str]())
    val_scenes: list[str] = field(default_factory=lambda: list[str]())
    stopped_early: bool = False  # True when patience ran out before ``epochs``
    overlays: list[tuple[str, Image.Image]] = field(
        default_factory=lambda: list[tuple[str, Image.Image]]()
    )


class EarlyStopping:
    """Counts epochs since validation F1 last beat the best by more than ``min_delta``.

    Epochs up to ``min_epochs`` are not counted: while the learning rate is high F1 swings, and a
    dip there says nothing about convergence.
    """

    def __init__(self, patience: int, min_delta: float = 0.0, min_epochs: int = 0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.min_epochs = min_epochs
        self.best = -math.inf
        self.stale = 0
        self.epochs = 0

    def update(self, score: float) -> bool:
        """Record an epoch's score; True when training should stop (never with patience 0)."""
        self.epochs += 1
        if score > self.best + self.min_delta:
            self.best, self.stale = score, 0
        elif self.epochs > self.min_epochs:
            self.stale += 1
        return self.patience > 0 and self.stale >= self.patience


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from near 0 to the configured rate, then cosine decay to 0 (per step)."""
    total = max(1, total_steps)
    warmup = min(max(0.0, warmup_steps), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1.0, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_split(refs: Sequence[TileRef], config: TrainConfig) -> Split:
    """The train/validation split ``config`` asks for."""
    if config.split == "scene":
        try:
            return split_by_scene(refs, config.val_scenes, config.val_fraction, config.seed)
        except ValueError as exc:
            raise TrainingError(str(exc)) from exc
    stride = min(int(r.index.config["tile_size"]) - int(r.index.config["overlap"]) for r in refs)
    return split_by_block(refs, config.block_tiles * stride, config.val_fraction, config.seed)


def _metrics(device: torch.device, threshold: float) -> dict[str, Any]:
    return {
        "f1": BinaryF1Score(threshold=threshold, ignore_index=IGNORE).to(device),
        "iou": BinaryJaccardIndex(threshold=threshold, ignore_index=IGNORE).to(device),
        "precision": BinaryPrecision(threshold=threshold, ignore_index=IGNORE).to(device),
        "recall": BinaryRecall(threshold=threshold, ignore_index=IGNORE).to(device),
    }


def evaluate(
    model: nn.Module,
    loader: DataLoader[dict[str, torch.Tensor]],
    loss_fn: nn.Module,
    device: torch.device,
    threshold: float,
) -> dict[str, float]:
    """Loss and pixel metrics over a loader (labels 255 ignored)."""
    metrics = _metrics(device, threshold)
    model.eval()
    total, batches = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            image, mask = batch["image"].to(device), batch["mask"].to(device)
            logits = model(image)
            total += float(loss_fn(logits, mask))
            batches += 1
            probs = torch.sigmoid(logits[:, 0]).flatten()
            for metric in metrics.values():
                metric.update(probs, mask.flatten())
    values = {name: float(metric.compute()) for name, metric in metrics.items()}
    values["loss"] = total / max(batches, 1)
    return values


def render_overlays(
    model: nn.Module, refs: Sequence[TileRef], device: torch.device, threshold: float
) -> list[tuple[str, Image.Image]]:
    """For each tile: post image with predicted change tinted | the label."""
    images: list[tuple[str, Image.Image]] = []
    dataset = ChangeTileDataset(refs)
    model.eval()
    with torch.no_grad():
        for ref, sample in zip(refs, (dataset[i] for i in range(len(dataset))), strict=True):
            logits = model(sample["image"][None].to(device))
            predicted = (torch.sigmoid(logits[0, 0]) > threshold).cpu().numpy()
            bands = sample["image"].shape[0] // 2
            post = sample["image"][bands:].numpy()
            rgb = post[[2, 1, 0]] if bands >= 3 else post[[0, 0, 0]]
            mask = sample["mask"].numpy()
            valid = mask != IGNORE
            panel = side_by_side(
                [
                    overlay_image(rgb_image(rgb, np.ones_like(valid)), predicted),
                    label_image(mask, valid),
                ]
            )
            images.append((f"{ref.index.scene_id}_{ref.tile.name}", panel))
    return images


def train_change_model(
    refs: Sequence[TileRef],
    config: TrainConfig,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    on_batch: BatchCallback | None = None,
) -> TrainResult:
    """Train a U-Net on ``refs``; return the best epoch's model (on the CPU, in eval mode).

    On the CPU, PyTorch uses ``config.num_threads`` threads meanwhile (0: its default).
    """
    with torch_threads(config.num_threads):
        return _train(refs, config, on_epoch, on_batch)


def _train(
    refs: Sequence[TileRef],
    config: TrainConfig,
    on_epoch: Callable[[EpochMetrics], None] | None,
    on_batch: BatchCallback | None,
) -> TrainResult:
    if not refs:
        raise TrainingError("no tiles to train on")
    generator = seed_everything(config.seed, deterministic=True)
    device = select_device(config.device, TrainingError)
    split = make_split(refs, config)
    if not split.train or not split.val:
        raise TrainingError(
            f"need labelled tiles on both sides of the split; got {len(split.train)} for training "
            f"and {len(split.val)} for validation (labelled scenes: "
            f"{sorted({r.index.scene_id for r in refs if r.tile.labelled_pixels})})"
        )
    bands = refs[0].index.bands
    other = next((r for r in refs if r.index.bands != bands), None)
    if other is not None:  # in_channels follows the scenes, so they must agree
        raise TrainingError(
            f"tile sets have different band counts: cd/{refs[0].index.scene_id} has {bands}, "
            f"cd/{other.index.scene_id} has {other.index.bands}; train one model per sensor"
        )
    model = build_unet(2 * bands, config).to(device)
    loss_fn = BceDiceLoss(config.dice_weight)
    train_loader: DataLoader[dict[str, torch.Tensor]] = DataLoader(
        ChangeTileDataset(split.train, augment=config.augment),
        batch_size=config.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=0,
    )
    val_loader: DataLoader[dict[str, torch.Tensor]] = DataLoader(
        ChangeTileDataset(split.val), batch_size=config.batch_size, num_workers=0
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = warmup_cosine(
        optimizer, config.epochs * len(train_loader), config.warmup_epochs * len(train_loader)
    )
    ema = (
        None
        if not config.ema_decay
        else torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay),
            use_buffers=True,
        )
    )
    history: list[EpochMetrics] = []
    best: EpochMetrics | None = None
    best_state: dict[str, torch.Tensor] = {}
    stopping = EarlyStopping(config.patience, config.min_delta, config.min_epochs)
    stopped_early = False
    for epoch in range(1, config.epochs + 1):
        model.train()
        started = time.perf_counter()
        total, samples = 0.0, 0
        for step, batch in enumerate(train_loader, start=1):
            image, mask = batch["image"].to(device), batch["mask"].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(image), mask)
            if not torch.isfinite(loss):
                raise DivergedError(
                    f"loss became {float(loss.detach())} at epoch {epoch}: training diverged"
                )
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            total += float(loss.detach()) * image.shape[0]
            samples += image.shape[0]
            if on_batch is not None:
                on_batch(epoch, step, len(train_loader), float(loss.detach()))
        seconds = time.perf_counter() - started
        scored = model if ema is None else ema.module
        values = evaluate(scored, val_loader, loss_fn, device, config.threshold)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=total / max(samples, 1),
            val_loss=values["loss"],
            f1=values["f1"],
            iou=values["iou"],
            precision=values["precision"],
            recall=values["recall"],
            seconds=seconds,
            samples_per_second=samples / max(seconds, 1e-9),
        )
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        if best is None or metrics.f1 >= best.f1:
            best = metrics
            best_state = copy.deepcopy(scored.state_dict())
        if stopping.update(metrics.f1) and epoch < config.epochs:
            stopped_early = True
            break
    assert best is not None
    model.load_state_dict(best_state)
    overlays = render_overlays(model, split.val[: config.overlay_images], device, config.threshold)
    return TrainResult(
        model=model.cpu().eval(),
        spec=model_spec(2 * bands, config),
        history=history,
        best=best,
        train_tiles=len(split.train),
        val_tiles=len(split.val),
        buffer_tiles=split.buffer,
        device=str(device),
        train_scenes=scenes_of(split.train),
        val_scenes=scenes_of(split.val),
        stopped_early=stopped_early,
        overlays=overlays,
    )
