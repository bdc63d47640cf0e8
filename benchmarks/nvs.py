"""Novel-view synthesis: held-out PSNR of the tiny preset on a CPU, and speed against bare gsplat.

``bench_nvs_psnr`` trains the ``tiny`` preset with `train_splats` on a demo scene (the CPU
rasteriser when there is no CUDA) and reports held-out PSNR, steps/s, time and peak RSS.

``bench_nvs_gpu`` (CUDA only) times `train_splats` against a bare loop over gsplat's own
``rasterization`` and ``DefaultStrategy`` used as their docstrings show (render, pre-backward, L1 +
SSIM loss, backward, Adam steps, post-backward), from the same initial Gaussians for the same steps
with the same learning rates and view order. Each side runs twice, alternating (bare first), so
the bare loop's own run-to-run PSNR spread (CUDA's atomic adds make runs differ) is measured in
the same process; speed is the best run of each, and the package's mean held-out PSNR must lie
within that spread of the bare loop's mean. Peak GPU memory and the final Gaussian count of both
are reported. Without CUDA it returns a row that says it was not run.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import BenchResult, Target, cache_root, ratio
from mlops_assets.core.compute import seed_everything
from mlops_assets.core.demo.nvs import DEMO_NVS_SCENES, NVSSceneSpec, write_nvs_scene
from mlops_assets.core.nvs.config import NVSTrainConfig, nvs_preset
from mlops_assets.core.nvs.data import NVSDataset, dataset_from_config
from mlops_assets.core.nvs.gaussians import init_splats, sh_coefficients
from mlops_assets.core.nvs.train import (
    TrainResult,
    evaluate,
    gsplat_rasterizer,
    photometric_loss,
    train_splats,
)
from mlops_assets.core.scenes.colmap import read_model

#: The scene both benchmarks train on.
NVS_SCENE: NVSSceneSpec = DEMO_NVS_SCENES[0]


def cached_nvs_scene(spec: NVSSceneSpec = NVS_SCENE, root: Path | None = None) -> Path:
    """The demo scene's ``images/`` and ``sparse/0/`` directory, generated on first use."""
    target = (root or cache_root()) / "nvs" / f"{spec.scene_id}-{spec.image_size}"
    if not (target / "sparse" / "0").is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.scene_id}-", dir=target.parent))
        write_nvs_scene(spec, tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    return target


def load_scene(config: NVSTrainConfig, spec: NVSSceneSpec = NVS_SCENE) -> NVSDataset:
    """The benchmark scene as training views for ``config``."""
    scene = cached_nvs_scene(spec)
    return dataset_from_config(read_model(scene / "sparse" / "0"), scene / "images", config)


def bench_nvs_psnr(steps: int | None = None) -> BenchResult:
    """Held-out PSNR of the tiny preset on the demo globe (``steps`` overrides: not judged)."""
    config = nvs_preset("tiny", device="cpu")
    quick = steps is not None and steps != config.steps
    if steps is not None:
        config = dataclasses.replace(config, steps=steps)
    dataset = load_scene(config)
    started = time.perf_counter()
    result = train_splats(dataset, config)
    seconds = time.perf_counter() - started
    width, height = dataset.image_size
    return BenchResult(
        name=f"NVS held-out PSNR (tiny, {NVS_SCENE.scene_id}, {width} px, CPU)"
        + (" [quick]" if quick else ""),
        unit="dB",
        measured=result.psnr,
        reference=None,
        target=Target("measured", ">=", 30.0),
        judged=not quick,
        note=(
            f"SSIM {result.ssim:.3f}; {result.steps_per_second:.2f} steps/s; {result.steps_done} "
            f"steps in {seconds / 60:.1f} min ({result.cpu_seconds / 60:.1f} CPU min); "
            f"peak RSS {result.peak_rss_mb:.0f} MiB"
            + ("; fewer steps than the preset, not judged" if quick else "")
        ),
        details={
            "psnr": result.psnr,
            "ssim": result.ssim,
            "steps": result.steps_done,
            "steps_per_second": result.steps_per_second,
            "train_seconds": result.seconds,
            "cpu_seconds": result.cpu_seconds,
            "wall_seconds": seconds,
            "peak_rss_mb": result.peak_rss_mb,
            "num_gaussians": result.num_gaussians,
            "train_views": len(dataset.train),
            "test_views": len(dataset.test),
            "image_size": [width, height],
            "psnr_by_eval": [(e.step, round(e.psnr, 3)) for e in result.evals],
            "device": result.device,
            "torch_threads": torch.get_num_threads(),
        },
    )


@dataclass(frozen=True)
class SplatRun:
    """One timed training run on CUDA: speed, held-out quality, memory and size at the end."""

    steps_per_second: float
    psnr: float
    peak_vram_mb: float
    num_gaussians: int


def bare_gsplat_loop(dataset: NVSDataset, config: NVSTrainConfig) -> SplatRun:
    """A bare loop over gsplat's rasterization and DefaultStrategy, timed; then held-out PSNR."""
    from gsplat import DefaultStrategy, rasterization

    if config.strategy != "default" or config.batch_size != 1:
        raise ValueError("the bare loop is gsplat's DefaultStrategy with one view per step")
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    generator = seed_everything(config.seed)
    splats = init_splats(
        dataset.points,
        dataset.colours,
        config.sh_degree,
        init_opacity=config.init_opacity,
        init_scale=config.init_scale,
        seed=config.seed,
    ).to(device)
    lrs = {
        "means": config.means_lr * dataset.scene_scale,
        "scales": config.scales_lr,
        "quats": config.quats_lr,
        "opacities": config.opacities_lr,
        "sh0": config.sh0_lr,
        "shN": config.shN_lr,
    }
    optimizers: dict[str, torch.optim.Optimizer] = {
        k: torch.optim.Adam([{"params": splats[k], "lr": lr, "name": k}], eps=1e-15)
        for k, lr in lrs.items()
    }
    scheduler = torch.optim.lr_scheduler.ExponentialLR(
        optimizers["means"], gamma=config.means_lr_final ** (1.0 / config.steps)
    )
    strategy = DefaultStrategy(
        prune_opa=config.prune_opa,
        grow_grad2d=config.grow_grad2d,
        grow_scale3d=config.grow_scale3d,
        prune_scale3d=config.prune_scale3d,
        refine_start_iter=config.refine_start_iter,
        refine_stop_iter=config.refine_stop_iter,
        reset_every=config.reset_every,
        refine_every=config.refine_every,
    )
    strategy.check_sanity(splats, optimizers)
    state = strategy.initialize_state(scene_scale=dataset.scene_scale)
    background = torch.tensor(dataset.background, device=device)
    views = [(v.image.to(device), v.viewmat.to(device), v.K.to(device)) for v in dataset.train]
    order: list[int] = []
    torch.cuda.synchronize()
    started = time.perf_counter()
    for step in range(config.steps):
        if not order:
            order = torch.randperm(len(views), generator=generator).tolist()
        pixels, viewmat, k = views[order.pop(0)]
        colors, _, info = rasterization(
            means=splats["means"],
            quats=splats["quats"],
            scales=torch.exp(splats["scales"]),
            opacities=torch.sigmoid(splats["opacities"]),
            colors=sh_coefficients(splats),
            viewmats=viewmat[None],
            Ks=k[None],
            width=pixels.shape[1],
            height=pixels.shape[0],
            sh_degree=min(step // config.sh_degree_interval, config.sh_degree),
            packed=False,
            backgrounds=background[None],
        )
        strategy.step_pre_backward(splats, optimizers, state, step, info)
        loss, _ = photometric_loss(colors, pixels[None], config.ssim_lambda)
        loss.backward()
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        strategy.step_post_backward(splats, optimizers, state, step, info, packed=False)
    torch.cuda.synchronize()
    rate = config.steps / (time.perf_counter() - started)
    psnr, _, _ = evaluate(
        splats, dataset.test, gsplat_rasterizer, config.sh_degree, background, device
    )
    return SplatRun(
        steps_per_second=rate,
        psnr=psnr,
        peak_vram_mb=torch.cuda.max_memory_allocated(device) / 2**20,
        num_gaussians=len(splats["means"]),
    )


def package_run(dataset: NVSDataset, config: NVSTrainConfig) -> tuple[SplatRun, TrainResult]:
    """`train_splats` on CUDA, as the figures of a `SplatRun` and the full result."""
    torch.cuda.empty_cache()
    result = train_splats(dataset, config)
    if result.psnr is None or result.peak_vram_mb is None:
        raise RuntimeError("train_splats returned no held-out PSNR or peak memory on CUDA")
    run = SplatRun(
        steps_per_second=result.steps_per_second,
        psnr=result.psnr,
        peak_vram_mb=result.peak_vram_mb,
        num_gaussians=result.num_gaussians,
    )
    return run, result


def compare_nvs_gpu(
    preset: str = "default", steps: int | None = None, repeats: int = 2
) -> tuple[BenchResult, TrainResult | None]:
    """The ``nvs-gpu`` row, and the package's last `TrainResult` (None without CUDA)."""
    base = nvs_preset(preset)
    steps = steps or base.steps
    name = f"NVS training on CUDA vs bare gsplat ({preset}, {steps} steps)"
    target = Target("ratio", ">=", 0.95)
    if not torch.cuda.is_available():
        return BenchResult(
            name=name,
            unit="steps/s",
            measured=None,
            reference=None,
            target=target,
            judged=False,
            note="not run: no CUDA device",
        ), None
    never = 10**9  # no evaluation, logging or checkpoints inside the timed run
    config = nvs_preset(
        preset,
        steps=steps,
        device="cuda",
        eval_every=never,
        log_every=never,
        checkpoint_every=never,
    )
    dataset = load_scene(config)
    bare: list[SplatRun] = []
    package: list[SplatRun] = []
    result: TrainResult | None = None
    for _ in range(max(repeats, 1)):
        bare.append(bare_gsplat_loop(dataset, config))
        run, result = package_run(dataset, config)
        package.append(run)
    measured = max(r.steps_per_second for r in package)
    reference = max(r.steps_per_second for r in bare)
    bare_psnr = statistics.mean(r.psnr for r in bare)
    package_psnr = statistics.mean(r.psnr for r in package)
    spread = max(r.psnr for r in bare) - min(r.psnr for r in bare)
    gap = package_psnr - bare_psnr
    psnr_ok = abs(gap) <= spread
    device = torch.cuda.get_device_name(0)
    width, height = dataset.image_size
    return BenchResult(
        name=name,
        unit="steps/s",
        measured=measured,
        reference=reference,
        ratio=ratio(measured, reference),
        target=target,
        note=(
            f"best of {len(package)} each; PSNR {package_psnr:.2f} vs {bare_psnr:.2f} dB (gap "
            f"{gap:+.3f}, bare spread {spread:.3f}: {'within' if psnr_ok else 'OUTSIDE'}); peak "
            f"GPU memory {max(r.peak_vram_mb for r in package):.0f} vs "
            f"{max(r.peak_vram_mb for r in bare):.0f} MiB; {package[-1].num_gaussians} vs "
            f"{bare[-1].num_gaussians} Gaussians; {device}"
        ),
        details={
            "device": device,
            "preset": preset,
            "steps": steps,
            "scene": NVS_SCENE.scene_id,
            "image_size": [width, height],
            "train_views": len(dataset.train),
            "test_views": len(dataset.test),
            "psnr": package_psnr,
            "reference_psnr": bare_psnr,
            "psnr_gap_db": gap,
            "reference_psnr_spread_db": spread,
            "psnr_within_spread": psnr_ok,
            "package_runs": [dataclasses.asdict(r) for r in package],
            "reference_runs": [dataclasses.asdict(r) for r in bare],
            "peak_vram_mb": max(r.peak_vram_mb for r in package),
            "reference_peak_vram_mb": max(r.peak_vram_mb for r in bare),
            "num_gaussians": package[-1].num_gaussians,
            "reference_num_gaussians": bare[-1].num_gaussians,
        },
    ), result


def bench_nvs_gpu(
    preset: str = "default", steps: int | None = None, repeats: int = 2
) -> BenchResult:
    """`train_splats` vs the bare gsplat loop on CUDA: steps/s ratio and held-out PSNR gap."""
    return compare_nvs_gpu(preset, steps, repeats)[0]
