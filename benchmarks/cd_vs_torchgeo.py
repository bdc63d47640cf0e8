"""The chain side by side with TorchGeo's ``ChangeDetectionTask``: held-out F1 and throughput.

Both sides train the same network: TorchGeo's ``model="unet"`` builds ``smp.Unet`` (early fusion:
the two dates' bands stacked, ``in_channels * 2``) with smp's default depth-5 decoder, so the chain
is configured to that architecture (``encoder_depth=5``, ``decoder_channels=(256, ..., 16)``), with
the chain's encoder (``tu-regnetx_002``), random initialisation, and the chain's BCE + Dice loss
(TorchGeo's ``bce`` cannot ignore the 255 label; `_Reference` swaps the loss in and scores
nothing itself). They see the same tiles of the same training demo scenes (the chain's own
normalisation and dihedral augmentation, the same block split, the same seeded batch order and
batch size) for the same number of optimiser steps, and the same learning rate; each keeps its
own recipe otherwise: the chain AdamW with cosine decay and the best epoch by validation F1,
TorchGeo AdamW with ``ReduceLROnPlateau`` and, as its scripts do, the best epoch by
``val_loss``. Both are then scored by `predict_scene` on the same held-out demo scenes (pooled
F1). Throughput is training samples per second over the training batches of each epoch (data
loading included, validation excluded), the median epoch, mean over seeds; the runs alternate so
load from other processes hits both.

Seeds move held-out F1 far more than the recipes do (per seed, either side can lead by 0.1), so the
defaults are 160 optimiser steps (both sides past their first plateau), five seeds, and two
held-out scenes: ``suburb-east`` and the project's own evaluation scene ``valley-eval``, which
no training ever sees. The note gives the standard error of the paired per-seed difference, so a
reader can tell a gap from noise.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import BenchResult, Target, cached_scene, open_scene, ratio
from benchmarks.training import tile_demo_scenes
from mlops_assets.core.cd.config import InferenceConfig, TilingConfig, TrainConfig
from mlops_assets.core.cd.dataset import ChangeTileDataset, TileRef
from mlops_assets.core.cd.infer import predict_scene
from mlops_assets.core.cd.model import BceDiceLoss
from mlops_assets.core.cd.tiles import tile_scene
from mlops_assets.core.cd.train import make_split, train_change_model
from mlops_assets.core.demo.cd import DEMO_CD_EVAL_SCENES, DEMO_CD_SCENES, CDSceneSpec

#: Held out from training on both sides, and scored: one training demo scene and the evaluation one.
HELD_OUT = ("suburb-east", *(s.scene_id for s in DEMO_CD_EVAL_SCENES))
#: TorchGeo's unet: smp's defaults (depth 5, this decoder); the chain is set to the same network.
SMP_DECODER = (256, 128, 64, 32, 16)


def bench_config(epochs: int, seed: int) -> TrainConfig:
    """The chain's default preset with TorchGeo's unet architecture, on the CPU."""
    return dataclasses.replace(
        TrainConfig(),
        encoder_depth=5,
        decoder_channels=SMP_DECODER,
        epochs=epochs,
        seed=seed,
        device="cpu",
        overlay_images=0,
    )


class _PerDate(Dataset[dict[str, Tensor]]):
    """The chain's samples in TorchGeo's change layout: image [2, C, H, W], mask [1, H, W]."""

    def __init__(self, base: ChangeTileDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = self.base[index]
        image = sample["image"]
        return {
            "image": image.reshape(2, image.shape[0] // 2, *image.shape[1:]),
            "mask": sample["mask"][None],
        }


class _MaskChannelLoss(nn.Module):
    """The chain's loss on TorchGeo's [B, 1, H, W] masks."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.loss(logits, target[:, 0])


def _reference_task(bands: int, config: TrainConfig) -> Any:
    from torchgeo.trainers import ChangeDetectionTask

    class _Reference(ChangeDetectionTask):
        def configure_losses(self) -> None:
            self.criterion = _MaskChannelLoss(BceDiceLoss(config.dice_weight))

        def configure_metrics(self) -> None:  # scored by predict_scene afterwards
            pass

    return _Reference(
        model="unet",
        backbone=config.encoder,
        weights=None,
        in_channels=bands,
        task="binary",
        loss="bce",
        lr=config.learning_rate,
    )


