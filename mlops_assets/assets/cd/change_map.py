"""``cd/change_map``: the champion model slid over a whole scene, published to ``outputs``."""

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from mlops_assets import keys
from mlops_assets.assets.cd.config import EXPERIMENT, PRESET_FIELD, ChangeMapConfig, Preset
from mlops_assets.assets.cd.tiles import open_scene
from mlops_assets.assets.common import (
    image_md,
    metadata,
    model_output_metadata,
    publish_model_outputs,
)
from mlops_assets.core.cd.config import GateConfig, preset
from mlops_assets.core.cd.raster import AlignmentError
from mlops_assets.core.cd.records import ChangeMapRecord, TilesRecord
from mlops_assets.core.cd.tiles import TileIndex
from mlops_assets.core.records import ModelRef
from mlops_assets.core.scenes.cd import CDScene
from mlops_assets.partitions import cd_scenes
from mlops_assets.resources.failures import failure_on
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.resources.outputs import OutputStoreResource
from mlops_assets.resources.scene_store import SceneStoreResource
from mlops_assets.retries import EXTERNAL_RETRY
from mlops_assets.scale import gpu_op_tags

KEY = keys.CD_CHANGE_MAP
MAP_FILE = "change_map.tif"
OVERLAY_FILE = "overlay.png"


def _summary_metadata(summary: Any) -> dict[str, Any]:
    """The changed area and the agreement with the label (a `ChangeMapSummary`)."""

    def rounded(value: float | None, digits: int) -> float | None:
        return None if value is None else round(value, digits)

    return {
        **(
            {"changed_area_px": summary.changed_pixels, "crs": "none: pixel grid"}
            if summary.pixel_area_m2 is None
            else {"changed_area_m2": round(summary.changed_area_m2 or 0.0, 1)}
        ),
        "changed_percent": round(summary.changed_percent, 3),
        "f1_vs_label": rounded(summary.f1, 4),
        "precision_vs_label": rounded(summary.precision, 4),
        "recall_vs_label": rounded(summary.recall, 4),
    }


def _predict_and_publish(
    context: dg.AssetExecutionContext,
    source: CDScene,
    index: TileIndex,
    model: Any,  # a LoadedCDModel (PyTorch is imported by the step only)
    config: ChangeMapConfig,
    scene_store: SceneStoreResource,
    output_store: OutputStoreResource,
    lineage: LineageResource,
    mlflow: MLflowResource,
) -> tuple[ChangeMapRecord, Any, Any]:
    """Slide ``model`` over the scene, publish map and overlay: ``(record, summary, overlay)``."""
    from mlops_assets.core.cd.infer import ModelMismatchError, change_overlay, predict_scene
    from mlops_assets.core.compute import select_device

    scene_id, commit = source.scene_id, source.commit_id
    inference = config.to_core()
    resampling = str(index.config.get("resampling", "bilinear"))
    stats, device = (index.pre_stats, index.post_stats), select_device(inference.device)
    Path(output_store.cache_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="change-map-", dir=output_store.cache_dir) as tmp:
        out, overlay_path = Path(tmp) / MAP_FILE, Path(tmp) / OVERLAY_FILE
        label = f"cd/{scene_id} at {commit[:12]}: "
        with (
            failure_on(AlignmentError, ModelMismatchError, label=label, allow_retries=False),
            open_scene(source, scene_store.get_store(), resampling) as pair,
        ):
            summary = predict_scene(
                pair, model.net, *stats, inference, out, device, model.size_multiple
            )
            overlay = change_overlay(pair, out)
        overlay.save(overlay_path)
        publication = publish_model_outputs(
            context,
            scene_store,
            lineage,
            mlflow,
            scene=f"cd/{scene_id}",
            source_commit=commit,
            source_repository=source.repository,
            model=ModelRef(model.name, model.version, model.run_id),
            alias=model.alias,
            files={MAP_FILE: out, OVERLAY_FILE: overlay_path},
            message=f"Change map of cd/{scene_id} at {commit[:12]} "
            f"by {model.name} v{model.version}",
        )
    store = scene_store.get_store()
    uris = {
        name: store.uri(publication.commit_id, f"cd/{scene_id}/{name}")
        for name in (MAP_FILE, OVERLAY_FILE)
    }
    record = ChangeMapRecord(
        scene_id=scene_id,
        source_commit=commit,
        outputs_branch=publication.branch,
        outputs_commit=publication.commit_id,
        change_map=uris[MAP_FILE],
        overlay=uris[OVERLAY_FILE],
        model=ModelRef(model.name, model.version, model.run_id),
        changed_area_m2=summary.changed_area_m2,
        changed_pixels=summary.changed_pixels,
        changed_percent=summary.changed_percent,
        f1=summary.f1,
    )
    return record, summary, overlay


