"""The NVS chain on the embedded default: scene -> splats -> registered version -> .ply + video."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import imageio.v3 as iio
import numpy as np
import pytest
from mlflow import MlflowClient
from plyfile import PlyData

from mlops_assets.assets.nvs.render import nvs_render
from mlops_assets.assets.nvs.scene import nvs_scene
from mlops_assets.assets.nvs.splats import nvs_registered_splats, nvs_splats
from mlops_assets.core.nvs.config import nvs_preset
from mlops_assets.core.nvs.ply import inria_property_names
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets_tests.conftest import commit_folder, materialize_partition

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
    assert registered["aliases"] == [f"challenger-{scene_id}", f"champion-{scene_id}"]
    version = client.get_model_version_by_alias("gaussian-splats", f"champion-{scene_id}")
    assert version.tags["scene_id"] == scene_id and version.tags["lakefs.commit"] == commit

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

    # A second version that fails the gate is not registered and the champion stays.
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
    assert len(client.search_model_versions("name='gaussian-splats'")) == 1
