"""``mlflow_alias_sensor``: when the champion moves, every change map is re-rendered with it.

The champion alias of the change-detection model moves when ``cd/registered_model`` promotes a
version, and when a person points it elsewhere in the MLflow UI (a rollback). ``cd/change_map``
loads the version under the alias when it runs, so the maps on the ``outputs`` branch are only as
current as their last run: on each move this sensor requests ``cd_change_map_refresh`` for every
``cd_scenes`` partition whose latest map was not made by the new version.

The cursor records the version seen and how many moves it has seen (JSON), and run keys carry the
move: a rollback to a version that was champion before (v1 -> v2 -> v1) is a new move with new
run keys, which a key of version and scene alone would have Dagster drop as already launched. A
repeated tick (same cursor) requests the same keys, so it never launches twice.
"""

from __future__ import annotations

import json

import dagster as dg

from mlops_assets.assets.cd.config import DEFAULT_MODEL_NAME, EXPERIMENT
from mlops_assets.core.aliases import CHAMPION
from mlops_assets.keys import CD_CHANGE_MAP, CD_CHANGE_MAP_OP, DATA_VERSION_TAG, parse_model_version
from mlops_assets.partitions import cd_scenes
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.sensors.jobs import cd_change_map_refresh

SENSOR_NAME = "mlflow_alias_sensor"
DEFAULT_INTERVAL_S = 30
CHANGE_MAP_OP = CD_CHANGE_MAP_OP


def parse_cursor(cursor: str | None) -> tuple[str | None, int]:
    """The version seen and the number of moves seen (a bare version string counts as 0)."""
    if not cursor:
        return None, 0
    try:
        state = json.loads(cursor)
    except ValueError:
        return cursor, 0
    if not isinstance(state, dict):
        return str(state), 0
    version = state.get("version")
    return (None if version is None else str(version)), int(state.get("moves", 0))


def make_cursor(version: str, moves: int) -> str:
    """The cursor after seeing ``version`` as the ``moves``-th move."""
    return json.dumps({"version": version, "moves": moves}, sort_keys=True)


def rendered_version(instance: dg.DagsterInstance, scene: str, model_name: str) -> str | None:
    """The model version behind ``scene``'s latest change map, or None (none, or not told)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=CD_CHANGE_MAP, asset_partitions=[scene]), limit=1
    ).records
    materialization = records[0].asset_materialization if records else None
    data_version = (materialization.tags or {}).get(DATA_VERSION_TAG) if materialization else None
    return parse_model_version(data_version, model_name)


def build_mlflow_alias_sensor(
    model_name: str = DEFAULT_MODEL_NAME,
    alias: str = CHAMPION,
    minimum_interval_seconds: int = DEFAULT_INTERVAL_S,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    name: str = SENSOR_NAME,
) -> dg.SensorDefinition:
    """A sensor on ``model_name@alias`` that re-renders every change map when it moves."""
    version_tag = f"mlflow/{alias}_version"

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        job=cd_change_map_refresh,
        description=(
            f"Watches the {alias!r} alias of the MLflow model {model_name!r}; when it moves "
            "(promotion or rollback), re-renders every cd/change_map partition with that version."
        ),
    )
    def mlflow_alias_sensor(
        context: dg.SensorEvaluationContext, mlflow: MLflowResource
    ) -> dg.SensorResult | dg.SkipReason:
        # MLflow loads on the first tick, in the code server, not with the code location.
        import requests
        from mlflow.exceptions import MlflowException

        from mlops_assets.core.tracking import TrackingError

        seen, moves = parse_cursor(context.cursor)
        tracker = mlflow.tracker(EXPERIMENT)
        try:
            tracker.check_reachable()
            current = tracker.version_by_alias(model_name, alias)
        except (TrackingError, MlflowException, requests.RequestException) as exc:
            return dg.SkipReason(
                f"MLflow at {mlflow.display_uri} cannot be asked for {model_name}@{alias}; "
                f"cursor kept: {exc}"
            )
        if current is None:
            return dg.SkipReason(
                f"{model_name!r} has no version under {alias!r} in {mlflow.display_uri} yet"
            )
        version = str(current.version)
        if version == seen:
            return dg.SkipReason(f"{model_name}@{alias} is still v{version}")
        moves += 1
        cursor = make_cursor(version, moves)
        partitions = cd_scenes.name
        assert partitions is not None
        scenes = sorted(context.instance.get_dynamic_partitions(partitions))
        stale = [s for s in scenes if rendered_version(context.instance, s, model_name) != version]
        moved = f"{model_name}@{alias} moved {'v' + seen if seen else 'from none'} -> v{version}"
        context.log.info(f"{moved}: {len(stale)} of {len(scenes)} change maps to re-render")
        if not stale:
            return dg.SensorResult(
                skip_reason=f"{moved}; no change map to re-render ({len(scenes)} already with it)",
                cursor=cursor,
            )
        config = {"config": {"model_name": model_name, "alias": alias}}
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"{alias}-v{version}-move{moves}:{scene}",
                    job_name=cd_change_map_refresh.name,
                    partition_key=scene,
                    run_config={"ops": {CHANGE_MAP_OP: config}},
                    tags={
                        version_tag: version,
                        "mlflow/model_name": model_name,
                        "mlflow/previous_version": seen or "none",
                    },
                )
                for scene in stale
            ],
            cursor=cursor,
        )

    return mlflow_alias_sensor


mlflow_alias_sensor = build_mlflow_alias_sensor()
