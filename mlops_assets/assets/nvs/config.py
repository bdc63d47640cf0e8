"""Run configuration of the novel-view-synthesis assets: a preset plus optional overrides.

As for change detection, each Dagster `Config` converts into the pure core's frozen dataclass
(`to_core`); an unset override (None) keeps the preset's value.
"""

import enum

import dagster as dg
from pydantic import Field

from mlops_assets.core.aliases import CHAMPION
from mlops_assets.core.nvs.config import NVSTrainConfig, nvs_preset, scaled

DEFAULT_MODEL_NAME = "gaussian-splats"
EXPERIMENT = "novel-view-synthesis"


class NVSPreset(enum.StrEnum):
    """Named settings: tiny (tests, CPU minutes), default (demo), quality (30k steps, GPU)."""

    # Dagster's launchpad shows member names: keep them identical to the values.
    tiny = "tiny"
    default = "default"
    quality = "quality"


class NVSDevice(enum.StrEnum):
    """Where training runs: ``auto`` is CUDA (gsplat's rasteriser) when present, else the CPU."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Strategy(enum.StrEnum):
    """gsplat's densification strategy (``mcmc`` needs CUDA)."""

    default = "default"
    mcmc = "mcmc"


class SplatsConfig(dg.Config):
    """How `nvs/splats` trains one scene."""

    preset: NVSPreset = Field(default=NVSPreset.tiny, description="tiny, default or quality.")
    steps: int | None = Field(default=None, description="Training steps (preset if unset).")
    sh_degree: int | None = Field(default=None, description="Spherical-harmonics degree, 0..4.")
    strategy: Strategy | None = Field(default=None, description="Densification strategy.")
    downscale: int | None = Field(default=None, description="Integer image downscale factor.")
    max_image_size: int | None = Field(
        default=None, description="Longest image side in pixels after downscaling."
    )
    device: NVSDevice = Field(default=NVSDevice.auto, description="auto, cpu or cuda.")
    seed: int = Field(default=42, description="Random seed.")
    num_threads: int | None = Field(
        default=None, description="PyTorch CPU threads while training (0: one per core)."
    )
    model_name: str = Field(
        default=DEFAULT_MODEL_NAME,
        description="Registered model whose champion-<scene> the held-out views are compared "
        "with: the model_name nvs/registered_splats registers into.",
    )

    scale: float = Field(
        default=1.0,
        gt=0,
        description="Multiplies every step count (after the preset and steps), as gsplat's "
        "steps_scaler does: 0.5 trains half as long.",
    )

    def to_core(self) -> NVSTrainConfig:
        """The core training configuration (every step count times ``scale``)."""
        config = nvs_preset(
            self.preset.value,
            steps=self.steps,
            sh_degree=self.sh_degree,
            strategy=None if self.strategy is None else self.strategy.value,
            downscale=self.downscale,
            max_image_size=self.max_image_size,
            device=self.device.value,
            seed=self.seed,
            num_threads=self.num_threads,
        )
        return config if self.scale == 1.0 else scaled(config, self.scale)


class SplatsRegistrationConfig(dg.Config):
    """The PSNR gate in front of the registry."""

    model_name: str = Field(default=DEFAULT_MODEL_NAME, description="Registered model name.")
    min_psnr: float = Field(default=20.0, description="Held-out PSNR (dB) a version must reach.")
    tolerance_db: float = Field(
        default=0.5, description="How far (dB) below the scene's champion a version may be."
    )
    auto_promote: bool = Field(
        default=True, description="Move the scene's champion alias when the gate passes."
    )


class RenderConfig(dg.Config):
    """What `nvs/render` renders and from which registered version."""

    model_name: str = Field(default=DEFAULT_MODEL_NAME, description="Registered model name.")
    alias: str = Field(
        default=CHAMPION,
        description="Alias to render (scoped to the scene: champion -> champion-<scene_id>).",
    )
    frames: int = Field(default=60, description="Frames in the orbit video.")
    fps: int = Field(default=24, description="Frames per second of the orbit video.")
    width: int | None = Field(
        default=None, description="Video width in pixels (the training views' width if unset)."
    )
    height: int | None = Field(
        default=None, description="Video height in pixels (the training views' if unset)."
    )
    elevation_deg: float | None = Field(
        default=None,
        description="Orbit elevation in degrees above the centre (the capture's if unset).",
    )
