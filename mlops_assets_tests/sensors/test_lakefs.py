"""The lakeFS commit sensor, tick by tick, on the real embedded store and a temporary instance."""

from __future__ import annotations

import io
import time
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


# The first tick after work was done: nothing is redone --------------------------------------

CHAINS = {
    "cd": (dg.AssetKey(["cd", "scene"]), dg.AssetKey(["cd", "tiles"])),
    "nvs": (dg.AssetKey(["nvs", "scene"]), dg.AssetKey(["nvs", "splats"])),
}


def materialised(
    instance: dg.DagsterInstance, kind: str, scene: str, commit: str, chain: int = 2
) -> None:
    """Record what a run refreshing ``kind/scene`` at ``commit`` leaves in the instance: the scene
    asset naming its commit, then the first ``chain`` - 1 assets computed from it."""
    for key in CHAINS[kind][:chain]:
        metadata = {"lakefs_commit": commit} if key == CHAINS[kind][0] else {}
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key=key, partition=scene, metadata=metadata)
        )


def demo_done(instance: dg.DagsterInstance, commit: str) -> None:
    """``make demo`` at ``commit``: partitions synced, every scene's chain materialised."""
    instance.add_dynamic_partitions("cd_scenes", CD)
    instance.add_dynamic_partitions("nvs_scenes", NVS)
    for scene in CD:
        materialised(instance, "cd", scene, commit)
    for scene in NVS:
        materialised(instance, "nvs", scene, commit)


def test_the_first_tick_after_a_demo_requests_nothing_and_moves_the_cursor_to_head(
    store: EmbeddedStore, seeded: str, instance: dg.DagsterInstance, scene_store: dict[str, Any]
) -> None:
    demo_done(instance, seeded)

    result = result_of(instance, scene_store, None)

    assert not result.run_requests and not result.dynamic_partitions_requests
    assert result.cursor == seeded
    assert result.skip_reason is not None
    assert result.skip_reason.skip_message == (
        f"0 cd changed, 0 deleted; 0 nvs changed, 0 deleted (no cursor: every scene at "
        f"main@{seeded[:12]}; 8 done already, not redone)"
    )
    # One scene changes afterwards: exactly one run, and the model retrains after it only.
    put_scene(store, "cd", "s4", tag="v2")
    head = store.commit("main", "s4 re-captured").id
    after = result_of(instance, scene_store, seeded)
    assert sorted(runs(after)) == [f"{head}:cd/s4"]
    assert after.cursor == head


def test_a_lost_cursor_after_a_demo_requests_only_the_scenes_changed_since(
    store: EmbeddedStore, seeded: str, instance: dg.DagsterInstance, scene_store: dict[str, Any]
) -> None:
    demo_done(instance, seeded)
    put_scene(store, "cd", "s2", tag="v2")
    put_scene(store, "nvs", "ring", tag="v2")
    put_scene(store, "cd", "s7")
    store.put("main", "README.md", io.BytesIO(b"not a scene"))
    head = store.commit("main", "two scenes changed, one new").id

    result = result_of(instance, scene_store, None)  # no cursor (or a lost one): full comparison

    assert sorted(runs(result)) == [f"{head}:cd/s2", f"{head}:cd/s7", f"{head}:nvs/ring"]
    assert partitions_requested(result) == {"cd_scenes": ("add", ["s7"])}
    assert result.cursor == head


def test_a_scene_whose_chain_did_not_finish_is_redone_on_the_first_tick(
    seeded: str, instance: dg.DagsterInstance, scene_store: dict[str, Any]
) -> None:
    demo_done(instance, seeded)
    materialised(instance, "cd", "s1", seeded, chain=1)  # scene read again, tiles failed since
    materialised(instance, "nvs", "globe", seeded, chain=1)  # splats never trained after it
    # A scene materialisation without the commit it read (another tool wrote it): not trusted.
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=CHAINS["cd"][0], partition="s5")
    )
    materialised(instance, "cd", "s6", "f" * 64)  # read a commit the store does not know

    result = result_of(instance, scene_store, None)

    assert sorted(runs(result)) == [
        f"{seeded}:cd/s1",
        f"{seeded}:cd/s5",
        f"{seeded}:cd/s6",
        f"{seeded}:nvs/globe",
    ]


