"""The weekly retraining schedule, and the automation loading into the code location."""

from __future__ import annotations

import datetime
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.schedules import build_cd_retrain_schedule, cd_retrain_weekly
from mlops_assets.sensors import lakefs_commit_sensor, mlflow_alias_sensor


def test_the_weekly_schedule_retrains_on_monday_night_and_starts_stopped() -> None:
    assert cd_retrain_weekly.name == "cd_retrain_weekly"
    assert cd_retrain_weekly.cron_schedule == "0 3 * * 1"
    assert cd_retrain_weekly.execution_timezone == "UTC"
    assert cd_retrain_weekly.default_status == dg.DefaultScheduleStatus.STOPPED
    assert cd_retrain_weekly.job_name == "cd_retrain"


def test_a_tick_requests_one_retraining_run() -> None:
    monday = datetime.datetime(2026, 11, 30, 3, tzinfo=datetime.UTC)
    context = dg.build_schedule_context(scheduled_execution_time=monday)
    data = cd_retrain_weekly.evaluate_tick(context)
    assert len(data.run_requests or []) == 1
    request = (data.run_requests or [])[0]
    assert request.tags["mlops/trigger"] == "schedule"


def test_the_cron_is_configurable_and_checked() -> None:
    nightly = build_cd_retrain_schedule(
        "30 1 * * *", "Europe/Berlin", dg.DefaultScheduleStatus.RUNNING
    )
    assert (nightly.cron_schedule, nightly.execution_timezone) == ("30 1 * * *", "Europe/Berlin")
    assert nightly.default_status == dg.DefaultScheduleStatus.RUNNING
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="cron"):
        build_cd_retrain_schedule("every monday")


def test_sensors_and_schedule_load_with_the_assets_they_target(tmp_path: Path) -> None:
    from mlops_assets.definitions import build_defs
    from mlops_assets.settings import Settings

    base = build_defs(Settings.from_env({}, cwd=tmp_path))
    defs = dg.Definitions(
        assets=base.assets,
        resources=base.resources,
        sensors=[lakefs_commit_sensor, mlflow_alias_sensor],
        schedules=[cd_retrain_weekly],
    )
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    keys = {
        name: {"/".join(k.path) for k in repository.get_job(name).asset_layer.executable_asset_keys}
        for name in (
            "cd_scene_refresh",
            "nvs_scene_refresh",
            "cd_retrain",
            "cd_change_map_refresh",
        )
    }
    assert keys == {
        "cd_scene_refresh": {"cd/scene", "cd/tiles", "cd/change_map"},
        "nvs_scene_refresh": {"nvs/scene", "nvs/splats", "nvs/registered_splats", "nvs/render"},
        "cd_retrain": {"cd/model", "cd/evaluation", "cd/registered_model"},
        "cd_change_map_refresh": {"cd/change_map"},
    }
    assert repository.get_job("cd_scene_refresh").partitions_def is not None
    change_maps = {"ops": {"cd__change_map": {"config": {"model_name": "m", "alias": "champion"}}}}
    dg.validate_run_config(repository.get_job("cd_change_map_refresh"), change_maps)
    assert repository.get_job("cd_retrain").partitions_def is None
