"""``cd_quality_retrain_sensor``: a failed quality check on a labelled change map retrains.

``cd/change_map``'s ``f1_against_label`` check compares each labelled scene's map with its label
(`mlops_assets.assets.cd.change_map`). When it fails, the model has degraded on data it should
handle, so this sensor requests one ``cd_retrain`` run. It reads the check's evaluations from the
instance (the asset-check execution history); its cursor is the id of the newest failed
evaluation it has acted on.

One run per batch of failures: all the failures since the cursor (a re-render of every map after
the champion moved can fail many partitions at once) give one request, keyed
``f1_against_label:<newest failed evaluation id>``, so a repeated or racing tick never launches
twice. A failure that a ``cd_retrain`` run already answers (one created after it, or one still
queued or running) requests nothing and only moves the cursor. The registration gate then decides
whether the retrained model replaces the champion; if it does, ``mlflow_alias_sensor`` re-renders
the maps and the check runs again.
"""

import datetime as dt

import dagster as dg

from mlops_assets.keys import CD_CHANGE_MAP, TAG_TRIGGER

# Not re-exported at the top level; the execution history is the instance's record of check runs.
from mlops_assets.sensors.dagster_internals import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionRecordStatus,
)
from mlops_assets.sensors.jobs import cd_retrain

SENSOR_NAME = "cd_quality_retrain_sensor"
DEFAULT_INTERVAL_S = 30
#: ``cd/change_map``'s F1 check (spelled out, like the keys in `mlops_assets.keys`, so
#: loading the sensor does not import PyTorch; a test checks it against the asset check).
F1_CHECK_KEY = dg.AssetCheckKey(CD_CHANGE_MAP, "f1_against_label")
#: Failed evaluations read per tick; one is enough to act, the rest only name partitions.
_BATCH = 100

TAG_FAILED_CHECK = "mlops/failed_check"
TAG_FAILED_PARTITIONS = "mlops/failed_partitions"
TAG_FAILED_RUN = "mlops/failed_check_run"

_FINISHED = frozenset(
    {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
)
_UNFINISHED = [status for status in dg.DagsterRunStatus if status not in _FINISHED]


def parse_cursor(cursor: str | None) -> int:
    """The id of the last failed evaluation acted on (0: none; an unreadable cursor is none)."""
    return int(cursor) if cursor and cursor.isdigit() else 0


def new_failures(
    instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, after: int
) -> list[AssetCheckExecutionRecord]:
    """Failed evaluations of ``check_key`` with an id above ``after``, newest first."""
    records = instance.event_log_storage.get_asset_check_execution_history(
        check_key, limit=_BATCH, status={AssetCheckExecutionRecordStatus.FAILED}
    )
    return [r for r in records if r.id > after]


def failed_scene(record: AssetCheckExecutionRecord) -> str | None:
    """The scene a failed evaluation judged: its partition, else its ``scene`` metadata."""
    if record.partition:
        return record.partition
    evaluation = record.event.asset_check_evaluation if record.event else None
    scene = evaluation.metadata.get("scene") if evaluation else None
    return None if scene is None else str(scene.value)


def answering_run(instance: dg.DagsterInstance, since: float) -> str | None:
    """A ``cd_retrain`` run that answers a failure at ``since`` (newer, or unfinished), if any."""
    newer = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=cd_retrain.name, created_after=dt.datetime.fromtimestamp(since, dt.UTC)
        ),
        limit=1,
    )
    unfinished = instance.get_run_records(
        filters=dg.RunsFilter(job_name=cd_retrain.name, statuses=_UNFINISHED), limit=1
    )
    found = newer or unfinished
    return found[0].dagster_run.run_id if found else None


def build_quality_retrain_sensor(
    check_key: dg.AssetCheckKey = F1_CHECK_KEY,
    minimum_interval_seconds: int = DEFAULT_INTERVAL_S,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    name: str = SENSOR_NAME,
) -> dg.SensorDefinition:
    """A sensor requesting one ``cd_retrain`` run per batch of failed ``check_key`` evaluations."""
    check = check_key.to_user_string()

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        job=cd_retrain,
        description=(
            f"Requests one cd_retrain run when {check} fails (a labelled scene's change map "
            "disagrees with its label), once per batch of failures."
        ),
    )
    def cd_quality_retrain_sensor(
        context: dg.SensorEvaluationContext,
    ) -> dg.SensorResult | dg.SkipReason:
        seen = parse_cursor(context.cursor)
        failed = new_failures(context.instance, check_key, seen)
        if not failed:
            return dg.SkipReason(f"no failed {check} evaluation after #{seen}")
        newest = failed[0]
        cursor = str(newest.id)
        partitions = sorted({s for s in map(failed_scene, failed) if s})
        what = f"{len(failed)} failed {check} evaluation(s) ({', '.join(partitions) or '-'})"
        running = answering_run(context.instance, newest.create_timestamp)
        if running is not None:
            return dg.SensorResult(
                skip_reason=f"{what}: cd_retrain run {running} already answers them",
                cursor=cursor,
            )
        context.log.info(f"{what}: requesting cd_retrain")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"{check_key.name}:{newest.id}",
                    job_name=cd_retrain.name,
                    tags={
                        TAG_TRIGGER: "quality_check",
                        TAG_FAILED_CHECK: check,
                        TAG_FAILED_PARTITIONS: ",".join(partitions)[:200],
                        TAG_FAILED_RUN: newest.run_id,
                    },
                )
            ],
            cursor=cursor,
        )

    return cd_quality_retrain_sensor


cd_quality_retrain_sensor = build_quality_retrain_sensor()
