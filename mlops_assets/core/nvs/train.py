"""Training 3D Gaussian Splatting: gsplat's CUDA rasteriser where CUDA exists, ours elsewhere.

`train_splats` follows gsplat's ``examples/simple_trainer.py``: per-parameter Adam (means' learning
rate times the scene scale, decaying exponentially to 1% over the run), L1 + SSIM loss, the SH
degree raised every ``sh_degree_interval`` steps, and densification by gsplat's own strategies
with their state created by ``initialize_state()`` and passed in. On CUDA it renders with
``gsplat.rasterization``; on a CPU with `raster_cpu.render`, which returns the same ``info`` keys so
gsplat's `DefaultStrategy` densifies there too (`MCMCStrategy` needs CUDA). Held-out views are
scored with torchmetrics (PSNR, SSIM). A non-finite loss or a collapse of held-out PSNR stops
training with `DivergenceError`, naming the step and the last good checkpoint on disk. Running out
of device memory (typically while densifying) stops it with `SplatsOutOfMemoryError`, naming the
step, the phase, the Gaussian count and the same checkpoint, with the device memory released.
"""

from __future__ import annotations

import math
import re
import resource
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from gsplat.strategy import DefaultStrategy, MCMCStrategy
from numpy.typing import NDArray
from torch import Tensor
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from mlops_assets.core.compute import seed_everything, select_device, torch_threads
from mlops_assets.core.nvs import raster_cpu
from mlops_assets.core.nvs.config import NVSTrainConfig
from mlops_assets.core.nvs.data import NVSDataset, NVSView
from mlops_assets.core.nvs.gaussians import SPLAT_KEYS, Splats, init_splats, sh_coefficients

Metrics = dict[str, float]
Render = tuple[str, NDArray[np.uint8]]  # (view name, ground truth | render side by side)

CHECKPOINT_NAME = "last_good.pt"


class NVSTrainingError(RuntimeError):
    """Training cannot start (bad configuration for this machine or data)."""


