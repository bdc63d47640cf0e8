"""``nvs/render``: a registered version's splats as a viewer-ready .ply and an orbit video.

The version under the scene's alias (default ``champion-<scene_id>``) is loaded from MLflow, written
in the INRIA .ply layout viewers read, and rendered along an orbit around where the capture looked;
both files go to the ``outputs`` branch under ``nvs/<scene_id>/`` in one merge with lineage.
"""

import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
from PIL import Image

from mlops_assets import keys
from mlops_assets.assets.common import (
    image_md,
    metadata,
    model_output_metadata,
    publish_model_outputs,
)
from mlops_assets.assets.nvs.config import EXPERIMENT, RenderConfig
from mlops_assets.core.nvs.records import RenderRecord
from mlops_assets.core.records import ModelRef
from mlops_assets.core.scenes.colmap import read_model
from mlops_assets.core.scenes.nvs import NVSScene, materialize_nvs_scene
from mlops_assets.partitions import nvs_scenes
from mlops_assets.resources.failures import failure_on
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.resources.scene_store import SceneStoreResource
from mlops_assets.retries import EXTERNAL_RETRY
from mlops_assets.scale import gpu_op_tags

KEY = keys.NVS_RENDER
PLY_FILE = "splats.ply"
VIDEO_FILE = "orbit.mp4"
PREVIEW_FILE = "preview.png"


def _render(
    source: NVSScene, model: Any, config: RenderConfig, store: Any, work: Path
) -> tuple[Path, Any]:
    """Write the splats as a .ply and render the orbit video and preview into ``work``.

    ``model`` is a `mlops_assets.core.nvs.registry.LoadedSplats`; returns the .ply's path and
    the `OrbitResult`.
    """
    from mlops_assets.core.nvs.ply import write_inria_ply
    from mlops_assets.core.nvs.render import render_orbit

    colmap = read_model(materialize_nvs_scene(store, source, work / "scene")[0])
    ply = write_inria_ply(work / PLY_FILE, {k: v.numpy() for k, v in model.splats.items()})
    orbit = render_orbit(
        model.splats,
        colmap,
        work / VIDEO_FILE,
        sh_degree=model.sh_degree,
        background=model.background,
        width=config.width or int(model.spec["width"]),
        height=config.height or int(model.spec["height"]),
        frames=config.frames,
        fps=config.fps,
        elevation_deg=config.elevation_deg,
    )
    Image.fromarray(orbit.preview).save(work / PREVIEW_FILE)
    return ply, orbit


def _render_and_publish(
    context: dg.AssetExecutionContext,
    source: NVSScene,
    model: Any,  # a LoadedSplats (PyTorch is imported by the step only)
    alias: str,
    config: RenderConfig,
    scene_store: SceneStoreResource,
    lineage: LineageResource,
    mlflow: MLflowResource,
) -> tuple[RenderRecord, Any]:
    """Render ``model`` and publish .ply, video and preview: ``(record, orbit)``."""
    scene_id, commit = source.scene_id, source.commit_id
    ref, store = ModelRef(model.name, model.version, model.run_id), scene_store.get_store()
    with tempfile.TemporaryDirectory(prefix=f"nvs-render-{scene_id}-") as tmp:
        work = Path(tmp)
        ply, orbit = _render(source, model, config, store, work)
        publication = publish_model_outputs(
            context,
            scene_store,
            lineage,
            mlflow,
            scene=f"nvs/{scene_id}",
            source_commit=commit,
            source_repository=source.repository,
            model=ref,
            alias=alias,
            files={PLY_FILE: ply, VIDEO_FILE: work / VIDEO_FILE, PREVIEW_FILE: work / PREVIEW_FILE},
            message=f"Splats and orbit of nvs/{scene_id} by {model.name} v{model.version}",
            extra={"trained_on_commit": model.tags.get("lakefs.commit", "")},
        )
    uri = {
        n: store.uri(publication.commit_id, f"nvs/{scene_id}/{n}")
        for n in (PLY_FILE, VIDEO_FILE, PREVIEW_FILE)
    }
    record = RenderRecord(
        scene_id=scene_id,
        source_commit=commit,
        outputs_branch=publication.branch,
        outputs_commit=publication.commit_id,
        ply=uri[PLY_FILE],
        video=uri[VIDEO_FILE],
        preview=uri[PREVIEW_FILE],
        model=ref,
        num_gaussians=orbit.num_gaussians,
    )
    return record, orbit


@dg.asset(
    key=KEY,
    ins={"scene": dg.AssetIn(key=keys.NVS_SCENE)},
    deps=[keys.NVS_REGISTERED_SPLATS],
    partitions_def=nvs_scenes,
    group_name=keys.NVS_GROUP,
    kinds={"gsplat", "ply", "lakefs"},
    io_manager_key="json_io_manager",
    retry_policy=EXTERNAL_RETRY,
    op_tags=gpu_op_tags(),  # on Kubernetes: a GPU node (mlops_assets.scale)
    pool="gpu",  # the orbit is rasterised on the GPU where there is one
    description=(
        "The scene's registered splats (by alias) as an INRIA-layout .ply and an orbit .mp4, "
        "committed to the outputs branch with the model version and source commit."
    ),
)
def nvs_render(
    context: dg.AssetExecutionContext,
    config: RenderConfig,
    scene: NVSScene,
    scene_store: SceneStoreResource,
    mlflow: MLflowResource,
    lineage: LineageResource,
) -> dg.MaterializeResult[RenderRecord]:
    """Export and render the scene's aliased splats and publish them."""
    # PyTorch and MLflow load here, when the step runs, not with the code location.
    from mlops_assets.core.nvs.registry import load_splat_model, scene_alias
    from mlops_assets.core.tracking import AliasNotFoundError, TrackingError

    scene_id, commit, label = scene.scene_id, scene.commit_id, f"nvs/{scene.scene_id}: "
    alias = scene_alias(config.alias, scene_id)
    tracker = mlflow.reachable_tracker(EXPERIMENT, label)
    with (  # a missing alias stays missing: no retry; an unreachable server may come back
        failure_on(TrackingError, label=label),
        failure_on(AliasNotFoundError, label=label, allow_retries=False),
    ):
        model = load_splat_model(tracker, config.model_name, alias, "nvs/registered_splats")
    record, orbit = _render_and_publish(
        context, scene, model, alias, config, scene_store, lineage, mlflow
    )
    run_url = tracker.run_url(model.run_id, mlflow.ui_url)
    return dg.MaterializeResult(
        value=record,
        data_version=dg.DataVersion(keys.model_output_version(commit, model.name, model.version)),
        metadata=metadata(
            {
                **model_output_metadata(mlflow, run_url, record.model, alias),
                "num_gaussians": orbit.num_gaussians,
                "frames": orbit.frames,
                "video_size": f"{orbit.width}x{orbit.height}",
                "render_seconds": round(orbit.seconds, 2),
                "orbit": orbit.describe,
                "source_commit": commit,
                "outputs_commit": record.outputs_commit,
                "ply_uri": record.ply,
                "video_uri": record.video,
                "git_sha": lineage.code_version(),
                "preview": image_md(Image.fromarray(orbit.preview), "orbit frame"),
            }
        ),
    )
