"""Challenger and champion splats on the same held-out views, view by view."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from mlops_assets.core.demo.nvs import NVSSceneSpec, write_nvs_scene
from mlops_assets.core.nvs.config import nvs_preset
from mlops_assets.core.nvs.data import dataset_from_config
from mlops_assets.core.nvs.evaluation import (
    compare_views,
    comparison_table,
    load_view_comparison,
    log_view_comparison,
)
from mlops_assets.core.nvs.train import cpu_rasterizer, train_splats
from mlops_assets.core.scenes.colmap import read_model
from mlops_assets.core.tracking import Tracker
from mlops_assets_tests.core.cd import mlflow_uri


@pytest.mark.slow
def test_each_held_out_view_is_scored_for_both_models_as_training_scores_it(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    spec = NVSSceneSpec("small", "globe", seed=5, views=9, image_size=24, max_points=300)
    scene = write_nvs_scene(spec, tmp_path / "scene")
    config = dataclasses.replace(
        nvs_preset("tiny", steps=30, log_every=10, eval_every=30, checkpoint_every=30),
        sh_degree=1,
        sh_degree_interval=10,
        refine_start_iter=1000,
    )
    dataset = dataset_from_config(read_model(scene / "sparse" / "0"), scene / "images", config)
    short = train_splats(dataset, dataclasses.replace(config, steps=2, eval_every=2))
    longer = train_splats(dataset, config)
    background = torch.tensor(longer.background)
    rasterize = cpu_rasterizer(config.cpu_tile_size)
    views = compare_views(
        longer.splats, short.splats, dataset.test, rasterize, 1, background, torch.device("cpu")
    )
    assert [v.name for v in views] == [v.name for v in dataset.test] and views
    # The challenger's mean is what training reported for its held-out views.
    assert np.mean([v.challenger.psnr for v in views]) == pytest.approx(longer.psnr, abs=1e-3)
    assert np.mean([v.challenger.ssim for v in views]) == pytest.approx(longer.ssim, abs=1e-3)
    h, w = dataset.test[0].height, dataset.test[0].width
    assert views[0].image.shape == (2 * h, 3 * w, 3) and views[0].image.dtype == np.uint8
    truth = (dataset.test[0].image.numpy() * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(views[0].image[:h, :w], truth)  # ground truth first
    assert views[0].champion is not None
    assert views[0].champion.psnr != views[0].challenger.psnr

    same = compare_views(
        longer.splats,
        longer.splats,
        dataset.test[:1],
        rasterize,
        1,
        background,
        torch.device("cpu"),
    )
    assert same[0].champion == same[0].challenger
    table = comparison_table(same).splitlines()
    assert table[0].startswith("| view | PSNR challenger | PSNR champion | Δ PSNR |")
    assert table[2].startswith(f"| {same[0].name} | ") and "| +0.00 |" in table[2]
    cpu = torch.device("cpu")
    alone = compare_views(longer.splats, None, dataset.test[:1], rasterize, 1, background, cpu)
    assert alone[0].champion is None and alone[0].image.shape == (h, 3 * w, 3)
    assert " | - | - | " in comparison_table(alone)

    # Logged in the challenger's run by nvs/splats, read back by nvs/registered_splats.
    tracker = Tracker(mlflow_uri(tmp_path_factory, tmp_path / "mlflow"), "nvs", tmp_path / "art")
    with tracker.run("splats", {}) as run_id:
        assert load_view_comparison(tracker, run_id, tmp_path / "none") == (None, [])
        log_view_comparison(tracker, run_id, views, "3")
    champion, loaded = load_view_comparison(tracker, run_id, tmp_path / "dl")
    assert champion == "3" and [v.to_dict() for v in loaded] == [v.to_dict() for v in views]
    np.testing.assert_array_equal(loaded[0].image, views[0].image)  # PNG: lossless
    metrics = tracker.client.get_run(run_id).data.metrics
    assert metrics[f"heldout_psnr.{views[0].name}"] == pytest.approx(views[0].challenger.psnr)
