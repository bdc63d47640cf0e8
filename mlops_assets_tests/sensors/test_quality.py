"""The F1 check on labelled change maps, and the sensor that retrains when it fails."""

from typing import Any

import dagster as dg
import pytest

from mlops_assets.assets.cd.change_map import KEY, cd_change_map_f1
from mlops_assets.partitions import cd_scenes
from mlops_assets.sensors.quality import F1_CHECK_KEY, cd_quality_retrain_sensor
from mlops_assets_tests.sensors import record_run, tick

F1 = {"farm": 0.31, "river": 0.92, "unlabelled": None, "dune": 0.5}


@dg.asset(key=KEY, partitions_def=cd_scenes)
def stand_in_map(context: dg.AssetExecutionContext) -> dg.MaterializeResult[Any]:
    """What cd/change_map records, without a model: the check only reads this metadata."""
    f1 = F1[context.partition_key]
    return dg.MaterializeResult(
        metadata={
            "f1_vs_label": dg.MetadataValue.null() if f1 is None else f1,
            "model": "change-detection-unet v3 (champion)",
        }
    )


def render(
    instance: dg.DagsterInstance, scene: str, min_f1: float | None = 0.8, preset: str = "default"
) -> Any:
    """One change-map run of ``scene`` with the real F1 check; return its evaluation."""
    return render_run(instance, scene, min_f1, preset)[0]


def render_run(
    instance: dg.DagsterInstance, scene: str, min_f1: float | None = 0.8, preset: str = "default"
) -> tuple[Any, str]:
    """One change-map run of ``scene`` with the real F1 check: its evaluation and run id."""
    if not instance.has_dynamic_partition("cd_scenes", scene):
        instance.add_dynamic_partitions("cd_scenes", [scene])
    result = dg.materialize(
        [stand_in_map, cd_change_map_f1],
        instance=instance,
        partition_key=scene,
        run_config={
            "ops": {
                "cd__change_map_f1_against_label": {
                    "config": {"preset": preset, **({} if min_f1 is None else {"min_f1": min_f1})}
                }
            }
        },
    )
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation, result.run_id


def sensor_tick(
    instance: dg.DagsterInstance, cursor: str | None
) -> dg.SensorResult | dg.SkipReason:
    return tick(cd_quality_retrain_sensor, instance, {}, cursor)


def test_the_check_warns_below_min_f1_and_passes_unlabelled_scenes_with_a_note(
    instance: dg.DagsterInstance,
) -> None:
    failed = render(instance, "farm")
    assert (failed.passed, failed.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert failed.description == "cd/farm: F1 against the label 0.3100 is below the minimum 0.8000"
    assert failed.metadata["f1"].value == 0.31 and failed.metadata["scene"].value == "farm"
    assert render(instance, "river").passed
    note = render(instance, "unlabelled")
    assert note.passed and "no label" in (note.description or "")
    assert note.metadata["labelled"].value is False
    assert render(instance, "farm", min_f1=0.3).passed  # the threshold is run config
    # Unset, it is the preset's gate minimum: 0.8 by default, 0.0 for the tiny test preset.
    assert not render(instance, "dune", min_f1=None).passed
    tiny = render(instance, "dune", min_f1=None, preset="tiny")
    assert tiny.passed and tiny.metadata["min_f1"].value == 0.0


def test_the_sensor_is_running_and_watches_the_f1_check() -> None:
    assert cd_quality_retrain_sensor.name == "cd_quality_retrain_sensor"
    assert cd_quality_retrain_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert cd_quality_retrain_sensor.minimum_interval_seconds == 30
    assert F1_CHECK_KEY in cd_change_map_f1.check_keys


def test_nothing_failed_nothing_requested(instance: dg.DagsterInstance) -> None:
    render(instance, "river")
    render(instance, "unlabelled")
    result = sensor_tick(instance, None)
    assert isinstance(result, dg.SkipReason)
    assert "no failed cd/change_map:f1_against_label evaluation" in (result.skip_message or "")


def test_a_failed_check_requests_one_retraining_run_once(instance: dg.DagsterInstance) -> None:
    render(instance, "river")
    _, failed_run = render_run(instance, "farm")
    first = sensor_tick(instance, None)
    assert isinstance(first, dg.SensorResult)
    (request,) = first.run_requests or []
    assert request.job_name == "cd_retrain"
    assert request.run_key == f"f1_against_label:{first.cursor}"
    assert request.tags["mlops/trigger"] == "quality_check"
    assert request.tags["mlops/failed_check"] == "cd/change_map:f1_against_label"
    assert request.tags["mlops/failed_partitions"] == "farm"
    assert request.tags["mlops/failed_check_run"] == failed_run
    # A tick that raced this one (same cursor) asks for the same key: Dagster launches it once.
    racing = sensor_tick(instance, None)
    assert isinstance(racing, dg.SensorResult)
    assert [r.run_key for r in racing.run_requests or []] == [request.run_key]
    # The next tick has seen it.
    again = sensor_tick(instance, first.cursor)
    assert isinstance(again, dg.SkipReason)


def test_a_batch_of_failures_gives_one_run_naming_every_scene(
    instance: dg.DagsterInstance,
) -> None:
    render(instance, "farm")
    render(instance, "dune")
    result = sensor_tick(instance, None)
    assert isinstance(result, dg.SensorResult)
    (request,) = result.run_requests or []
    assert request.tags["mlops/failed_partitions"] == "dune,farm"


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTED])
def test_a_retraining_run_under_way_answers_the_failure(
    instance: dg.DagsterInstance, status: dg.DagsterRunStatus
) -> None:
    render(instance, "farm")
    running = record_run(instance, "cd_retrain", {}, status)
    result = sensor_tick(instance, None)
    assert isinstance(result, dg.SensorResult)
    assert not result.run_requests
    assert result.cursor is not None  # seen: it does not trigger later either
    assert result.skip_reason is not None
    assert f"cd_retrain run {running.run_id} already answers them" in str(
        result.skip_reason.skip_message
    )
