"""Typed, frozen configuration of the change-detection chain, with named presets.

``tiny`` keeps tests to seconds, ``default`` is what ``make demo`` runs on a CPU in minutes, and
``quality`` is for real data on a GPU. `scaled` shrinks every step count by one knob, as gsplat's
trainer does with ``steps_scaler``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

PresetName = Literal["tiny", "default", "quality"]
C = TypeVar("C")


def config_hash(config: object) -> str:
    """A short, stable hash of a dataclass config (for idempotent output keys)."""
    body = json.dumps(dataclasses.asdict(config), sort_keys=True)  # type: ignore[call-overload]
    return hashlib.sha256(body.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TilingConfig:
    """How a scene is cut into training windows."""

    tile_size: int = 128
    overlap: int = 32
    max_nodata_fraction: float = 0.25
    resampling: Literal["nearest", "bilinear", "cubic"] = "bilinear"
    alignment_samples: int = 12  # tiles used to estimate the pre/post alignment residual
    # Each sampled tile is measured in windows of this side overlapping by half; a window
    # votes when its phase-correlation peak-to-sidelobe ratio reaches the confidence below.
    # Unrelated real windows (other places, other dates) measured mostly under 10 (99th
    # percentile 7-11 at 32 and 64 px); benchmarks/RESULTS.md has the table.
    alignment_window: int = 64
    alignment_min_confidence: float = 10.0

    def __post_init__(self) -> None:
        if self.tile_size < 16 or self.tile_size % 16:
            raise ValueError(f"tile_size {self.tile_size} must be a multiple of 16, at least 16")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(f"overlap {self.overlap} must be in [0, tile_size)")
        if not 0.0 <= self.max_nodata_fraction <= 1.0:
            raise ValueError(f"max_nodata_fraction {self.max_nodata_fraction} must be in [0, 1]")
        if self.alignment_window < 16:
            raise ValueError(f"alignment_window {self.alignment_window} must be at least 16")

    @property
    def stride(self) -> int:
        """Distance between the origins of neighbouring windows."""
        return self.tile_size - self.overlap


@dataclass(frozen=True)
class TrainConfig:
    """How the U-Net is trained."""

    # A RegNetX-200MF encoder cut at depth 4 (448k parameters with the slim decoder). Measured
    # on 2 CPU cores, 128 px tiles, batch 8: 32.3 samples/s against 9.6 for ResNet-18 with the
    # (128, 64, 32, 16) decoder, and validation F1 0.892 against 0.884 on the 512 px demo scenes.
    # ``tu-`` is timm's universal encoder: same layers, same initialisation and the same per-epoch
    # validation F1 as smp's deprecated ``timm-regnetx_002`` (identical over 3 epochs on the demo).
    encoder: str = "tu-regnetx_002"
    encoder_depth: int = 4
    decoder_channels: tuple[int, ...] = (64, 32, 16, 8)
    epochs: int = 40
    batch_size: int = 8
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    # Linear warm-up of the learning rate (epochs), then cosine decay to 0, stepped per batch.
    warmup_epochs: float = 0.0
    # When > 0, an exponential moving average of the weights and BatchNorm buffers, updated every
    # step, is what is scored and kept. Off by default: on the demo scenes, 2 warm-up epochs and
    # a decay of 0.98 gave a best F1 of 0.938, and with weight decay 0.05 0.939, against 0.939
    # without (benchmarks/RESULTS.md).
    ema_decay: float = 0.0
    # Early stopping: end training when validation F1 has not beaten the best by more than
    # ``min_delta`` for ``patience`` epochs counted after epoch ``min_epochs`` (F1 swings while
    # the learning rate is high), 0: run every epoch; the best epoch's weights are kept either
    # way. The schedule still spans ``epochs``.
    patience: int = 0
    min_delta: float = 0.0
    min_epochs: int = 0
    # PyTorch CPU threads while training (0: PyTorch's default, one per core). One thread leaves
    # the other core to work running beside it (the demo trains NVS captures meanwhile).
    num_threads: int = 0
    # "block": validation takes spatial blocks of every scene; "scene": whole scenes, named
    # (ids or patterns such as "levircd-val-*") or, without val_scenes, picked by seed until
    # val_fraction of the labelled tiles.
    split: Literal["block", "scene"] = "block"
    val_fraction: float = 0.25
    val_scenes: tuple[str, ...] = ()
    block_tiles: int = 4  # side of a split block, in tile strides
    augment: bool = True
    threshold: float = 0.5
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    overlay_images: int = 4  # validation predictions logged as images

    def __post_init__(self) -> None:
        if len(self.decoder_channels) != self.encoder_depth:
            raise ValueError(
                f"decoder_channels has {len(self.decoder_channels)} entries; "
                f"encoder_depth is {self.encoder_depth}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay {self.ema_decay} must be in [0, 1)")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs {self.warmup_epochs} must be >= 0")
        if min(self.patience, self.min_delta, self.min_epochs, self.num_threads) < 0:
            raise ValueError(
                f"patience ({self.patience}), min_delta ({self.min_delta}), min_epochs "
                f"({self.min_epochs}) and num_threads ({self.num_threads}) must be >= 0"
            )
        if self.val_scenes and self.split != "scene":
            raise ValueError("val_scenes needs split='scene'")


@dataclass(frozen=True)
class InferenceConfig:
    """How a change map is predicted over a whole scene."""

    tile_size: int = 256
    overlap: int = 64
    batch_size: int = 4
    threshold: float = 0.5
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < self.tile_size // 2 + 1:
            raise ValueError(f"overlap {self.overlap} must be in [0, tile_size / 2]")


@dataclass(frozen=True)
class GateConfig:
    """When a trained model is registered and promoted."""

    min_f1: float = 0.8
    tolerance: float = 0.02  # may be this much worse than the champion and still pass
    auto_promote: bool = True


PRESETS: dict[PresetName, dict[type[Any], Any]] = {
    "tiny": {
        TilingConfig: TilingConfig(
            tile_size=64, overlap=16, alignment_samples=4, alignment_window=32
        ),
        TrainConfig: TrainConfig(
            encoder_depth=3,
            decoder_channels=(16, 8, 8),
            epochs=2,
            batch_size=4,
            overlay_images=2,
        ),
        InferenceConfig: InferenceConfig(tile_size=64, overlap=16),
        GateConfig: GateConfig(min_f1=0.0),
    },
    "default": {
        TilingConfig: TilingConfig(),
        # On the demo scenes (1 CPU thread) validation F1 reached 0.960 in epoch 23, swung
        # between 0.934 and 0.958 for the next five and gained 0.001 in the 12 after: 5 epochs
        # without a gain, counted from epoch 20, stop after 28 epochs instead of 40 (the same
        # with 2 threads; benchmarks/RESULTS.md, "make demo in minutes").
        TrainConfig: TrainConfig(patience=5, min_epochs=20),
        InferenceConfig: InferenceConfig(),
        GateConfig: GateConfig(),
    },
    "quality": {
        TilingConfig: TilingConfig(tile_size=256, overlap=64),
        TrainConfig: TrainConfig(
            encoder="resnet34",
            encoder_depth=5,
            decoder_channels=(256, 128, 64, 32, 16),
            epochs=100,
            batch_size=16,
        ),
        InferenceConfig: InferenceConfig(tile_size=512, overlap=128, batch_size=8),
        GateConfig: GateConfig(min_f1=0.9),
    },
}


def preset(kind: type[C], name: str, **overrides: Any) -> C:
    """The ``name`` preset of config class ``kind``, with ``overrides`` (None values ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    base = PRESETS[name][kind]  # type: ignore[index]
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(base, **changes)


def scaled(config: TrainConfig, factor: float) -> TrainConfig:
    """``config`` with its epoch counts scaled by ``factor`` (at least one epoch)."""
    return dataclasses.replace(
        config,
        epochs=max(1, round(config.epochs * factor)),
        min_epochs=round(config.min_epochs * factor),
    )