@dg.asset(
    key=KEY,
    ins={"scene": dg.AssetIn(key=keys.CD_SCENE), "tiles": dg.AssetIn(key=keys.CD_TILES)},
    deps=[keys.CD_REGISTERED_MODEL],
    partitions_def=cd_scenes,
    group_name=keys.CD_GROUP,
    kinds={"pytorch", "geotiff", "lakefs"},
    io_manager_key="json_io_manager",
    retry_policy=EXTERNAL_RETRY,
    op_tags=gpu_op_tags(),  # on Kubernetes: a GPU node (mlops_assets.scale)
    pool="gpu",
    description=(
        "Change probability and mask over the whole scene (pre's grid, nodata kept) from the "
        "registered model under an alias, plus an overlay; committed to the outputs branch."
    ),
)
def cd_change_map(
    context: dg.AssetExecutionContext,
    config: ChangeMapConfig,
    scene: CDScene,
    tiles: TilesRecord,
    scene_store: SceneStoreResource,
    output_store: OutputStoreResource,
    mlflow: MLflowResource,
    lineage: LineageResource,
) -> dg.MaterializeResult[ChangeMapRecord]:
    """Predict one scene with the aliased model and publish the GeoTIFF and overlay."""
    # PyTorch and MLflow load here, when the step runs, not with the code location.
    from mlops_assets.core.cd.registry import load_cd_model
    from mlops_assets.core.tracking import AliasNotFoundError, TrackingError

    scene_id, commit, label = scene.scene_id, scene.commit_id, f"cd/{scene.scene_id}: "
    tracker = mlflow.reachable_tracker(EXPERIMENT, label)
    with (  # a missing alias stays missing: no retry; an unreachable server may come back
        failure_on(TrackingError, label=label),
        failure_on(AliasNotFoundError, label=label, allow_retries=False),
    ):
        model = load_cd_model(tracker, config.model_name, config.alias)
    if not tiles.published:
        raise dg.Failure(
            description=f"cd/{scene_id}: its tiles were not published", allow_retries=False
        )
    index = TileIndex.load(output_store.fetch(tiles.key))
    record, summary, overlay = _predict_and_publish(
        context, scene, index, model, config, scene_store, output_store, lineage, mlflow
    )
    run_url = tracker.run_url(model.run_id, mlflow.ui_url)
    return dg.MaterializeResult(
        value=record,
        data_version=dg.DataVersion(keys.model_output_version(commit, model.name, model.version)),
        metadata=metadata(
            {
                **_summary_metadata(summary),
                **model_output_metadata(mlflow, run_url, record.model, model.alias),
                "source_commit": commit,
                "outputs_commit": record.outputs_commit,
                "change_map_uri": record.change_map,
                "overlay_uri": record.overlay,
                "size": f"{summary.width}x{summary.height}",
                "git_sha": lineage.code_version(),
                "inference": dataclasses.asdict(config.to_core()),
                "preview": image_md(overlay, "change overlay"),
            }
        ),
    )


F1_CHECK = "f1_against_label"


class F1CheckConfig(dg.Config):
    """How ``f1_against_label`` judges a labelled scene's change map."""

    preset: Preset = PRESET_FIELD
    min_f1: float | None = Field(
        default=None,
        description="Least F1 of the change mask against the scene's label; below it the check "
        "fails and retraining is requested. Unset: the preset's registration-gate minimum (0.8 "
        "for default, 0.0 for tiny: a 2-epoch test model is not judged).",
    )

    def threshold(self) -> float:
        """``min_f1``, or the preset's gate minimum."""
        return (
            self.min_f1 if self.min_f1 is not None else preset(GateConfig, self.preset.value).min_f1
        )


def judge_f1(f1: float | None, min_f1: float) -> tuple[bool, str]:
    """Whether a map's F1 against its label is good enough, and why (no label: not judged)."""
    if f1 is None:
        return True, "no label: nothing to compare the change map with (not judged)"
    if f1 < min_f1:
        return False, f"F1 against the label {f1:.4f} is below the minimum {min_f1:.4f}"
    return True, f"F1 against the label {f1:.4f} >= {min_f1:.4f}"


@dg.asset_check(
    asset=KEY,
    name=F1_CHECK,
    description="The change map of a labelled scene agrees with the label: F1 >= min_f1 "
    "(warning; a failure makes cd_quality_retrain_sensor request a cd_retrain run). Unlabelled "
    "scenes pass with a note.",
)
def cd_change_map_f1(
    context: dg.AssetCheckExecutionContext, config: F1CheckConfig
) -> dg.AssetCheckResult:
    """Judge the run's partition: its map's F1 against the label (in the map's metadata).

    The check runs after the map, in the same run. It reads the map's materialisation rather
    than loading the asset: an unpartitioned check (Dagster's partitioned checks are a preview
    feature) would load every partition's value; so the scene is the run's partition, and is
    also put in the metadata for `mlops_assets.sensors.quality`.
    """
    scene = context.run.tags.get("dagster/partition")
    if scene is None:
        raise dg.Failure(description=f"{F1_CHECK} judges one cd_scenes partition; run it with one")
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=KEY, asset_partitions=[scene]), limit=1
    ).records
    materialization = records[0].asset_materialization if records else None
    if materialization is None:
        raise dg.Failure(description=f"cd/{scene}: no change map to judge")
    meta = materialization.metadata
    f1_value = meta.get("f1_vs_label")
    f1 = None if f1_value is None or f1_value.value is None else float(str(f1_value.value))
    min_f1 = config.threshold()
    passed, description = judge_f1(f1, min_f1)
    model = meta.get("model")
    return dg.AssetCheckResult(
        check_name=F1_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"cd/{scene}: {description}",
        metadata={
            "scene": scene,
            "f1": dg.MetadataValue.null() if f1 is None else round(f1, 4),
            "min_f1": min_f1,
            "labelled": f1 is not None,
            "model": "" if model is None else str(model.value),
        },
    )
