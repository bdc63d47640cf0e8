"""``cd/change_map``: the champion model slid over a whole scene, published to ``outputs``."""

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg

from mlops_assets.assets.cd.config import EXPERIMENT, ChangeMapConfig
from mlops_assets.assets.cd.model import REGISTERED_KEY
from mlops_assets.assets.cd.scene import KEY as SCENE_KEY
from mlops_assets.assets.cd.tiles import KEY as TILES_KEY
from mlops_assets.assets.cd.tiles import open_scene
from mlops_assets.assets.common import image_md, lakefs_links, metadata
from mlops_assets.core.cd.infer import change_overlay, predict_scene
from mlops_assets.core.cd.raster import AlignmentError
from mlops_assets.core.cd.registry import load_cd_model
from mlops_assets.core.cd.tiles import TileIndex
from mlops_assets.core.cd.train import select_device
from mlops_assets.core.publish import publish_files
from mlops_assets.core.tracking import TrackingError
from mlops_assets.partitions import cd_scenes
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.resources.outputs import OutputStoreResource
from mlops_assets.resources.scene_store import SceneStoreResource

KEY = dg.AssetKey(["cd", "change_map"])
MAP_FILE = "change_map.tif"
OVERLAY_FILE = "overlay.png"


@dg.asset(
    key=KEY,
    ins={"scene": dg.AssetIn(key=SCENE_KEY), "tiles": dg.AssetIn(key=TILES_KEY)},
    deps=[REGISTERED_KEY],
    partitions_def=cd_scenes,
    group_name="change_detection",
    kinds={"pytorch", "geotiff", "lakefs"},
    io_manager_key="json_io_manager",
    pool="gpu",
    description=(
        "Change probability and mask over the whole scene (pre's grid, nodata kept) from the "
        "registered model under an alias, plus an overlay; committed to the outputs branch."
    ),
)
def cd_change_map(
    context: dg.AssetExecutionContext,
    config: ChangeMapConfig,
    scene: dict[str, Any],
    tiles: dict[str, Any],
    scene_store: SceneStoreResource,
    output_store: OutputStoreResource,
    mlflow: MLflowResource,
    lineage: LineageResource,
) -> dg.MaterializeResult[dict[str, Any]]:
    """Predict one scene with the aliased model and publish the GeoTIFF and overlay."""
    scene_id, commit = scene["scene_id"], scene["commit_id"]
    tracker = mlflow.tracker(EXPERIMENT)
    try:
        tracker.check_reachable()
        model = load_cd_model(tracker, config.model_name, config.alias)
    except TrackingError as exc:
        raise dg.Failure(description=f"cd/{scene_id}: {exc}") from exc
    if not tiles.get("published"):
        raise dg.Failure(description=f"cd/{scene_id}: its tiles were not published")
    index = TileIndex.load(output_store.fetch(tiles["key"]))
    inference = config.to_core()
    store = scene_store.get_store()
    Path(output_store.cache_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="change-map-", dir=output_store.cache_dir) as tmp:
        out, overlay_path = Path(tmp) / MAP_FILE, Path(tmp) / OVERLAY_FILE
        try:
            resampling = str(index.config.get("resampling", "bilinear"))
            with open_scene(scene, store, resampling) as pair:
                summary = predict_scene(
                    pair,
                    model.net,
                    index.pre_stats,
                    index.post_stats,
                    inference,
                    out,
                    select_device(inference.device),
                    model.size_multiple,
                )
                overlay = change_overlay(pair, out)
        except AlignmentError as exc:
            raise dg.Failure(description=f"cd/{scene_id} at {commit[:12]}: {exc}") from exc
        overlay.save(overlay_path)
        git_sha = lineage.code_version()
        run_url = tracker.run_url(model.run_id, mlflow.ui_url)
        lineage_meta = {
            "source_commit": commit,
            "source_repository": scene["repository"],
            "scene": f"cd/{scene_id}",
            "model_name": model.name,
            "model_version": model.version,
            "model_alias": model.alias,
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
            f"cd/{scene_id}",
            {MAP_FILE: out, OVERLAY_FILE: overlay_path},
            f"Change map of cd/{scene_id} at {commit[:12]} by {model.name} v{model.version}",
            lineage_meta,
        )
    map_path = f"cd/{scene_id}/{MAP_FILE}"
    value = {
        "scene_id": scene_id,
        "source_commit": commit,
        "outputs_branch": publication.branch,
        "outputs_commit": publication.commit_id,
        "change_map": store.uri(publication.commit_id, map_path),
        "overlay": store.uri(publication.commit_id, f"cd/{scene_id}/{OVERLAY_FILE}"),
        "model": {"name": model.name, "version": model.version, "run_id": model.run_id},
        "changed_area_m2": summary.changed_area_m2,
        "changed_percent": summary.changed_percent,
        "f1": summary.f1,
    }
    return dg.MaterializeResult(
        value=value,
        data_version=dg.DataVersion(f"{commit[:16]}-{model.name}-v{model.version}"),
        metadata=metadata(
            {
                "changed_area_m2": round(summary.changed_area_m2, 1),
                "changed_percent": round(summary.changed_percent, 3),
                "f1_vs_label": None if summary.f1 is None else round(summary.f1, 4),
                "precision_vs_label": None
                if summary.precision is None
                else round(summary.precision, 4),
                "recall_vs_label": None if summary.recall is None else round(summary.recall, 4),
                "model": f"{model.name} v{model.version} ({model.alias})",
                "model_version": dg.MetadataValue.url(mlflow.model_url(model.name, model.version)),
                "mlflow_run": dg.MetadataValue.url(run_url),
                "source_commit": commit,
                "outputs_commit": publication.commit_id,
                "change_map_uri": value["change_map"],
                "overlay_uri": value["overlay"],
                "size": f"{summary.width}x{summary.height}",
                "git_sha": git_sha,
                "inference": dataclasses.asdict(inference),
                "preview": image_md(overlay, "change overlay"),
            }
        ),
    )
