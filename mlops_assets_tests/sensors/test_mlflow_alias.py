"""The champion-alias sensor against a real (SQLite) MLflow registry."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.core.tracking import CHAMPION, Tracker
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.sensors.mlflow_alias import (
    build_mlflow_alias_sensor,
    mlflow_alias_sensor,
    parse_cursor,
)
from mlops_assets_tests.core.cd import mlflow_uri
from mlops_assets_tests.sensors import free_port, tick

MODEL = "change-detection-unet"
SCENES = ["farm", "river", "suburb"]


@pytest.fixture
def mlflow(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> MLflowResource:
    """An empty SQLite MLflow under ``tmp_path``."""
    return MLflowResource(
        tracking_uri=mlflow_uri(tmp_path_factory, tmp_path / "mlflow"),
        artifact_root=str(tmp_path / "mlartifacts"),
    )


def register(mlflow: MLflowResource, versions: int) -> Tracker:
    """``versions`` bare versions of the model (the sensor only reads aliases)."""
    tracker = mlflow.tracker("change-detection")
    with contextlib.suppress(Exception):
        tracker.client.create_registered_model(MODEL)
    for _ in range(versions):
        with tracker.run("train", {}) as run_id:
            pass
        tracker.client.create_model_version(MODEL, f"runs:/{run_id}/model", run_id)
    return tracker


def result_of(
    instance: dg.DagsterInstance, mlflow: MLflowResource, cursor: str | None
) -> dg.SensorResult | dg.SkipReason:
    return tick(mlflow_alias_sensor, instance, {"mlflow": mlflow}, cursor)


def requests(result: dg.SensorResult | dg.SkipReason) -> dict[str, dg.RunRequest]:
    assert isinstance(result, dg.SensorResult), result
    return {r.run_key or "": r for r in result.run_requests or []}


def test_the_sensor_is_named_running_and_ticks_every_30_s() -> None:
    assert mlflow_alias_sensor.name == "mlflow_alias_sensor"
    assert mlflow_alias_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert mlflow_alias_sensor.minimum_interval_seconds == 30
    assert mlflow_alias_sensor.required_resource_keys == {"mlflow"}
    other = build_mlflow_alias_sensor("other-model", minimum_interval_seconds=5)
    assert other.minimum_interval_seconds == 5
    assert other.description is not None and "'other-model'" in other.description


def test_no_registered_model_or_no_champion_skips(
    instance: dg.DagsterInstance, mlflow: MLflowResource
) -> None:
    result = result_of(instance, mlflow, None)
    assert isinstance(result, dg.SkipReason)
    assert result.skip_message == (
        f"'{MODEL}' has no version under 'champion' in {mlflow.tracking_uri} yet"
    )
    register(mlflow, 1)  # a version, but no alias on it
    assert isinstance(result_of(instance, mlflow, None), dg.SkipReason)


def test_unreachable_mlflow_skips_with_the_reason(instance: dg.DagsterInstance) -> None:
    down = MLflowResource(tracking_uri=f"http://127.0.0.1:{free_port()}")
    result = result_of(instance, down, '{"moves": 1, "version": "1"}')
    assert isinstance(result, dg.SkipReason)  # the stored cursor stays as it was
    message = result.skip_message or ""
    assert message.startswith(
        f"MLflow at {down.tracking_uri} cannot be asked for {MODEL}@champion; cursor kept: "
    )
    assert "unreachable" in message


def test_each_champion_move_re_renders_every_map_once_rollbacks_included(
    instance: dg.DagsterInstance, mlflow: MLflowResource
) -> None:
    instance.add_dynamic_partitions("cd_scenes", SCENES)
    tracker = register(mlflow, 2)

    tracker.set_alias(MODEL, CHAMPION, "1")
    first = result_of(instance, mlflow, None)
    assert set(requests(first)) == {f"champion-v1-move1:{s}" for s in SCENES}
    request = requests(first)["champion-v1-move1:river"]
    assert (request.job_name, request.partition_key) == ("cd_change_map_refresh", "river")
    assert request.tags == {
        "mlflow/champion_version": "1",
        "mlflow/model_name": MODEL,
        "mlflow/previous_version": "none",
    }
    assert request.run_config == {
        "ops": {"cd__change_map": {"config": {"model_name": MODEL, "alias": "champion"}}}
    }
    assert isinstance(first, dg.SensorResult)
    assert json.loads(first.cursor or "") == {"version": "1", "moves": 1}

    repeated = result_of(instance, mlflow, first.cursor)
    assert isinstance(repeated, dg.SkipReason)
    assert repeated.skip_message == f"{MODEL}@champion is still v1"

    tracker.set_alias(MODEL, CHAMPION, "2")  # promotion
    promoted = result_of(instance, mlflow, first.cursor)
    assert set(requests(promoted)) == {f"champion-v2-move2:{s}" for s in SCENES}
    assert requests(promoted)["champion-v2-move2:farm"].tags["mlflow/previous_version"] == "1"
    assert isinstance(promoted, dg.SensorResult)

    tracker.set_alias(MODEL, CHAMPION, "1")  # a person rolls back in the MLflow UI
    rolled_back = result_of(instance, mlflow, promoted.cursor)
    # New keys: the keys of move 1 were used already and Dagster would drop them.
    assert set(requests(rolled_back)) == {f"champion-v1-move3:{s}" for s in SCENES}
    assert isinstance(rolled_back, dg.SensorResult)
    assert parse_cursor(rolled_back.cursor) == ("1", 3)


def test_maps_already_rendered_by_the_new_champion_are_not_requested_again(
    instance: dg.DagsterInstance, mlflow: MLflowResource
) -> None:
    instance.add_dynamic_partitions("cd_scenes", SCENES)
    tracker = register(mlflow, 2)
    tracker.set_alias(MODEL, CHAMPION, "2")
    for scene, version in (("farm", "2"), ("river", "1")):
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=["cd", "change_map"],
                partition=scene,
                tags={"dagster/data_version": f"{'0' * 16}-{MODEL}-v{version}"},
            )
        )
    result = result_of(instance, mlflow, json.dumps({"version": "1", "moves": 4}))
    assert set(requests(result)) == {"champion-v2-move5:river", "champion-v2-move5:suburb"}


def test_a_move_with_nothing_to_render_advances_the_cursor(
    instance: dg.DagsterInstance, mlflow: MLflowResource
) -> None:
    tracker = register(mlflow, 1)
    tracker.set_alias(MODEL, CHAMPION, "1")
    result = result_of(instance, mlflow, None)  # no CD scene yet
    assert isinstance(result, dg.SensorResult)
    assert not result.run_requests
    assert parse_cursor(result.cursor) == ("1", 1)
    assert result.skip_reason is not None
    assert result.skip_reason.skip_message == (
        f"{MODEL}@champion moved from none -> v1; no change map to re-render (0 already with it)"
    )


@pytest.mark.parametrize(
    ("cursor", "parsed"),
    [
        (None, (None, 0)),
        ("", (None, 0)),
        ("3", ("3", 0)),  # a bare version, as an older cursor might hold
        ('{"version": "4", "moves": 7}', ("4", 7)),
    ],
)
def test_cursor_parsing(cursor: str | None, parsed: tuple[str | None, int]) -> None:
    assert parse_cursor(cursor) == parsed
