"""Typed, frozen configuration of 3D Gaussian Splatting training, with named presets.

Defaults follow gsplat's ``examples/simple_trainer.py`` (``Config`` and ``DefaultStrategy``);
``tiny`` keeps tests and CPU runs to minutes on images of at most 64 px, ``default`` is what the
demo trains on a CPU, and ``quality`` is simple_trainer's 30k-step schedule for a GPU. `scaled`
shrinks every step count with one factor, as simple_trainer's ``adjust_steps`` does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

NVSPresetName = Literal["tiny", "default", "quality"]


@dataclass(frozen=True)
class NVSTrainConfig:
    """How Gaussians are trained on one posed scene."""

    steps: int = 3_000
    batch_size: int = 1
    sh_degree: int = 3
    sh_degree_interval: int = 1_000  # raise the SH degree in use every this many steps
    ssim_lambda: float = 0.2  # loss = (1 - l) * L1 + l * (1 - SSIM)
    init_opacity: float = 0.1
    init_scale: float = 1.0
    # Per-parameter Adam learning rates, as simple_trainer (means are times the scene scale and
    # decay exponentially to ``means_lr_final`` of their start over the run).
    means_lr: float = 1.6e-4
    means_lr_final: float = 0.01
    scales_lr: float = 5e-3
    quats_lr: float = 1e-3
    opacities_lr: float = 5e-2
    sh0_lr: float = 2.5e-3
    shN_lr: float = 2.5e-3 / 20  # noqa: N815 - gsplat's parameter name
    # Densification: "default" is gsplat's DefaultStrategy (CPU and CUDA), "mcmc" its MCMCStrategy
    # (CUDA only: its relocation kernel has no CPU implementation).
    strategy: Literal["default", "mcmc"] = "default"
    prune_opa: float = 0.005
    grow_grad2d: float = 0.0002
    grow_scale3d: float = 0.01
    prune_scale3d: float = 0.1
    refine_start_iter: int = 500
    refine_stop_iter: int = 15_000
    reset_every: int = 3_000
    refine_every: int = 100
    cap_max: int = 1_000_000  # MCMC: the most Gaussians
    mcmc_noise_lr: float = 5e5
    mcmc_opacity_reg: float = 0.01
    mcmc_scale_reg: float = 0.01
    # Data.
    downscale: int = 1  # integer image downscale factor (intrinsics scaled to match)
    max_image_size: int | None = None  # then shrink further so the longer side fits
    holdout_every: int = 8  # every n-th image, sorted by name, is held out for evaluation
    background: tuple[float, float, float] | Literal["auto"] = "auto"  # "auto": see data.py
    # Bookkeeping.
    eval_every: int = 1_000  # held-out PSNR/SSIM (and the divergence check on them)
    log_every: int = 100
    checkpoint_every: int = 500  # the last good checkpoint kept for a divergence
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_tile_size: int = 8  # the CPU rasteriser's tile side (8 measured faster than 16 at 64 px)
    # PyTorch CPU threads while training (0: PyTorch's default, one per core). The CPU
    # rasteriser's work at demo sizes is too small to share: 2 threads on 2 cores cost about 4x
    # the CPU time of 1 for the same wall time, and starve whatever runs beside it.
    num_threads: int = 1
    # Divergence guard: a non-finite loss, or held-out PSNR this many dB below the best so far.
    psnr_collapse_db: float = 10.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if not 0 <= self.sh_degree <= 4:
            raise ValueError(f"sh_degree must be in 0..4, got {self.sh_degree}")
        if not 0.0 <= self.ssim_lambda <= 1.0:
            raise ValueError(f"ssim_lambda must be in [0, 1], got {self.ssim_lambda}")
        if self.downscale < 1:
            raise ValueError(f"downscale must be a positive integer, got {self.downscale}")
        if self.max_image_size is not None and self.max_image_size < 8:
            raise ValueError(f"max_image_size must be at least 8 px, got {self.max_image_size}")
        if self.holdout_every < 2:
            raise ValueError(f"holdout_every must be at least 2, got {self.holdout_every}")
        if min(self.sh_degree_interval, self.refine_every, self.reset_every) < 1:
            raise ValueError("sh_degree_interval, refine_every and reset_every must be >= 1")
        if min(self.eval_every, self.log_every, self.checkpoint_every) < 1:
            raise ValueError("eval_every, log_every and checkpoint_every must be >= 1")
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0 (0: one per core), got {self.num_threads}")

    @property
    def num_sh_bases(self) -> int:
        """K = (sh_degree + 1) ** 2 SH coefficients per colour channel."""
        return (self.sh_degree + 1) ** 2

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for MLflow params and metadata)."""
        return dataclasses.asdict(self)