class DivergenceError(NVSTrainingError):
    """Training diverged; ``step`` is where, ``checkpoint`` the last good state (or None)."""

    def __init__(self, message: str, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


class SplatsOutOfMemoryError(NVSTrainingError):
    """The device ran out of memory at ``step`` (in ``phase``) with ``num_gaussians`` Gaussians.

    ``reason`` is the message without the checkpoint clause (for callers that keep the checkpoint
    elsewhere); ``checkpoint`` is the last good state on disk, written at ``checkpoint_step``.
    """

    def __init__(
        self,
        reason: str,
        *,
        step: int,
        phase: str,
        num_gaussians: int,
        checkpoint: Path | None,
        checkpoint_step: int | None,
    ) -> None:
        where = (
            f"last good checkpoint (step {checkpoint_step}): {checkpoint}"
            if checkpoint is not None
            else "no checkpoint_dir was given, so no checkpoint was kept"
        )
        super().__init__(f"{reason}; {where}")
        self.reason = reason
        self.step = step
        self.phase = phase
        self.num_gaussians = num_gaussians
        self.checkpoint = checkpoint
        self.checkpoint_step = checkpoint_step


@dataclass
class _Progress:
    """Where training is, for errors that surface outside the loop (running out of memory)."""

    step: int = 0
    phase: str = "setup"
    num_gaussians: int = 0
    image_size: tuple[int, int] = (0, 0)
    checkpoint: Path | None = None
    checkpoint_step: int | None = None


class Rasterizer(Protocol):
    """Renders splats from a batch of cameras: (images [C,H,W,3], alphas [C,H,W,1], info)."""

    def __call__(
        self,
        splats: Splats,
        viewmats: Tensor,  # [C, 4, 4]
        Ks: Tensor,  # [C, 3, 3]  # noqa: N803 - gsplat's name
        width: int,
        height: int,
        sh_degree: int,
        background: Tensor,  # [3]
    ) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """Render ``splats`` from each camera."""
        ...


@dataclass(frozen=True)
class EvalMetrics:
    """Held-out quality at one step (means over the held-out views)."""

    step: int
    psnr: float
    ssim: float
    views: int
    num_gaussians: int


@dataclass
class TrainResult:
    """Trained splats (CPU, gsplat's layout), how they were trained and how well they do."""

    splats: torch.nn.ParameterDict
    config: NVSTrainConfig
    steps_done: int
    num_gaussians: int
    psnr: float | None  # held-out, at the end (None without held-out views)
    ssim: float | None
    seconds: float  # the training loop, evaluation excluded
    seconds_per_step: float
    cpu_seconds: float  # process CPU time of the loop (all threads): steadier on a shared machine
    peak_rss_mb: float
    peak_vram_mb: float | None
    device: str
    rasterizer: str  # "gsplat-cuda" or "torch-cpu"
    background: tuple[float, float, float]
    history: list[Metrics] = field(default_factory=lambda: list[Metrics]())
    evals: list[EvalMetrics] = field(default_factory=lambda: list[EvalMetrics]())
    renders: list[Render] = field(default_factory=lambda: list[Render]())

    @property
    def steps_per_second(self) -> float:
        """Training steps per second."""
        return 1.0 / self.seconds_per_step if self.seconds_per_step else 0.0

    def metrics(self) -> Metrics:
        """The summary figures, for logging."""
        out: Metrics = {
            "steps_done": float(self.steps_done),
            "num_gaussians": float(self.num_gaussians),
            "train_seconds": self.seconds,
            "seconds_per_step": self.seconds_per_step,
            "steps_per_second": self.steps_per_second,
            "cpu_seconds": self.cpu_seconds,
            "peak_rss_mb": self.peak_rss_mb,
        }
        if self.psnr is not None and self.ssim is not None:
            out |= {"psnr": self.psnr, "ssim": self.ssim}
        if self.peak_vram_mb is not None:
            out["peak_vram_mb"] = self.peak_vram_mb
        return out


# Rasterisers ---------------------------------------------------------------------------------


def gsplat_rasterizer(
    splats: Splats,
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]  # noqa: N803 - gsplat's name
    width: int,
    height: int,
    sh_degree: int,
    background: Tensor,  # [3]
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """``gsplat.rasterization`` called as simple_trainer calls it (CUDA only)."""
    from gsplat import rasterization

    colors, alphas, info = rasterization(
        means=splats["means"],
        quats=splats["quats"],
        scales=torch.exp(splats["scales"]),
        opacities=torch.sigmoid(splats["opacities"]),
        colors=sh_coefficients(splats),
        viewmats=viewmats,
        Ks=Ks,
        width=width,
        height=height,
        sh_degree=sh_degree,
        packed=False,
        backgrounds=background.expand(len(viewmats), 3),
    )
    return colors, alphas, info


def cpu_rasterizer(tile_size: int) -> Rasterizer:
    """`raster_cpu.render` with a fixed tile size, batched over cameras."""

    def rasterize(
        splats: Splats,
        viewmats: Tensor,  # [C, 4, 4]
        Ks: Tensor,  # [C, 3, 3]  # noqa: N803 - gsplat's name
        width: int,
        height: int,
        sh_degree: int,
        background: Tensor,  # [3]
    ) -> tuple[Tensor, Tensor, dict[str, Any]]:
        return raster_cpu.render(
            splats, viewmats, Ks, width, height, sh_degree, background, tile_size=tile_size
        )

    return rasterize


def rasterizer_for(device: torch.device, cpu_tile_size: int) -> Rasterizer:
    """The CUDA rasteriser (gsplat) on a CUDA device, else `cpu_rasterizer` (``cpu_tile_size``)."""
    return gsplat_rasterizer if device.type == "cuda" else cpu_rasterizer(cpu_tile_size)


# Loss, metrics, checkpoints -----------------------------------------------------------------


def photometric_loss(
    renders: Tensor,  # [C, H, W, 3]
    pixels: Tensor,  # [C, H, W, 3]
    ssim_lambda: float,
) -> tuple[Tensor, Metrics]:
    """simple_trainer's loss: (1 - l) * L1 + l * (1 - SSIM)."""
    l1 = torch.nn.functional.l1_loss(renders, pixels)
    ssim = structural_similarity_index_measure(
        renders.permute(0, 3, 1, 2), pixels.permute(0, 3, 1, 2), data_range=1.0
    )
    assert isinstance(ssim, Tensor)
    loss = l1 * (1.0 - ssim_lambda) + (1.0 - ssim) * ssim_lambda
    return loss, {"l1": float(l1.detach()), "ssim": float(ssim.detach())}


def peak_rss_mb() -> float:
    """The process's peak resident set size in MiB (getrusage; bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _side_by_side(truth: Tensor, render: Tensor) -> NDArray[np.uint8]:  # [H, W, 3] each
    both = torch.cat([truth, render.clamp(0, 1)], dim=1)
    return (both.detach().cpu().numpy() * 255 + 0.5).astype(np.uint8)


@torch.no_grad()
def evaluate(
    splats: Splats,
    views: Sequence[NVSView],
    rasterize: Rasterizer,
    sh_degree: int,
    background: Tensor,  # [3]
    device: torch.device,
) -> tuple[float, float, list[Render]]:
    """Mean PSNR and SSIM over ``views`` (per-image, as simple_trainer), and the renders."""
    psnrs: list[float] = []
    ssims: list[float] = []
    renders: list[Render] = []
    for view in views:
        image, _, _ = rasterize(
            splats,
            view.viewmat[None].to(device),
            view.K[None].to(device),
            view.width,
            view.height,
            sh_degree,
            background,
        )
        pred = image.clamp(0, 1).permute(0, 3, 1, 2)
        truth = view.image.to(device)[None].permute(0, 3, 1, 2)
        psnrs.append(float(peak_signal_noise_ratio(pred, truth, data_range=1.0)))
        ssim = structural_similarity_index_measure(pred, truth, data_range=1.0)
        assert isinstance(ssim, Tensor)
        ssims.append(float(ssim))
        renders.append((view.name, _side_by_side(view.image, image[0].cpu())))
    return float(np.mean(psnrs)), float(np.mean(ssims)), renders


def save_checkpoint(path: Path, splats: Splats, step: int, config: NVSTrainConfig) -> Path:
    """Write splats (CPU tensors), the step and the config atomically to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    state = {k: v.detach().cpu().clone() for k, v in splats.items()}
    torch.save({"step": step, "splats": state, "config": config.to_dict()}, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: Path) -> tuple[torch.nn.ParameterDict, int]:
    """Splats and step from a checkpoint written by `save_checkpoint`."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    splats = torch.nn.ParameterDict(
        {k: torch.nn.Parameter(v) for k, v in payload["splats"].items()}
    )
    return splats, int(payload["step"])


# Training -----------------------------------------------------------------------------------


def _optimizers(
    splats: torch.nn.ParameterDict, config: NVSTrainConfig, scene_scale: float
) -> dict[str, torch.optim.Optimizer]:
    """One Adam per parameter, as simple_trainer (learning rates scaled for the batch size)."""
    bs = config.batch_size
    lrs = {
        "means": config.means_lr * scene_scale,
        "scales": config.scales_lr,
        "quats": config.quats_lr,
        "opacities": config.opacities_lr,
        "sh0": config.sh0_lr,
        "shN": config.shN_lr,
    }
    return {
        name: torch.optim.Adam(
            [{"params": splats[name], "lr": lr * math.sqrt(bs), "name": name}],
            eps=1e-15 / math.sqrt(bs),
            betas=(1 - bs * (1 - 0.9), 1 - bs * (1 - 0.999)),
        )
        for name, lr in lrs.items()
    }


def make_strategy(config: NVSTrainConfig) -> DefaultStrategy | MCMCStrategy:
    """The densification strategy ``config`` names, with its parameters."""
    if config.strategy == "mcmc":
        return MCMCStrategy(
            cap_max=config.cap_max,
            noise_lr=config.mcmc_noise_lr,
            refine_start_iter=config.refine_start_iter,
            refine_stop_iter=config.refine_stop_iter,
            refine_every=config.refine_every,
        )
    return DefaultStrategy(
        prune_opa=config.prune_opa,
        grow_grad2d=config.grow_grad2d,
        grow_scale3d=config.grow_scale3d,
        prune_scale3d=config.prune_scale3d,
        refine_start_iter=config.refine_start_iter,
        refine_stop_iter=config.refine_stop_iter,
        reset_every=config.reset_every,
        refine_every=config.refine_every,
    )


def _all_finite(splats: Splats) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in splats.values())


def _out_of_memory(
    exc: torch.OutOfMemoryError, device: torch.device, config: NVSTrainConfig, at: _Progress
) -> SplatsOutOfMemoryError:
    """The error for ``exc``, with the device's memory released first.

    The traceback's finished frames still hold the splats, optimiser state and activations;
    clearing them frees the device memory at once, so a long-lived worker can go on.
    """
    traceback.clear_frames(exc.__traceback__)
    tried = re.search(r"Tried to allocate ([\d.]+ [KMGT]?i?B)", str(exc))
    where = "CUDA" if device.type == "cuda" else device.type.upper()
    memory = ""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        total = torch.cuda.get_device_properties(device).total_memory / 2**20
        memory = f"; peak {peak:,.0f} MiB allocated of the device's {total:,.0f} MiB"
    width, height = at.image_size
    reason = (
        f"{where} out of memory at step {at.step} ({at.phase}) with {at.num_gaussians:,} Gaussians "
        f"on {width}x{height} px images, batch {config.batch_size}"
        + (f" (tried to allocate {tried.group(1)})" if tried else "")
        + memory
        + "; lower max_image_size or downscale, use a smaller preset, or strategy 'mcmc' with a "
        "lower cap_max"
    )
    return SplatsOutOfMemoryError(
        reason,
        step=at.step,
        phase=at.phase,
        num_gaussians=at.num_gaussians,
        checkpoint=at.checkpoint,
        checkpoint_step=at.checkpoint_step,
    )


def train_splats(
    dataset: NVSDataset,
    config: NVSTrainConfig,
    init: Mapping[str, Tensor] | None = None,
    *,
    on_log: Callable[[int, Metrics], None] | None = None,
    on_eval: Callable[[int, Metrics, list[Render]], None] | None = None,
    checkpoint_dir: Path | None = None,
) -> TrainResult:
    """Train Gaussians on ``dataset`` (initialised from its sparse points unless ``init``).

    ``on_log(step, metrics)`` is called every ``log_every`` steps, ``on_eval(step, metrics,
    renders)`` after every held-out evaluation (``eval_every`` steps and at the end). With
    ``checkpoint_dir`` the last good state is kept there as ``last_good.pt``. On the CPU, PyTorch
    uses ``config.num_threads`` threads meanwhile (0: its default).

    Raises:
        NVSTrainingError: no training views, mixed image sizes with ``batch_size > 1``, or the
            MCMC strategy without CUDA.
        DivergenceError: a non-finite loss or parameters, or held-out PSNR more than
            ``psnr_collapse_db`` below its best; the message names the step and the checkpoint.
        SplatsOutOfMemoryError: the device ran out of memory; the message names the step, the
            phase, the Gaussian count and the last good checkpoint (kept on disk).
    """
    progress = _Progress()
    try:
        with torch_threads(config.num_threads):
            return _train(dataset, config, init, on_log, on_eval, checkpoint_dir, progress)
    except torch.OutOfMemoryError as exc:
        raise _out_of_memory(
            exc, select_device(config.device, NVSTrainingError), config, progress
        ) from exc


def _train(
    dataset: NVSDataset,
    config: NVSTrainConfig,
    init: Mapping[str, Tensor] | None,
    on_log: Callable[[int, Metrics], None] | None,
    on_eval: Callable[[int, Metrics, list[Render]], None] | None,
    checkpoint_dir: Path | None,
    progress: _Progress,
) -> TrainResult:
    """`train_splats`' loop; ``progress`` says where it is when memory runs out."""
    if not dataset.train:
        raise NVSTrainingError("the dataset has no training views")
    device = select_device(config.device, NVSTrainingError)
    if config.strategy == "mcmc" and device.type != "cuda":
        raise NVSTrainingError(
            "strategy 'mcmc' needs CUDA (gsplat's relocation kernel has no CPU implementation); "
            "use strategy='default' on a CPU"
        )
    sizes = {(v.width, v.height) for v in dataset.train}
    if config.batch_size > 1 and len(sizes) > 1:
        raise NVSTrainingError(f"batch_size > 1 needs equal image sizes; found {sorted(sizes)}")
    generator = seed_everything(config.seed)
    if init is None:
        splats = init_splats(
            dataset.points,
            dataset.colours,
            config.sh_degree,
            init_opacity=config.init_opacity,
            init_scale=config.init_scale,
            seed=config.seed,
        )
    else:
        splats = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(init[k].detach().clone().float()) for k in SPLAT_KEYS}
        )
        if splats["shN"].shape[1] != config.num_sh_bases - 1:
            raise NVSTrainingError(
                f"init has {splats['shN'].shape[1] + 1} SH bases; sh_degree {config.sh_degree} "
                f"needs {config.num_sh_bases}"
            )
    splats = splats.to(device)
    rasterize = rasterizer_for(device, config.cpu_tile_size)
    background = torch.tensor(dataset.background, dtype=torch.float32, device=device)
    optimizers = _optimizers(splats, config, dataset.scene_scale)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(
        optimizers["means"], gamma=config.means_lr_final ** (1.0 / config.steps)
    )
    strategy = make_strategy(config)
    strategy.check_sanity(splats, optimizers)
    if isinstance(strategy, DefaultStrategy):
        strategy_state = strategy.initialize_state(scene_scale=dataset.scene_scale)
    else:
        strategy_state = strategy.initialize_state()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    checkpoint = None if checkpoint_dir is None else checkpoint_dir / CHECKPOINT_NAME
    good_step = 0
    if checkpoint is not None:
        save_checkpoint(checkpoint, splats, 0, config)
        progress.checkpoint, progress.checkpoint_step = checkpoint, 0

    def diverged(step: int, what: str) -> DivergenceError:
        where = (
            f"last good checkpoint (step {good_step}): {checkpoint}"
            if checkpoint is not None
            else "no checkpoint_dir was given, so no checkpoint was kept"
        )
        return DivergenceError(
            f"training diverged at step {step}: {what}; {where}", step, checkpoint
        )

    history: list[Metrics] = []
    evals: list[EvalMetrics] = []
    renders: list[Render] = []
    best_psnr = -math.inf
    order: list[int] = []
    train_seconds = 0.0
    cpu_seconds = 0.0
    step = 0

    def run_eval(step: int) -> None:
        nonlocal best_psnr, renders
        if not dataset.test:
            return
        sh = min(step // config.sh_degree_interval, config.sh_degree)
        progress.phase = "held-out evaluation"
        psnr, ssim, renders = evaluate(splats, dataset.test, rasterize, sh, background, device)
        metrics = EvalMetrics(step, psnr, ssim, len(dataset.test), len(splats["means"]))
        evals.append(metrics)
        if on_eval is not None:
            on_eval(
                step, {"psnr": psnr, "ssim": ssim, "num_gaussians": metrics.num_gaussians}, renders
            )
        if not math.isfinite(psnr) or psnr < best_psnr - config.psnr_collapse_db:
            raise diverged(step, f"held-out PSNR collapsed to {psnr:.2f} dB (best {best_psnr:.2f})")
        best_psnr = max(best_psnr, psnr)

    for step in range(config.steps):
        started, cpu_started = time.perf_counter(), time.process_time()
        if len(order) < config.batch_size:
            order += torch.randperm(len(dataset.train), generator=generator).tolist()
        batch = [dataset.train[i] for i in order[: config.batch_size]]
        del order[: config.batch_size]
        pixels = torch.stack([v.image for v in batch]).to(device)
        viewmats = torch.stack([v.viewmat for v in batch]).to(device)
        ks = torch.stack([v.K for v in batch]).to(device)
        sh_degree = min(step // config.sh_degree_interval, config.sh_degree)
        progress.step, progress.num_gaussians = step, len(splats["means"])
        progress.image_size, progress.phase = (batch[0].width, batch[0].height), "rendering"
        images, _, info = rasterize(
            splats, viewmats, ks, batch[0].width, batch[0].height, sh_degree, background
        )
        strategy.step_pre_backward(splats, optimizers, strategy_state, step, info)
        loss, parts = photometric_loss(images, pixels, config.ssim_lambda)
        if isinstance(strategy, MCMCStrategy):
            loss = loss + config.mcmc_opacity_reg * torch.sigmoid(splats["opacities"]).mean()
            loss = loss + config.mcmc_scale_reg * torch.exp(splats["scales"]).mean()
        if not torch.isfinite(loss):
            raise diverged(step, f"the loss is {float(loss.detach())}")
        progress.phase = "backward pass"
        loss.backward()
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        progress.phase = "densification"
        if isinstance(strategy, DefaultStrategy):
            strategy.step_post_backward(
                splats, optimizers, strategy_state, step, info, packed=False
            )
        else:
            lr = float(scheduler.get_last_lr()[0])
            strategy.step_post_backward(splats, optimizers, strategy_state, step, info, lr=lr)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds += time.perf_counter() - started
        cpu_seconds += time.process_time() - cpu_started

        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            metrics = {
                "loss": float(loss.detach()),
                **parts,
                "num_gaussians": float(len(splats["means"])),
                "sh_degree": float(sh_degree),
                "seconds_per_step": train_seconds / done,
            }
            history.append({"step": float(done), **metrics})
            if on_log is not None:
                on_log(done, metrics)
        if done % config.checkpoint_every == 0 and checkpoint is not None:
            if not _all_finite(splats):
                raise diverged(done, "parameters became non-finite")
            save_checkpoint(checkpoint, splats, done, config)
            good_step = done
            progress.checkpoint_step = done
        if done % config.eval_every == 0 and done != config.steps:
            run_eval(done)

    if not _all_finite(splats):
        raise diverged(config.steps, "parameters became non-finite")
    run_eval(config.steps)
    final = evals[-1] if evals else None
    peak_vram = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    out = torch.nn.ParameterDict(
        {k: torch.nn.Parameter(v.detach().cpu().clone()) for k, v in splats.items()}
    )
    return TrainResult(
        splats=out,
        config=config,
        steps_done=config.steps,
        num_gaussians=len(out["means"]),
        psnr=None if final is None else final.psnr,
        ssim=None if final is None else final.ssim,
        seconds=train_seconds,
        seconds_per_step=train_seconds / config.steps,
        cpu_seconds=cpu_seconds,
        peak_rss_mb=peak_rss_mb(),
        peak_vram_mb=peak_vram,
        device=str(device),
        rasterizer="gsplat-cuda" if device.type == "cuda" else "torch-cpu",
        background=dataset.background,
        history=history,
        evals=evals,
        renders=renders,
    )
