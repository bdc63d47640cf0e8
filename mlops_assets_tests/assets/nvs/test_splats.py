"""The NVS chain on the embedded default: scene -> splats -> registered version -> .ply + video."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import dagster as dg
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from plyfile import PlyData

from mlops_assets.assets.nvs.render import nvs_render
from mlops_assets.assets.nvs.scene import nvs_scene
from mlops_assets.assets.nvs.splats import nvs_registered_splats, nvs_splats
from mlops_assets.core.nvs.config import NVS_PRESETS, nvs_preset
from mlops_assets.core.nvs.ply import inria_property_names
from mlops_assets.core.nvs.records import SplatsRecord, SplatsRegistrationRecord
from mlops_assets.core.nvs.train import load_checkpoint
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets_tests.conftest import commit_folder, materialize_partition
from mlops_assets_tests.core.nvs import out_of_memory_at

CHAIN = [nvs_scene, nvs_splats, nvs_registered_splats, nvs_render]
TRAIN = {"preset": "tiny", "steps": 40, "max_image_size": 32, "device": "cpu"}


def _config(min_psnr: float = 5.0) -> dict[str, Any]:
    return {
        "ops": {
            "nvs__splats": {"config": TRAIN},
            "nvs__registered_splats": {"config": {"min_psnr": min_psnr}},
            "nvs__render": {"config": {"frames": 6, "fps": 6}},
        }
    }


def _meta(result: dg.ExecuteInJobResult, node: str) -> dict[str, Any]:
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}


@pytest.mark.slow
def test_chain_registers_and_publishes_a_viewer_ready_splat(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    demo_nvs_dir: Path,
    tmp_path: Path,
) -> None:
    scene_id = demo_nvs_dir.name
    commit = commit_folder(store, demo_nvs_dir, f"nvs/{scene_id}/")
    result = materialize_partition(CHAIN, scene_id, instance, resources, _config())
    assert result.success

    trained = _meta(result, "nvs__splats")
    assert trained["lakefs_commit"] == commit and trained["steps"] == 40
    assert trained["psnr"] > 5.0 and trained["num_gaussians"] > 0
    assert trained["rasterizer"] == "torch-cpu"
    uri = resources["mlflow"].tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(trained["mlflow_run_id"])
    assert run.data.tags["lakefs.commit"] == commit and run.data.tags["git_sha"] == "0123abc"
    assert run.data.tags["scene_id"] == scene_id
    assert {"psnr", "ssim", "num_gaussians", "peak_rss_mb"} <= set(run.data.metrics)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "splats")] == [
        "splats/splats.ply"
    ]

    registered = _meta(result, "nvs__registered_splats")
    assert registered["version"] == "1"
    # Each asset hands on its record: the splats' training, then the registration of it.
    splats = result.output_for_node("nvs__splats")
    assert isinstance(splats, SplatsRecord) and splats.run_id == trained["mlflow_run_id"]
    record = result.output_for_node("nvs__registered_splats")
    assert isinstance(record, SplatsRegistrationRecord) and record.version == "1"
    assert (record.scene_id, record.lakefs_commit, record.run_id) == (
        scene_id,
        commit,
        splats.run_id,
    )
    assert registered["aliases"] == [f"challenger-{scene_id}", f"champion-{scene_id}"]
    version = client.get_model_version_by_alias("gaussian-splats", f"champion-{scene_id}")
    assert version.tags["scene_id"] == scene_id and version.tags["lakefs.commit"] == commit
    # Each held-out view side by side (no champion to compare with yet).
    assert registered["heldout_compared_with"] == "no champion yet"
    table = str(registered["heldout_views"]).splitlines()
    views = [k.removeprefix("view ") for k in registered if k.startswith("view ")]
    assert views and len(table) == 2 + len(views)
    assert table[2].startswith(f"| {views[0]} | ") and "| - | - |" in table[2]

    rendered = _meta(result, "nvs__render")
    outputs = rendered["outputs_commit"]
    info = store.get_commit(outputs)
    assert info.metadata["model_version"] == "1" and info.metadata["source_commit"] == commit
    assert "::lakefs::MLflow::url[url:ui]" in info.metadata
    ply = tmp_path / "out.ply"
    ply.write_bytes(store.read_bytes("outputs", f"nvs/{scene_id}/splats.ply"))
    vertex = PlyData.read(str(ply))["vertex"]
    rest = (nvs_preset("tiny").sh_degree + 1) ** 2 - 1  # SH coefficients per channel beyond DC
    assert [p.name for p in vertex.properties] == inria_property_names(rest)
    assert len(vertex.data) == rendered["num_gaussians"]
    video = tmp_path / "orbit.mp4"
    video.write_bytes(store.read_bytes("outputs", f"nvs/{scene_id}/orbit.mp4"))
    frames = list(iio.imiter(video))
    assert len(frames) == 6 and frames[0].shape[2] == 3
    assert float(np.std(frames[0])) > 1.0  # something was drawn, not a blank background
    assert not store.exists("main", f"nvs/{scene_id}/splats.ply")  # outputs only, never main

    # Trained again: the new splats and the champion (v1) on the same held-out views.
    second = materialize_partition(
        [nvs_splats, nvs_registered_splats, nvs_scene.to_source_asset()],
        scene_id,
        instance,
        resources,
        {"ops": {k: v for k, v in _config()["ops"].items() if k != "nvs__render"}},
    )
    assert second.success
    compared = _meta(second, "nvs__registered_splats")
    assert compared["heldout_compared_with"] == "champion v1" and compared["version"] == "2"
    row = str(compared["heldout_views"]).splitlines()[2].split(" | ")
    v1_psnr = client.get_run(trained["mlflow_run_id"]).data.metrics[f"heldout_psnr.{views[0]}"]
    assert float(row[2]) == pytest.approx(v1_psnr, abs=0.01)  # the champion, rendered again

    # A version that fails the gate is not registered and the champion stays.
    again = materialize_partition(
        [nvs_registered_splats, nvs_splats.to_source_asset()],
        scene_id,
        instance,
        resources,
        {"ops": {"nvs__registered_splats": {"config": {"min_psnr": 99.0}}}},
    )
    assert not again.success
    check = again.get_asset_check_evaluations()[0]
    assert not check.passed and "below the minimum" in (check.description or "")
    assert len(client.search_model_versions("name='gaussian-splats'")) == 2


def test_held_out_views_are_compared_with_the_champion_of_the_configured_model(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    demo_nvs_dir: Path,
) -> None:
    """A registry other than the default: training compares with that model's scene champion."""
    scene_id, name = demo_nvs_dir.name, "splats-under-test"
    commit_folder(store, demo_nvs_dir, f"nvs/{scene_id}/")
    run_config = {
        "ops": {
            "nvs__splats": {"config": {**TRAIN, "model_name": name}},
            "nvs__registered_splats": {"config": {"min_psnr": 5.0, "model_name": name}},
        }
    }
    chain = [nvs_splats, nvs_registered_splats, nvs_scene]
    first = materialize_partition(chain, scene_id, instance, resources, run_config)
    assert _meta(first, "nvs__registered_splats")["heldout_compared_with"] == "no champion yet"
    chain = [nvs_splats, nvs_registered_splats, nvs_scene.to_source_asset()]
    second = materialize_partition(chain, scene_id, instance, resources, run_config)
    compared = _meta(second, "nvs__registered_splats")
    assert compared["heldout_compared_with"] == "champion v1" and compared["version"] == "2"
    uri = resources["mlflow"].tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert len(client.search_model_versions(f"name='{name}'")) == 2
    assert not client.search_registered_models("name='gaussian-splats'")


