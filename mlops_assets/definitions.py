"""The one assembly point: `build_defs` turns `Settings` into the code location's Definitions.

Dagster calls `defs` (a `dg.definitions` function) when it loads the code location; that is when
the environment is read, never at import. The embedded default and the production stack differ only
in the resources bound here, chosen by configuration.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from mlops_assets.assets.cd.change_map import cd_change_map, cd_change_map_f1
from mlops_assets.assets.cd.evaluation import cd_evaluation
from mlops_assets.assets.cd.model import cd_model, cd_registered_model
from mlops_assets.assets.cd.scene import cd_scene
from mlops_assets.assets.cd.sweep import cd_sweep
from mlops_assets.assets.cd.tiles import cd_tiles
from mlops_assets.assets.nvs.render import nvs_render
from mlops_assets.assets.nvs.scene import nvs_scene
from mlops_assets.assets.nvs.splats import nvs_registered_splats, nvs_splats
from mlops_assets.jobs.ingest import ingest_scene_job
from mlops_assets.jobs.sweep import cd_sweep_job
from mlops_assets.resources.io_managers import JsonIOManager
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.resources.outputs import (
    LocalOutputStoreResource,
    OutputStoreResource,
    S3OutputStoreResource,
)
from mlops_assets.resources.scene_store import SceneStoreResource, scene_store_resource
from mlops_assets.resources.sweeps import OptunaStorageResource
from mlops_assets.scale import build_executor, check_pools
from mlops_assets.schedules import build_cd_retrain_schedule
from mlops_assets.sensors.lakefs import build_lakefs_commit_sensor
from mlops_assets.sensors.mlflow_alias import build_mlflow_alias_sensor
from mlops_assets.sensors.quality import build_quality_retrain_sensor
from mlops_assets.sensors.timing import tick_interval_s
from mlops_assets.settings import Settings


def build_scene_store(settings: Settings) -> SceneStoreResource:
    """The scene-store resource for these settings (lakeFS credentials stay `EnvVar`s)."""
    return scene_store_resource(settings)


def build_output_store(settings: Settings) -> OutputStoreResource:
    """Local directory by default; S3 (credentials from the AWS_* environment) with a bucket."""
    cache = str(settings.cache_dir / "outputs")
    if settings.output_bucket is None:
        return LocalOutputStoreResource(root=str(settings.outputs_dir), cache_dir=cache)
    return S3OutputStoreResource(
        endpoint_url=settings.s3_endpoint_url,
        bucket=settings.output_bucket,
        prefix=settings.output_prefix,
        cache_dir=cache,
    )


def build_mlflow(settings: Settings) -> MLflowResource:
    """SQLite under MLOPS_HOME, or the server in MLFLOW_TRACKING_URI (kept an `EnvVar`)."""
    if settings.mlflow_tracking_uri is None:
        return MLflowResource(
            tracking_uri=settings.tracking_uri,
            artifact_root=str(settings.mlflow_artifact_root),
            ui_url=settings.mlflow_url,
        )
    return MLflowResource(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"), ui_url=settings.mlflow_url)


def build_optuna_storage(settings: Settings) -> OptunaStorageResource:
    """A journal file under MLOPS_HOME, or the database in MLOPS_OPTUNA_STORAGE (an `EnvVar`)."""
    if settings.optuna_storage is None:
        return OptunaStorageResource(storage=settings.sweep_storage)
    return OptunaStorageResource(storage=dg.EnvVar("MLOPS_OPTUNA_STORAGE"))


def build_resources(settings: Settings) -> dict[str, Any]:
    """Every resource the assets use."""
    return {
        "scene_store": build_scene_store(settings),
        "output_store": build_output_store(settings),
        "mlflow": build_mlflow(settings),
        # Asset values under MLOPS_HOME, or in s3://<bucket>/<prefix>/assets with an S3 output
        # store: then no run state stays on a worker's disk.
        "json_io_manager": JsonIOManager(
            base_dir=settings.assets_url, endpoint_url=settings.s3_endpoint_url
        ),
        "lineage": LineageResource(git_sha=settings.git_sha, dagster_url=settings.dagster_url),
        "optuna_storage": build_optuna_storage(settings),
    }


def build_defs(settings: Settings) -> dg.Definitions:
    """The code location: assets, checks, jobs, sensors, schedules and resources for ``settings``.

    ``MLOPS_EXECUTOR=k8s`` runs each step in a pod of its own (dagster-k8s, the ``[scale]``
    extra); a step in a pool no deployment configures is refused here. Every sensor starts
    RUNNING (so ``make dev`` reacts to commits at once) and reacts within
    ``MLOPS_SENSOR_INTERVAL_S`` seconds (it ticks a little more often: see
    `mlops_assets.sensors.timing`); the weekly schedule starts STOPPED.
    """
    interval = tick_interval_s(settings.sensor_interval_s)
    defs = dg.Definitions(
        assets=[
            cd_scene,
            cd_tiles,
            cd_model,
            cd_evaluation,
            cd_registered_model,
            cd_change_map,
            cd_sweep,
            nvs_scene,
            nvs_splats,
            nvs_registered_splats,
            nvs_render,
        ],
        asset_checks=[cd_change_map_f1],
        jobs=[ingest_scene_job, cd_sweep_job],
        sensors=[
            build_lakefs_commit_sensor(
                minimum_interval_seconds=interval, batch_over=settings.sensor_batch_over
            ),
            build_mlflow_alias_sensor(minimum_interval_seconds=interval),
            build_quality_retrain_sensor(minimum_interval_seconds=interval),
        ],
        schedules=[build_cd_retrain_schedule(cron_schedule=settings.retrain_cron)],
        resources=build_resources(settings),
        executor=build_executor(settings.executor),  # MLOPS_EXECUTOR=k8s: a pod per step
    )
    check_pools(defs)  # a step in a pool no deployment limits fails the load, naming it
    return defs


@dg.definitions
def defs() -> dg.Definitions:
    """Entry point for Dagster: read the environment now, at load time."""
    return build_defs(Settings.from_env())
