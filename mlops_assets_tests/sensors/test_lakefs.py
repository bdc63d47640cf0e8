"""The lakeFS commit sensor, tick by tick, on the real embedded store and a temporary instance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.resources.scene_store import EmbeddedSceneStore, LakeFSSceneStore
from mlops_assets.sensors.lakefs import build_lakefs_commit_sensor, lakefs_commit_sensor
from mlops_assets_tests.sensors import (
    apply_partitions,
    drop_scene,
    free_port,
    partitions_requested,
    put_scene,
    record_run,
    tick,
)

CD = ["s1", "s2", "s3", "s4", "s5", "s6"]
NVS = ["globe", "ring"]


@pytest.fixture
def seeded(store: EmbeddedStore) -> str:
    """Six CD and two NVS scenes on main, in one commit."""
    for scene in CD:
        put_scene(store, "cd", scene)
    for scene in NVS:
        put_scene(store, "nvs", scene)
    return store.commit("main", "seed").id


@pytest.fixture
def scene_store(resources: dict[str, Any]) -> dict[str, Any]:
    """The sensor's only resource: the embedded scene store."""
    return {"scene_store": resources["scene_store"]}


def result_of(
    instance: dg.DagsterInstance, resources: dict[str, Any], cursor: str | None
) -> dg.SensorResult:
    result = tick(lakefs_commit_sensor, instance, resources, cursor)
    assert isinstance(result, dg.SensorResult), result
    return result


def runs(result: dg.SensorResult) -> dict[str, dg.RunRequest]:
    return {r.run_key or "": r for r in result.run_requests or []}


def first_tick(instance: dg.DagsterInstance, resources: dict[str, Any]) -> dg.SensorResult:
    """The tick without a cursor, its partitions applied as the daemon would."""
    result = result_of(instance, resources, None)
    apply_partitions(result, instance)
    return result


def test_the_sensor_is_named_running_and_ticks_every_30_s() -> None:
    assert lakefs_commit_sensor.name == "lakefs_commit_sensor"
    assert lakefs_commit_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert lakefs_commit_sensor.minimum_interval_seconds == 30
    assert lakefs_commit_sensor.required_resource_keys == {"scene_store"}
    custom = build_lakefs_commit_sensor(5, dg.DefaultSensorStatus.STOPPED)
    assert (custom.minimum_interval_seconds, custom.default_status) == (
        5,
        dg.DefaultSensorStatus.STOPPED,
    )


def test_the_first_tick_requests_every_scene_at_head(
    seeded: str, instance: dg.DagsterInstance, scene_store: dict[str, Any]
) -> None:
    result = first_tick(instance, scene_store)

    assert result.cursor == seeded
    assert partitions_requested(result) == {"cd_scenes": ("add", CD), "nvs_scenes": ("add", NVS)}
    requested = runs(result)
    assert set(requested) == {f"{seeded}:cd/{s}" for s in CD} | {f"{seeded}:nvs/{s}" for s in NVS}
    cd = requested[f"{seeded}:cd/s3"]
    assert (cd.job_name, cd.partition_key) == ("cd_scene_refresh", "s3")
    assert cd.run_config == {"ops": {"cd__scene": {"config": {"ref": seeded}}}}
    assert cd.tags == {
        "lakefs/commit": seeded,
        "lakefs/branch": "main",
        "lakefs/repository": "scenes",
        "lakefs/scene": "cd/s3",
    }
    nvs = requested[f"{seeded}:nvs/ring"]
    assert (nvs.job_name, nvs.partition_key) == ("nvs_scene_refresh", "ring")
    assert nvs.run_config == {"ops": {"nvs__scene": {"config": {"ref": seeded}}}}
    # The model retrains after the scene runs have finished, on a later tick, never with them.
    assert all(r.job_name != "cd_retrain" for r in requested.values())


def test_a_commit_changing_k_of_n_scenes_requests_exactly_those_k(
    store: EmbeddedStore, seeded: str, instance: dg.DagsterInstance, scene_store: dict[str, Any]
) -> None:
    first_tick(instance, scene_store)
    for scene in ("s2", "s4", "s5"):
        put_scene(store, "cd", scene, tag="v2")
    head = store.commit("main", "three scenes re-captured").id

    result = result_of(instance, scene_store, seeded)

    assert result.cursor == head
    assert sorted(runs(result)) == [f"{head}:cd/s2", f"{head}:cd/s4", f"{head}:cd/s5"]
    assert sorted(r.partition_key or "" for r in result.run_requests or []) == ["s2", "s4", "s5"]
    assert all(r.job_name == "cd_scene_refresh" for r in result.run_requests or [])
    assert not result.dynamic_partitions_requests  # the three partitions exist already