def test_the_first_tick_retrains_only_after_scene_runs_it_requested(
    store: EmbeddedStore, seeded: str, instance: dg.DagsterInstance, scene_store: dict[str, Any]
) -> None:
    demo_done(instance, seeded)
    # `make demo`'s own runs (not the sensor's jobs) finished long ago: nothing to retrain.
    record_run(instance, "__ASSET_JOB", {}, dg.DagsterRunStatus.SUCCESS)
    first = result_of(instance, scene_store, None)
    assert not first.run_requests
    assert not result_of(instance, scene_store, seeded).run_requests  # later ticks neither

    put_scene(store, "cd", "s3", tag="v2")
    head = store.commit("main", "s3 again").id
    lost = result_of(instance, scene_store, None)
    assert sorted(runs(lost)) == [f"{head}:cd/s3"]  # no cd_retrain in the same tick
    tags = {"lakefs/branch": "main", "lakefs/commit": head, "lakefs/repository": "scenes"}
    record_run(instance, "cd_scene_refresh", tags, dg.DagsterRunStatus.SUCCESS)
    assert list(runs(result_of(instance, scene_store, head))) == [f"{head}:cd/model"]


def test_the_real_scene_assets_leave_what_the_first_tick_reads(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    demo_cd_dir: Path,
) -> None:
    from mlops_assets.assets.cd.scene import cd_scene
    from mlops_assets.assets.cd.tiles import cd_tiles
    from mlops_assets_tests.conftest import commit_folder, materialize_partition

    commit = commit_folder(store, demo_cd_dir, "cd/farm/")
    config = {"ops": {"cd__tiles": {"config": {"preset": "tiny"}}}}
    done = materialize_partition([cd_scene, cd_tiles], "farm", instance, resources, config)
    assert done.success
    sensor_resources = {"scene_store": resources["scene_store"]}

    result = result_of(instance, sensor_resources, None)
    assert not result.run_requests and result.cursor == commit

    commit_folder(store, demo_cd_dir, "cd/farm-copy/", "another scene; farm untouched")
    head = store.resolve("main")
    again = result_of(instance, sensor_resources, None)
    assert sorted(runs(again)) == [f"{head}:cd/farm-copy"]


# Large batches: one backfill, then one retraining ----------------------------------------------


def test_a_batch_over_the_limit_is_one_backfill_tagged_with_its_commit(
    store: EmbeddedStore, seeded: str, tmp_path: Path
) -> None:
    from dagster._core.definitions.events import AssetKeyPartitionKey

    from mlops_assets.definitions import build_defs
    from mlops_assets.settings import Settings

    defs = build_defs(Settings.from_env({"MLOPS_HOME": str(tmp_path / "home")}, cwd=tmp_path))
    sensor = build_lakefs_commit_sensor(batch_over=3)
    resources = {"scene_store": EmbeddedSceneStore(root=str(store.root), repository="scenes")}
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources=resources, definitions=defs)
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    requests = result.run_requests or []
    backfills = [r for r in requests if r.requires_backfill_daemon()]
    assert len(backfills) == 1  # six CD scenes > 3: one backfill
    subset = backfills[0].asset_graph_subset
    assert subset is not None
    expected = {
        AssetKeyPartitionKey(dg.AssetKey(["cd", name]), scene)
        for name in ("scene", "tiles", "change_map")
        for scene in CD
    }
    assert set(subset.iterate_asset_partitions()) == expected
    assert backfills[0].tags == {
        "lakefs/commit": seeded,
        "lakefs/branch": "main",
        "lakefs/repository": "scenes",
        "lakefs/scene_kind": "cd",
    }
    # Two NVS scenes are not over the limit: one run each, as before.
    assert sorted(r.run_key or "" for r in requests if not r.requires_backfill_daemon()) == [
        f"{seeded}:nvs/{s}" for s in NVS
    ]
    assert partitions_requested(result) == {"cd_scenes": ("add", CD), "nvs_scenes": ("add", NVS)}