def train_reference(
    refs: Sequence[TileRef], config: TrainConfig
) -> tuple[nn.Module, list[float], int]:
    """TorchGeo's task on the chain's split and batches.

    Returns the best model, the samples per second of each epoch, and the optimiser steps.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback

    class _Timer(Callback):
        def __init__(self) -> None:
            self.rates: list[float] = []
            self.started = 0.0
            self.samples = 0

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.started, self.samples = time.perf_counter(), 0

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            self.samples += int(batch["image"].shape[0])

        def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            if self.samples:
                self.rates.append(self.samples / (time.perf_counter() - self.started))
                self.samples = 0

    class _Best(Callback):
        """ModelCheckpoint(monitor="val_loss") kept in memory: Lightning's checkpoint writer
        imports omegaconf, which the antlr4 runtime Dagster needs breaks (see the Makefile)."""

        def __init__(self) -> None:
            self.loss = math.inf
            self.state: dict[str, Tensor] = {}

        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            loss = float(trainer.callback_metrics["val_loss"])
            if loss < self.loss:
                self.loss, self.state = loss, copy.deepcopy(pl_module.state_dict())

    pl.seed_everything(config.seed, verbose=False)
    split = make_split(refs, config)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader: DataLoader[dict[str, Tensor]] = DataLoader(
        _PerDate(ChangeTileDataset(split.train, augment=config.augment)),
        batch_size=config.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=0,
    )
    val_loader: DataLoader[dict[str, Tensor]] = DataLoader(
        _PerDate(ChangeTileDataset(split.val)), batch_size=config.batch_size, num_workers=0
    )
    task = _reference_task(refs[0].index.bands, config)
    timer = _Timer()
    best = _Best()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=config.epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[timer, best],
    )
    trainer.fit(task, train_loader, val_loader)
    task.load_state_dict(best.state)
    return task.model.eval(), timer.rates, int(trainer.global_step)


def score(model: nn.Module, specs: Sequence[CDSceneSpec], size: int, work: Path) -> float:
    """Pooled F1 of ``model``'s change maps against the labels of ``specs``."""
    tp = fp = fn = 0
    for spec in specs:
        scene = cached_scene(spec, size)
        with open_scene(scene) as pair:
            index = tile_scene(
                pair, work / f"stats-{spec.scene_id}", TilingConfig(), spec.scene_id, "b", "0", {}
            )
            out = work / f"map-{spec.scene_id}.tif"
            predict_scene(
                pair,
                model,
                index.pre_stats,
                index.post_stats,
                InferenceConfig(device="cpu"),
                out,
                torch.device("cpu"),
                2**5,
            )
            label = pair.read_rows(0, pair.height)
        with rasterio.open(out) as src:
            mask = src.read(2)
        assert label.label is not None
        labelled = (label.label != 255) & label.valid
        changed, truth = mask == 1, label.label == 1
        tp += int(np.count_nonzero(changed & truth & labelled))
        fp += int(np.count_nonzero(changed & ~truth & labelled))
        fn += int(np.count_nonzero(~changed & truth & labelled))
    return 2 * tp / max(2 * tp + fp + fn, 1)


def bench_cd_vs_torchgeo(
    size: int = 384,
    epochs: int = 40,
    seeds: int = 5,
    held_out: Sequence[str] = HELD_OUT,
) -> list[BenchResult]:
    """Mean held-out F1 and training throughput of the chain and of TorchGeo, ``seeds`` each."""
    train_specs = [s for s in DEMO_CD_SCENES if s.scene_id not in held_out]
    test_specs = [s for s in (*DEMO_CD_SCENES, *DEMO_CD_EVAL_SCENES) if s.scene_id in held_out]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-cd-tg-") as tmp:
        work = Path(tmp)
        refs = tile_demo_scenes(train_specs, size, TilingConfig(), work / "tiles")
        for seed in range(seeds):
            config = bench_config(epochs, seed)
            chain = train_change_model(refs, config)
            chain_f1 = score(chain.model, test_specs, size, work / f"chain-{seed}")
            model, rates, steps = train_reference(refs, config)
            reference_f1 = score(model, test_specs, size, work / f"ref-{seed}")
            runs.append(
                {
                    "seed": seed,
                    "chain_f1": chain_f1,
                    "reference_f1": reference_f1,
                    "chain_rate": statistics.median(m.samples_per_second for m in chain.history),
                    "reference_rate": statistics.median(rates),
                    "chain_best_epoch": chain.best.epoch,
                    "steps": steps,
                    "train_tiles": chain.train_tiles,
                }
            )
    differences = [r["chain_f1"] - r["reference_f1"] for r in runs]
    spread = statistics.stdev(differences) / math.sqrt(len(runs)) if len(runs) > 1 else math.nan
    chain_f1 = statistics.mean(r["chain_f1"] for r in runs)
    reference_f1 = statistics.mean(r["reference_f1"] for r in runs)
    chain_rate = statistics.mean(r["chain_rate"] for r in runs)
    reference_rate = statistics.mean(r["reference_rate"] for r in runs)
    setup = (
        f"{len(train_specs)} demo scenes at {size} px ({runs[0]['train_tiles']} training tiles), "
        f"{runs[0]['steps']} steps, {seeds} seed(s); held out: {', '.join(held_out)}"
    )
    details = {"runs": runs, "size": size, "epochs": epochs, "held_out": list(held_out)}
    return [
        BenchResult(
            name="cd vs torchgeo: held-out F1 (chain vs ChangeDetectionTask)",
            unit="F1",
            measured=chain_f1,
            reference=reference_f1,
            target=Target("difference", ">=", -0.01),
            note=f"mean over seeds, paired difference {chain_f1 - reference_f1:+.3f} "
            f"(standard error {spread:.3f}); {setup}",
            details=details,
        ),
        BenchResult(
            name="cd vs torchgeo: training throughput",
            unit="samples/s",
            measured=chain_rate,
            reference=reference_rate,
            ratio=ratio(chain_rate, reference_rate),
            target=Target("ratio", ">=", 0.9),
            note=f"median epoch, mean over seeds; {setup}",
            details=details,
        ),
    ]