def test_a_new_scene_gets_its_partition_in_the_same_tick(
    store: EmbeddedStore, seeded: str, instance: dg.DagsterInstance, scene_store: dict[str, Any]
) -> None:
    first_tick(instance, scene_store)
    put_scene(store, "nvs", "statue")
    head = store.commit("main", "a new capture").id
    result = result_of(instance, scene_store, seeded)
    assert partitions_requested(result) == {"nvs_scenes": ("add", ["statue"])}
    assert sorted(runs(result)) == [f"{head}:nvs/statue"]


def test_a_repeated_tick_requests_nothing_and_racing_ticks_ask_for_the_same_keys(
    store: EmbeddedStore, seeded: str, instance: dg.DagsterInstance, scene_store: dict[str, Any]
) -> None:
    first_tick(instance, scene_store)
    put_scene(store, "cd", "s1", tag="v2")
    head = store.commit("main", "s1 again").id
    one, two = result_of(instance, scene_store, seeded), result_of(instance, scene_store, seeded)
    # Two evaluations from the same cursor ask for the same run keys: Dagster launches one run
    # per key, whichever tick gets there first.
    assert sorted(runs(one)) == sorted(runs(two)) == [f"{head}:cd/s1"]

    again = result_of(instance, scene_store, head)
    assert not again.run_requests and not again.dynamic_partitions_requests
    assert again.cursor == head
    assert again.skip_reason is not None
    assert again.skip_reason.skip_message == (
        "0 cd changed, 0 deleted; 0 nvs changed, 0 deleted (no new commit on 'main')"
    )


def test_a_merge_requests_the_scenes_its_branch_changed_tagged_with_the_branch(
    store: EmbeddedStore, seeded: str, instance: dg.DagsterInstance, scene_store: dict[str, Any]
) -> None:
    first_tick(instance, scene_store)
    store.create_branch("relabel", "main")
    put_scene(store, "cd", "s1", tag="relabelled", branch="relabel")
    put_scene(store, "cd", "s6", tag="relabelled", branch="relabel")
    store.commit("relabel", "new labels for two scenes")
    merge = store.merge("relabel", "main")

    result = result_of(instance, scene_store, seeded)

    assert sorted(runs(result)) == [f"{merge}:cd/s1", f"{merge}:cd/s6"]
    for request in result.run_requests or []:
        assert request.tags["lakefs/commit"] == merge
        assert request.tags["lakefs/merge_source"] == "relabel"
        assert request.run_config == {"ops": {"cd__scene": {"config": {"ref": merge}}}}
    assert result.cursor == merge


def test_an_unreachable_store_skips_with_the_reason_and_keeps_the_cursor(
    instance: dg.DagsterInstance,
) -> None:
    down = LakeFSSceneStore(
        endpoint=f"http://127.0.0.1:{free_port()}", access_key_id="a", secret_access_key="b"
    )
    result = tick(lakefs_commit_sensor, instance, {"scene_store": down}, "c0ffee" * 10)
    # A SkipReason (not a SensorResult) leaves the stored cursor untouched.
    assert isinstance(result, dg.SkipReason)
    message = result.skip_message or ""
    assert message.startswith(f"scene store unreachable; cursor kept at {'c0ffee' * 10}: ")
    assert "unreachable" in message and "Connection refused" in message


def test_a_missing_branch_skips_and_keeps_the_cursor(
    store: EmbeddedStore, seeded: str, instance: dg.DagsterInstance
) -> None:
    wrong = EmbeddedSceneStore(root=str(store.root), repository=store.repository, branch="nope")
    result = tick(lakefs_commit_sensor, instance, {"scene_store": wrong}, seeded)
    assert isinstance(result, dg.SkipReason)
    assert (result.skip_message or "").startswith(
        f"branch 'nope' of 'scenes' not found; cursor kept at {seeded}: "
    )


def test_a_lost_cursor_falls_back_to_every_scene_and_drops_unknown_partitions(
    seeded: str, instance: dg.DagsterInstance, scene_store: dict[str, Any]
) -> None:
    instance.add_dynamic_partitions("cd_scenes", ["s1", "ghost"])
    result = result_of(instance, scene_store, "f" * 64)
    assert result.cursor == seeded
    assert len(runs(result)) == len(CD) + len(NVS)
    requests = result.dynamic_partitions_requests or []
    added = [r for r in requests if isinstance(r, dg.AddDynamicPartitionsRequest)]
    deleted = [r for r in requests if isinstance(r, dg.DeleteDynamicPartitionsRequest)]
    assert [(r.partitions_def_name, list(r.partition_keys)) for r in added] == [
        ("cd_scenes", ["s2", "s3", "s4", "s5", "s6"]),
        ("nvs_scenes", NVS),
    ]
    assert [(r.partitions_def_name, list(r.partition_keys)) for r in deleted] == [
        ("cd_scenes", ["ghost"])
    ]


