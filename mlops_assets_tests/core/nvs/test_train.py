"""Training on small generated scenes and on the real kapture sample, on the CPU."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mlops_assets.core.demo.nvs import NVSSceneSpec, write_nvs_scene
from mlops_assets.core.nvs import train as train_module
from mlops_assets.core.nvs.config import NVSTrainConfig, nvs_preset
from mlops_assets.core.nvs.data import NVSDataset, dataset_from_config
from mlops_assets.core.nvs.gaussians import SPLAT_KEYS, to_numpy
from mlops_assets.core.nvs.train import (
    DivergenceError,
    NVSTrainingError,
    SplatsOutOfMemoryError,
    load_checkpoint,
    train_splats,
)
from mlops_assets.core.scenes.colmap import read_model
from mlops_assets_tests.core.nvs import out_of_memory_at

KAPTURE = Path(__file__).resolve().parents[2] / "data" / "kapture" / "maupertuis"


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = NVSSceneSpec("small", "globe", seed=5, views=9, image_size=24, max_points=300)
    return write_nvs_scene(spec, tmp_path_factory.mktemp("scene"))


def short(**changes: Any) -> NVSTrainConfig:
    base = nvs_preset("tiny", steps=40, log_every=10, eval_every=20, checkpoint_every=10)
    return dataclasses.replace(
        base, sh_degree=1, sh_degree_interval=20, refine_start_iter=15, refine_every=10, **changes
    )


def load(scene: Path, config: NVSTrainConfig) -> NVSDataset:
    return dataset_from_config(read_model(scene / "sparse" / "0"), scene / "images", config)


@pytest.mark.slow
def test_tiny_training_lowers_the_loss(small_scene: Path, tmp_path: Path) -> None:
    config = short()
    dataset = load(small_scene, config)
    assert dataset.background == (1.0, 1.0, 1.0)  # the demo's white backdrop, found from borders
    logs: list[tuple[int, dict[str, float]]] = []
    evals: list[tuple[int, dict[str, float], list[tuple[str, np.ndarray]]]] = []
    result = train_splats(
        dataset,
        config,
        on_log=lambda step, m: logs.append((step, m)),
        on_eval=lambda step, m, r: evals.append((step, m, r)),
        checkpoint_dir=tmp_path,
    )
    assert [step for step, _ in logs] == [10, 20, 30, 40]
    assert logs[-1][1]["loss"] < 0.8 * logs[0][1]["loss"]
    assert [step for step, _, _ in evals] == [20, 40]
    assert all(10.0 < m["psnr"] < 60.0 and 0.0 < m["ssim"] <= 1.0 for _, m, _ in evals)
    name, image = evals[-1][2][0]
    assert name == "view_000.png" and image.shape == (24, 48, 3) and image.dtype == np.uint8
    assert result.steps_done == 40 and result.rasterizer == "torch-cpu" and result.device == "cpu"
    assert result.psnr == evals[-1][1]["psnr"] and result.ssim is not None
    assert result.num_gaussians == len(result.splats["means"]) >= 1
    assert result.peak_rss_mb > 0 and result.seconds_per_step > 0 and result.cpu_seconds > 0
    arrays = to_numpy(result.splats)
    assert set(arrays) == set(SPLAT_KEYS) and arrays["shN"].shape[1:] == (3, 3)
    assert all(np.isfinite(a).all() for a in arrays.values())
    assert (tmp_path / "last_good.pt").is_file()


def test_training_is_deterministic_on_cpu(small_scene: Path) -> None:
    config = short(steps=8, eval_every=100, log_every=100)
    dataset = load(small_scene, config)
    first = train_splats(dataset, config).splats
    second = train_splats(dataset, config).splats
    for key in SPLAT_KEYS:
        assert torch.equal(first[key], second[key]), key


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(
    small_scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = train_module.photometric_loss
    calls = {"n": 0}

    def poisoned(renders: torch.Tensor, pixels: torch.Tensor, ssim_lambda: float) -> Any:
        calls["n"] += 1
        loss, parts = real(renders, pixels, ssim_lambda)
        return (loss * math.nan if calls["n"] > 7 else loss), parts

    monkeypatch.setattr(train_module, "photometric_loss", poisoned)
    config = short(steps=12, eval_every=1000, checkpoint_every=3)
    with pytest.raises(DivergenceError) as caught:
        train_splats(load(small_scene, config), config, checkpoint_dir=tmp_path)
    checkpoint = tmp_path / "last_good.pt"
    assert str(caught.value) == (
        f"training diverged at step 7: the loss is nan; last good checkpoint (step 6): {checkpoint}"
    )
    assert caught.value.step == 7 and caught.value.checkpoint == checkpoint
    splats, step = load_checkpoint(checkpoint)
    assert step == 6 and all(torch.isfinite(v).all() for v in splats.values())


def test_out_of_memory_while_densifying_names_the_count_and_keeps_the_checkpoint(
    small_scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, int] = {}
    out_of_memory_at(monkeypatch, 8, seen)
    # Densification at step 6 (after refine_start_iter 3, every 3), checkpoints every 4 steps.
    config = dataclasses.replace(
        short(steps=10, eval_every=1000, checkpoint_every=4), refine_start_iter=3, refine_every=3
    )
    with pytest.raises(SplatsOutOfMemoryError) as caught:
        train_splats(load(small_scene, config), config, checkpoint_dir=tmp_path)
    checkpoint = tmp_path / "last_good.pt"
    count = seen["gaussians"]
    reason = (
        f"CPU out of memory at step 8 (densification) with {count:,} Gaussians on 24x24 px images, "
        "batch 1 (tried to allocate 2.00 GiB); lower max_image_size or downscale, use a smaller "
        "preset, or strategy 'mcmc' with a lower cap_max"
    )
    error = caught.value
    assert str(error) == f"{reason}; last good checkpoint (step 8): {checkpoint}"
    assert error.reason == reason and error.phase == "densification"
    assert (error.step, error.num_gaussians, error.checkpoint_step) == (8, count, 8)
    assert error.checkpoint == checkpoint and isinstance(error.__cause__, torch.OutOfMemoryError)
    splats, step = load_checkpoint(checkpoint)
    assert step == 8 and len(splats["means"]) == count  # the state the failing step started from
    assert all(torch.isfinite(v).all() for v in splats.values())


def test_out_of_memory_without_a_checkpoint_dir_says_none_was_kept(
    small_scene: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out_of_memory_at(monkeypatch, 2, {})
    config = short(steps=4, eval_every=1000)
    with pytest.raises(SplatsOutOfMemoryError, match=r"at step 2 .* no checkpoint was kept$"):
        train_splats(load(small_scene, config), config)


def test_psnr_collapse_stops_training(
    small_scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scores = iter([25.0, 9.0])

    def fake_evaluate(*args: Any, **kwargs: Any) -> tuple[float, float, list[Any]]:
        return next(scores), 0.5, []

    monkeypatch.setattr(train_module, "evaluate", fake_evaluate)
    config = short(steps=4, eval_every=2, checkpoint_every=1)
    with pytest.raises(DivergenceError, match="training diverged at step 4: held-out PSNR"):
        train_splats(load(small_scene, config), config, checkpoint_dir=tmp_path)


def test_mcmc_needs_cuda(small_scene: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    config = short(strategy="mcmc")
    with pytest.raises(NVSTrainingError, match="strategy 'mcmc' needs CUDA"):
        train_splats(load(small_scene, config), config)


@pytest.mark.slow
def test_real_kapture_scene_trains_and_renders() -> None:
    config = nvs_preset("tiny", steps=10, log_every=5, eval_every=100)
    dataset = dataset_from_config(read_model(KAPTURE / "sparse" / "0"), KAPTURE / "images", config)
    result = train_splats(dataset, config)
    assert result.psnr is not None and math.isfinite(result.psnr)
    assert [name for name, _ in result.renders] == ["00.jpg"]
    assert result.renders[0][1].shape == (36, 128, 3)
    assert result.history[-1]["loss"] < result.history[0]["loss"] * 1.5


@pytest.mark.parametrize("threads", [1, 2])
def test_training_runs_on_the_configured_threads_and_restores_them(
    small_scene: Path, threads: int
) -> None:
    before = torch.get_num_threads()
    config = short(steps=4, eval_every=100, log_every=2, num_threads=threads)
    seen: list[int] = []
    train_splats(
        load(small_scene, config), config, on_log=lambda s, m: seen.append(torch.get_num_threads())
    )
    assert seen == [threads, threads]
    assert torch.get_num_threads() == before


def test_the_rasteriser_follows_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = train_module.rasterizer_for(torch.device("cuda"), cpu_tile_size=8)
    assert cuda is train_module.gsplat_rasterizer
    tiles: list[int] = []

    def render(*args: Any, tile_size: int) -> Any:
        tiles.append(tile_size)

    monkeypatch.setattr(train_module.raster_cpu, "render", render)
    cpu = train_module.rasterizer_for(torch.device("cpu"), cpu_tile_size=12)
    cpu({}, torch.eye(4)[None], torch.eye(3)[None], 4, 4, 0, torch.zeros(3))
    assert tiles == [12]
