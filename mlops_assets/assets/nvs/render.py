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

from mlops_assets.assets.common import image_md, lakefs_links, metadata
from mlops_assets.assets.nvs.config import EXPERIMENT, RenderConfig
from mlops_assets.assets.nvs.scene import KEY as SCENE_KEY
from mlops_assets.assets.nvs.splats import REGISTERED_KEY
from mlops_assets.core.publish import publish_files
from mlops_assets.core.scenes.colmap import read_model
from mlops_assets.core.scenes.nvs import materialize_nvs_scene
from mlops_assets.partitions import nvs_scenes
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.resources.scene_store import SceneStoreResource

KEY = dg.AssetKey(["nvs", "render"])
PLY_FILE = "splats.ply"
VIDEO_FILE = "orbit.mp4"
PREVIEW_FILE = "preview.png"


@dg.asset(
    key=KEY,
    ins={"scene": dg.AssetIn(key=SCENE_KEY)},
    deps=[REGISTERED_KEY],
    partitions_def=nvs_scenes,
    group_name="novel_view_synthesis",
    kinds={"gsplat", "ply", "lakefs"},
    io_manager_key="json_io_manager",
    description=(
        "The scene's registered splats (by alias) as an INRIA-layout .ply and an orbit .mp4, "
        "committed to the outputs branch with the model version and source commit."
    ),
)
def nvs_render(
    context: dg.AssetExecutionContext,
    config: RenderConfig,
    scene: dict[str, Any],
    scene_store: SceneStoreResource,
    mlflow: MLflowResource,
    lineage: LineageResource,
) -> dg.MaterializeResult[dict[str, Any]]:
    """Export and render the scene's aliased splats and publish them."""
    # PyTorch and MLflow load here, when the step runs, not with the code location.
    from mlops_assets.core.nvs.ply import write_inria_ply
    from mlops_assets.core.nvs.registry import load_splat_model, scene_alias
    from mlops_assets.core.nvs.render import render_orbit
    from mlops_assets.core.tracking import TrackingError

    scene_id, commit = scene["scene_id"], scene["commit_id"]
    tracker = mlflow.tracker(EXPERIMENT)
    alias = scene_alias(config.alias, scene_id)
    try:
        tracker.check_reachable()
        model = load_splat_model(tracker, config.model_name, alias, "nvs/registered_splats")
    except TrackingError as exc:
        raise dg.Failure(description=f"nvs/{scene_id}: {exc}") from exc
    store = scene_store.get_store()
    with tempfile.TemporaryDirectory(prefix=f"nvs-render-{scene_id}-") as tmp:
        work = Path(tmp)
        colmap = read_model(materialize_nvs_scene(store, scene, work / "scene")[0])
        ply = write_inria_ply(work / PLY_FILE, {k: v.numpy() for k, v in model.splats.items()})
        width = config.width or int(model.spec["width"])
        height = config.height or int(model.spec["height"])
        orbit = render_orbit(
            model.splats,
            colmap,
            work / VIDEO_FILE,
            sh_degree=model.sh_degree,
            background=model.background,
            width=width,
            height=height,
            frames=config.frames,
            fps=config.fps,
            elevation_deg=config.elevation_deg,
        )
        preview = Image.fromarray(orbit.preview)
        preview.save(work / PREVIEW_FILE)
        git_sha = lineage.code_version()
        lineage_meta = {
            "source_commit": commit,
            "source_repository": scene["repository"],
            "scene": f"nvs/{scene_id}",
            "trained_on_commit": model.tags.get("lakefs.commit", ""),
            "model_name": model.name,
            "model_version": model.version,
            "model_alias": alias,
            "mlflow_run_id": model.run_id,
            "dagster_run_id": context.run.run_id,
            "git_sha": git_sha,
            **lakefs_links(
                {
                    "Dagster": lineage.run_url(context.run.run_id),
                    "MLflow": mlflow.model_url(model.name, model.version),
                }
            ),
        }
        publication = publish_files(
            store,
            scene_store.outputs_branch,
            scene_store.branch,
            f"nvs/{scene_id}",
            {PLY_FILE: ply, VIDEO_FILE: work / VIDEO_FILE, PREVIEW_FILE: work / PREVIEW_FILE},
            f"Splats and orbit of nvs/{scene_id} by {model.name} v{model.version}",
            lineage_meta,
        )
    uris = {
        name: store.uri(publication.commit_id, f"nvs/{scene_id}/{name}")
        for name in (PLY_FILE, VIDEO_FILE, PREVIEW_FILE)
    }
    value = {
        "scene_id": scene_id,
        "source_commit": commit,
        "outputs_branch": publication.branch,
        "outputs_commit": publication.commit_id,
        "ply": uris[PLY_FILE],
        "video": uris[VIDEO_FILE],
        "preview": uris[PREVIEW_FILE],
        "model": {"name": model.name, "version": model.version, "run_id": model.run_id},
        "num_gaussians": orbit.num_gaussians,
    }
    return dg.MaterializeResult(
        value=value,
        data_version=dg.DataVersion(f"{commit[:16]}-{model.name}-v{model.version}"),
        metadata=metadata(
            {
                "model": f"{model.name} v{model.version} ({alias})",
                "model_version": dg.MetadataValue.url(mlflow.model_url(model.name, model.version)),
                "mlflow_run": dg.MetadataValue.url(tracker.run_url(model.run_id, mlflow.ui_url)),
                "num_gaussians": orbit.num_gaussians,
                "frames": orbit.frames,
                "video_size": f"{orbit.width}x{orbit.height}",
                "render_seconds": round(orbit.seconds, 2),
                "orbit": orbit.describe,
                "source_commit": commit,
                "outputs_commit": publication.commit_id,
                "ply_uri": uris[PLY_FILE],
                "video_uri": uris[VIDEO_FILE],
                "git_sha": git_sha,
                "preview": image_md(preview, "orbit frame"),
            }
        ),
    )
