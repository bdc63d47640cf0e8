"""Run configuration of the change-detection assets: a preset plus optional overrides.

Each Dagster `Config` here converts into a frozen dataclass of the pure core (`to_core`), so
the core never sees Dagster and the UI's launchpad shows every knob with its description. An
unset override (None) keeps the preset's value.
"""

import enum
from collections.abc import Mapping
from typing import Any

import dagster as dg
from pydantic import Field

from mlops_assets.core.aliases import CHAMPION
from mlops_assets.core.cd.config import (
    GateConfig,
    InferenceConfig,
    TilingConfig,
    TrainConfig,
    preset,
    scaled,
)

DEFAULT_MODEL_NAME = "change-detection-unet"
EXPERIMENT = "change-detection"


class Preset(enum.StrEnum):
    """Named settings: tiny (tests, seconds), default (demo, CPU minutes), quality (GPU)."""

    # Dagster's launchpad shows member names: keep them identical to the values.
    tiny = "tiny"
    default = "default"
    quality = "quality"


class Device(enum.StrEnum):
    """Where tensors live: ``auto`` is CUDA when present."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


PRESET_FIELD = Field(default=Preset.default, description=Preset.__doc__)


class TilesConfig(dg.Config):
    """How ``cd/tiles`` cuts a scene."""

    preset: Preset = PRESET_FIELD
    tile_size: int | None = Field(default=None, description="Window side in pixels.")
    overlap: int | None = Field(default=None, description="Overlap between windows in pixels.")
    max_nodata_fraction: float | None = Field(
        default=None, description="Windows with more nodata than this are dropped."
    )
    min_label_fraction: float = Field(
        default=0.001, description="Label-balance check: least share of changed labelled pixels."
    )
    max_label_fraction: float = Field(
        default=0.5, description="Label-balance check: largest share of changed labelled pixels."
    )
    max_residual_px: float = Field(
        default=1.0,
        description="Alignment check: largest median shift of post against pre (pixels).",
    )
    min_alignment_windows: int = Field(
        default=5,
        description="Alignment check: fewer windows with a distinct correlation peak than this "
        "is inconclusive (a warning, not a failure).",
    )

    def to_core(self) -> TilingConfig:
        """The core tiling config."""
        return preset(
            TilingConfig,
            self.preset.value,
            tile_size=self.tile_size,
            overlap=self.overlap,
            max_nodata_fraction=self.max_nodata_fraction,
        )


class Split(enum.StrEnum):
    """How ``cd/model`` holds out validation: spatial blocks of every scene, or whole scenes."""

    block = "block"
    scene = "scene"


class ParamsFrom(enum.StrEnum):
    """Where cd/model's settings come from: the preset, or its newest cd/sweep's best trial."""

    preset = "preset"
    sweep = "sweep"


class ModelConfig(dg.Config):
    """How ``cd/model`` trains."""

    preset: Preset = PRESET_FIELD
    params_from: ParamsFrom = Field(
        default=ParamsFrom.preset,
        description=f"{ParamsFrom.__doc__} With sweep, the sweep's best params replace the "
        "preset's; the overrides below still win; the version is tagged with the sweep run.",
    )
    sweep_study: str | None = Field(
        default=None,
        description="With params_from=sweep: the study to read (default: the newest sweep of "
        "this preset; a sweep of another preset is never used).",
    )
    epochs: int | None = Field(default=None, description="Training epochs.")
    batch_size: int | None = Field(default=None, description="Tiles per batch.")
    learning_rate: float | None = Field(default=None, description="AdamW learning rate.")
    seed: int | None = Field(default=None, description="Seed for weights, split and batches.")
    device: Device | None = Field(default=None, description=Device.__doc__)
    split: Split | None = Field(default=None, description=Split.__doc__)
    val_scenes: list[str] | None = Field(
        default=None,
        description="With split=scene: the validation scenes, ids or patterns such as "
        "'levircd-val-*' (default: whole scenes picked by seed up to val_fraction).",
    )
    val_fraction: float | None = Field(
        default=None, description="Share of labelled tiles held out for validation."
    )
    patience: int | None = Field(
        default=None,
        description="Stop after this many epochs without a better validation F1 (0: never); the "
        "best epoch's weights are kept.",
    )
    num_threads: int | None = Field(
        default=None, description="PyTorch CPU threads while training (0: one per core)."
    )
    scale: float = Field(
        default=1.0,
        gt=0,
        description="Multiplies the epoch counts (after the preset and epochs): 0.5 trains half "
        "as long, for a quick look at real data.",
    )

    def to_core(self, tuned: Mapping[str, Any] | None = None) -> TrainConfig:
        """The core training config (epoch counts times ``scale``).

        ``tuned`` (a sweep's best params, `TrainConfig` fields) replaces the preset's values; the
        overrides set here win over both.
        """
        explicit = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "seed": self.seed,
            "device": None if self.device is None else self.device.value,
            "split": None if self.split is None else self.split.value,
            "val_scenes": None if self.val_scenes is None else tuple(self.val_scenes),
            "val_fraction": self.val_fraction,
            "patience": self.patience,
            "num_threads": self.num_threads,
        }
        given = {k: v for k, v in explicit.items() if v is not None}
        config = preset(TrainConfig, self.preset.value, **{**(tuned or {}), **given})
        return config if self.scale == 1.0 else scaled(config, self.scale)


class RegistrationConfig(dg.Config):
    """How ``cd/registered_model`` gates, registers and promotes."""

    preset: Preset = PRESET_FIELD
    model_name: str = Field(default=DEFAULT_MODEL_NAME, description="Registered model name.")
    min_f1: float | None = Field(default=None, description="Least validation F1 to register.")
    tolerance: float | None = Field(
        default=None, description="How much worse than the champion's F1 is still accepted."
    )
    auto_promote: bool | None = Field(
        default=None, description="Move the champion alias when the gate passes."
    )

    def to_core(self) -> GateConfig:
        """The core gate config."""
        return preset(
            GateConfig,
            self.preset.value,
            min_f1=self.min_f1,
            tolerance=self.tolerance,
            auto_promote=self.auto_promote,
        )


class ChangeMapConfig(dg.Config):
    """Which model ``cd/change_map`` uses and how it slides over the scene."""

    preset: Preset = PRESET_FIELD
    model_name: str = Field(default=DEFAULT_MODEL_NAME, description="Registered model name.")
    alias: str = Field(default=CHAMPION, description="Alias of the version to use.")
    tile_size: int | None = Field(default=None, description="Inference window side in pixels.")
    overlap: int | None = Field(default=None, description="Blended overlap in pixels.")
    threshold: float | None = Field(default=None, description="Probability for 'changed'.")
    device: Device | None = Field(default=None, description=Device.__doc__)

    def to_core(self) -> InferenceConfig:
        """The core inference config."""
        return preset(
            InferenceConfig,
            self.preset.value,
            tile_size=self.tile_size,
            overlap=self.overlap,
            threshold=self.threshold,
            device=None if self.device is None else self.device.value,
        )