def test_a_commit_marked_as_a_batch_is_one_backfill_whatever_its_size(
    store: EmbeddedStore, tmp_path: Path
) -> None:
    from mlops_assets.definitions import build_defs
    from mlops_assets.settings import Settings

    for scene in ("a1", "a2"):
        put_scene(store, "cd", scene)
    head = store.commit("main", "import", metadata={"batch": "import levir-cd train"}).id
    defs = build_defs(Settings.from_env({"MLOPS_HOME": str(tmp_path / "home")}, cwd=tmp_path))
    resources = {"scene_store": EmbeddedSceneStore(root=str(store.root), repository="scenes")}
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources=resources, definitions=defs)
        result = lakefs_commit_sensor(context)
    assert isinstance(result, dg.SensorResult)
    (request,) = result.run_requests or []
    assert request.requires_backfill_daemon() and request.tags["lakefs/commit"] == head


def test_the_model_retrains_once_after_a_backfill_has_finished(
    store: EmbeddedStore, seeded: str, tmp_path: Path, scene_store: dict[str, Any]
) -> None:
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

    from mlops_assets.definitions import build_defs
    from mlops_assets.settings import Settings

    defs = build_defs(Settings.from_env({"MLOPS_HOME": str(tmp_path / "home")}, cwd=tmp_path))
    sensor = build_lakefs_commit_sensor(batch_over=3)
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance, resources=scene_store, definitions=defs
        )
        result = sensor(context)
        assert isinstance(result, dg.SensorResult)
        apply_partitions(result, instance)
        request = next(r for r in result.run_requests or [] if r.requires_backfill_daemon())
        assert request.asset_graph_subset is not None
        backfill = PartitionBackfill.from_asset_graph_subset(  # what the daemon then stores
            backfill_id="bf1",
            asset_graph_subset=request.asset_graph_subset,
            dynamic_partitions_store=instance,
            backfill_timestamp=time.time(),
            tags=request.tags,
            title=None,
            description=None,
            run_config=None,
        )
        instance.add_backfill(backfill)

        def retrain_keys() -> list[str]:
            again = tick(sensor, instance, scene_store, seeded)
            requests = again.run_requests if isinstance(again, dg.SensorResult) else None
            return sorted(r.run_key or "" for r in requests or [])

        assert retrain_keys() == []  # the backfill is still running
        instance.update_backfill(backfill.with_status(BulkActionStatus.COMPLETED_FAILED))
        assert retrain_keys() == [f"{seeded}:cd/model"]  # once, even if some scenes failed
        record_run(instance, "cd_retrain", request.tags, dg.DagsterRunStatus.STARTED)
        assert retrain_keys() == []


def test_a_backfill_run_reads_the_commit_in_its_tag(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    demo_cd_dir: Path,
) -> None:
    from mlops_assets.assets.cd.scene import cd_scene
    from mlops_assets_tests.conftest import commit_folder

    first = commit_folder(store, demo_cd_dir, "cd/farm/")
    commit_folder(store, demo_cd_dir, "cd/later/", "a later commit")
    instance.add_dynamic_partitions("cd_scenes", ["farm"])
    result = dg.materialize(
        [cd_scene],
        partition_key="farm",
        instance=instance,
        resources=resources,
        tags={"lakefs/commit": first},  # as a backfill's runs carry it; no run config
    )
    meta = result.asset_materializations_for_node("cd__scene")[0].metadata
    assert meta["lakefs_commit"].value == first and meta["lakefs_ref"].value == first