def scaled(config: NVSTrainConfig, factor: float) -> NVSTrainConfig:
    """``config`` with every step count times ``factor`` (simple_trainer's ``adjust_steps``)."""

    def s(steps: int) -> int:
        return max(1, int(steps * factor))

    return dataclasses.replace(
        config,
        steps=s(config.steps),
        sh_degree_interval=s(config.sh_degree_interval),
        refine_start_iter=s(config.refine_start_iter),
        refine_stop_iter=s(config.refine_stop_iter),
        reset_every=s(config.reset_every),
        refine_every=s(config.refine_every),
        eval_every=s(config.eval_every),
        log_every=s(config.log_every),
        checkpoint_every=s(config.checkpoint_every),
    )


NVS_PRESETS: dict[NVSPresetName, NVSTrainConfig] = {
    # Tests and CPU runs: images of at most 64 px; a few CPU minutes.
    "tiny": NVSTrainConfig(
        steps=600,
        sh_degree=0,  # view-independent colour: the demo scenes' lighting is fixed
        sh_degree_interval=200,
        max_image_size=64,
        # A run 50x shorter than simple_trainer's: 4x its learning rates (measured on the demo
        # globe at 64 px, 150 steps: held-out PSNR 27.5 dB against 17.9 with the defaults).
        means_lr=6.4e-4,
        scales_lr=2e-2,
        quats_lr=4e-3,
        sh0_lr=1e-2,
        shN_lr=1e-2 / 20,
        # Fewer, larger Gaussians generalise better to the held-out views of the demo captures
        # and cost less: grown at 3x simple_trainer's gradient threshold and only until step 300,
        # held-out PSNR went from 34.23 / 30.27 / 29.97 dB (globe / ring / toy-blocks, 13.7k to
        # 15.7k Gaussians) to 34.30 / 31.35 / 30.24 dB with 3.7k to 4.2k Gaussians, in about
        # 60% of the CPU time (benchmarks/RESULTS.md, "make demo in minutes").
        grow_grad2d=0.0006,
        refine_start_iter=100,
        refine_stop_iter=300,
        reset_every=100_000,  # no opacity reset in a short run
        refine_every=50,
        eval_every=150,
        log_every=50,
        checkpoint_every=150,
    ),
    # The demo on a CPU: images of at most 128 px, the tiny preset's learning rates, 2.5x longer.
    "default": NVSTrainConfig(
        steps=1_500,
        sh_degree=1,
        sh_degree_interval=500,
        max_image_size=128,
        means_lr=6.4e-4,
        scales_lr=2e-2,
        quats_lr=4e-3,
        sh0_lr=1e-2,
        shN_lr=1e-2 / 20,
        refine_start_iter=100,
        refine_stop_iter=1_200,
        reset_every=100_000,
        refine_every=100,
        eval_every=500,
        log_every=100,
        checkpoint_every=500,
    ),
    # simple_trainer's defaults on a GPU.
    "quality": NVSTrainConfig(
        steps=30_000,
        sh_degree=3,
        sh_degree_interval=1_000,
        refine_start_iter=500,
        refine_stop_iter=15_000,
        reset_every=3_000,
        eval_every=7_000,
        log_every=100,
        checkpoint_every=7_000,
    ),
}


def nvs_preset(name: str, **overrides: Any) -> NVSTrainConfig:
    """The ``name`` preset with ``overrides`` applied (None values ignored)."""
    if name not in NVS_PRESETS:
        raise ValueError(f"unknown NVS preset {name!r}: choose one of {', '.join(NVS_PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(NVS_PRESETS[name], **changes)  # type: ignore[index]