def test_a_deleted_scene_loses_its_partition_and_the_model_retrains_once(
    store: EmbeddedStore, seeded: str, instance: dg.DagsterInstance, scene_store: dict[str, Any]
) -> None:
    first_tick(instance, scene_store)
    drop_scene(store, "cd", "s3")
    drop_scene(store, "nvs", "globe")
    head = store.commit("main", "withdraw two scenes").id

    result = result_of(instance, scene_store, seeded)

    assert partitions_requested(result) == {
        "cd_scenes": ("delete", ["s3"]),
        "nvs_scenes": ("delete", ["globe"]),
    }
    assert list(runs(result)) == [f"{head}:cd/model"]  # no scene run for a deleted scene
    retrain = runs(result)[f"{head}:cd/model"]
    assert retrain.job_name == "cd_retrain" and retrain.partition_key is None
    assert retrain.tags["lakefs/commit"] == head
    apply_partitions(result, instance)
    assert "s3" not in instance.get_dynamic_partitions("cd_scenes")


def test_an_empty_commit_skips_and_advances_the_cursor(
    store: EmbeddedStore, seeded: str, instance: dg.DagsterInstance, scene_store: dict[str, Any]
) -> None:
    first_tick(instance, scene_store)
    empty = store.commit("main", "nothing", allow_empty=True).id
    result = result_of(instance, scene_store, seeded)
    assert not result.run_requests and not result.dynamic_partitions_requests
    assert result.cursor == empty
    assert result.skip_reason is not None
    assert (result.skip_reason.skip_message or "").endswith(
        f"(diff {seeded[:12]}..{empty[:12]} on 'main')"
    )


def test_the_model_retrains_once_after_the_batch_has_finished(
    store: EmbeddedStore, seeded: str, instance: dg.DagsterInstance, scene_store: dict[str, Any]
) -> None:
    first_tick(instance, scene_store)
    put_scene(store, "cd", "s2", tag="v2")
    put_scene(store, "cd", "s4", tag="v2")
    head = store.commit("main", "two scenes").id
    batch = result_of(instance, scene_store, seeded)
    assert all(r.job_name == "cd_scene_refresh" for r in batch.run_requests or [])
    # The daemon launches the batch: one scene run is done, the other still running.
    old = {"lakefs/branch": "main", "lakefs/commit": seeded}
    record_run(instance, "cd_scene_refresh", old, dg.DagsterRunStatus.SUCCESS)
    tags = {"lakefs/branch": "main", "lakefs/commit": head, "lakefs/repository": "scenes"}
    record_run(instance, "cd_scene_refresh", tags, dg.DagsterRunStatus.SUCCESS)
    running = record_run(instance, "cd_scene_refresh", tags, dg.DagsterRunStatus.STARTED)

    waiting = result_of(instance, scene_store, head)
    assert not waiting.run_requests  # not while a scene run of the batch is unfinished

    instance.report_run_failed(running)  # a failed scene does not hold the others back
    due = result_of(instance, scene_store, head)
    assert list(runs(due)) == [f"{head}:cd/model"]
    assert runs(due)[f"{head}:cd/model"].tags == tags
    assert due.cursor == head

    record_run(instance, "cd_retrain", tags, dg.DagsterRunStatus.STARTED)
    assert not result_of(instance, scene_store, head).run_requests  # once per batch

    put_scene(store, "nvs", "ring", tag="v2")
    nvs_only = store.commit("main", "only an NVS scene").id
    result = result_of(instance, scene_store, head)
    assert list(runs(result)) == [f"{nvs_only}:nvs/ring"]  # no retraining for NVS scenes


def test_the_sensor_resolves_against_the_real_code_location(
    store: EmbeddedStore, seeded: str, tmp_path: Path
) -> None:
    from mlops_assets.definitions import build_defs
    from mlops_assets.settings import Settings

    settings = Settings.from_env({"MLOPS_HOME": str(tmp_path / "home")}, cwd=tmp_path)
    base = build_defs(settings)
    scene_store = EmbeddedSceneStore(root=str(store.root), repository="scenes")
    defs = dg.Definitions(
        assets=base.assets,
        sensors=[lakefs_commit_sensor],
        resources={**(base.resources or {}), "scene_store": scene_store},
    )
    dg.Definitions.validate_loadable(defs)
    # evaluate_tick resolves every request against its job: job names, partition keys (the new
    # ones count as added by the same tick), and the partition tags the daemon would set.
    with dg.instance_for_test() as instance:  # persistent: evaluate_tick needs its ref
        context = dg.build_sensor_context(
            instance=instance,
            instance_ref=instance.get_ref(),
            definitions=defs,
            resources={"scene_store": scene_store},
        )
        data = lakefs_commit_sensor.evaluate_tick(context)
    assert data.cursor == seeded
    assert len(data.run_requests or []) == len(CD) + len(NVS)
    request = next(r for r in data.run_requests or [] if r.partition_key == "s1")
    assert request.tags["dagster/partition"] == "s1"
    assert request.tags["lakefs/commit"] == seeded
    repository = defs.get_repository_def()
    for run_request in data.run_requests or []:  # the run config each job would be launched with
        job = repository.get_job(run_request.job_name or "")
        dg.validate_run_config(job, run_request.run_config)