def test_out_of_memory_fails_the_step_keeps_the_checkpoint_and_frees_the_gpu_slot(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    demo_nvs_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scene_id = demo_nvs_dir.name
    commit_folder(store, demo_nvs_dir, f"nvs/{scene_id}/")
    instance.event_log_storage.set_concurrency_slots("gpu", 1)
    seen: dict[str, int] = {}
    held: list[int] = []

    def slots_in_use() -> None:
        held.append(instance.event_log_storage.get_concurrency_info("gpu").active_slot_count)

    out_of_memory_at(monkeypatch, 6, seen, before=slots_in_use)
    train = {**TRAIN, "steps": 10, "preset": "default"}
    result = materialize_partition(
        [nvs_scene, nvs_splats],
        scene_id,
        instance,
        resources,
        {"ops": {"nvs__splats": {"config": train}}},
    )
    assert not result.success and result.get_failed_step_keys() == {"nvs__splats"}
    failure = result.failure_data_for_node("nvs__splats")
    assert failure is not None and failure.user_failure_data is not None
    description = failure.user_failure_data.description or ""
    uri = resources["mlflow"].tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("novel-view-synthesis")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    count = seen["gaussians"]
    artifact = f"runs:/{run.info.run_id}/checkpoints/last_good.pt"
    assert description.startswith(
        f"nvs/{scene_id}: preset 'default': CPU out of memory at step 6 (densification) with "
        f"{count:,} Gaussians on 32x32 px images, batch 1 (tried to allocate 2.00 GiB); "
    )
    assert description.endswith(f"; last good checkpoint (step 0) kept in MLflow: {artifact}")
    meta = {k: v.value for k, v in failure.user_failure_data.metadata.items()}
    assert meta == {
        "preset": "default",
        "step": 6,
        "phase": "densification",
        "num_gaussians": count,
        "checkpoint_step": 0,
        "checkpoint_uri": artifact,
    }
    # The run is marked failed and keeps the checkpoint the step's temporary directory lost.
    assert run.info.status == "FAILED"
    local = client.download_artifacts(run.info.run_id, "checkpoints/last_good.pt", str(tmp_path))
    splats, step = load_checkpoint(Path(local))
    assert step == 0 and len(splats["means"]) == count
    # The step held the gpu pool's one slot while it ran and gave it back when it failed.
    assert held == [1]
    assert instance.event_log_storage.get_concurrency_info("gpu").active_slot_count == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_cuda_out_of_memory_fails_the_step_and_keeps_the_checkpoint(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    demo_nvs_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scene_id = demo_nvs_dir.name
    commit_folder(store, demo_nvs_dir, f"nvs/{scene_id}/")
    instance.event_log_storage.set_concurrency_slots("gpu", 1)
    # Every visible Gaussian is cloned or split every 5 steps and none is pruned, so the count
    # doubles until the allocator's cap (512 MiB above what is in use) stops it.
    runaway = dataclasses.replace(
        NVS_PRESETS["default"],
        grow_grad2d=0.0,
        prune_opa=0.0,
        refine_start_iter=5,
        refine_every=5,
        refine_stop_iter=10**6,
        checkpoint_every=10,
    )
    monkeypatch.setitem(NVS_PRESETS, "default", runaway)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((before + 2**29) / total)
    try:
        result = materialize_partition(
            [nvs_scene, nvs_splats],
            scene_id,
            instance,
            resources,
            {
                "ops": {
                    "nvs__splats": {
                        "config": {**TRAIN, "preset": "default", "steps": 400, "device": "cuda"}
                    }
                }
            },
        )
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    failure = result.failure_data_for_node("nvs__splats")
    assert failure is not None and failure.user_failure_data is not None
    description = failure.user_failure_data.description or ""
    meta = {k: v.value for k, v in failure.user_failure_data.metadata.items()}
    assert description.startswith(f"nvs/{scene_id}: preset 'default': CUDA out of memory at step ")
    assert f"with {meta['num_gaussians']:,} Gaussians" in description
    assert meta["num_gaussians"] > 3000 and meta["checkpoint_step"] >= 10  # it densified
    assert "kept in MLflow: runs:/" in description
    assert instance.event_log_storage.get_concurrency_info("gpu").active_slot_count == 0
    assert torch.cuda.memory_allocated() < before + 2**26  # splats and optimiser state freed
