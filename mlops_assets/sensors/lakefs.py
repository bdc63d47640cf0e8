"""``lakefs_commit_sensor``: each commit or merge on the watched branch re-materialises its scenes.

The cursor is the last commit seen on the branch (``scene_store.branch``, default ``main``). Each
tick diffs cursor..head (`mlops_assets.core.changes.scene_changes`) and answers with:

* a dynamic partition for every new scene, and the removal of the partition of every scene whose
  prefix is gone at head;
* one run per changed scene: ``cd_scene_refresh`` (``cd/scene``, ``cd/tiles``, ``cd/change_map``)
  or ``nvs_scene_refresh`` (``nvs/scene``), with ``run_key = <commit>:<kind>/<scene>`` and run
  config pinning the scene read to that commit, so a repeated or racing tick never launches twice
  and each run reads exactly the commit it was launched for;
* once the scene runs of a batch have all finished, one ``cd_retrain`` run (``cd/model``,
  ``cd/registered_model``) with ``run_key = <commit>:cd/model`` (see `pending_retrain`).

Every run is tagged with the commit, the branch and, for merges, the merged branch. A tick while
the store is unreachable (or the branch is missing) skips with the reason and keeps its cursor; a
cursor commit that no longer exists means a full comparison against head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import dagster as dg

from mlops_assets.core.changes import SceneChanges, scene_changes
from mlops_assets.core.scenes.layout import SceneKind
from mlops_assets.core.store.types import NotFoundError, StoreUnavailableError
from mlops_assets.partitions import SCENE_PARTITIONS
from mlops_assets.resources.scene_store import SceneStoreResource
from mlops_assets.sensors.jobs import (
    CD_SCENE_OP,
    NVS_SCENE_OP,
    cd_retrain,
    cd_scene_refresh,
    nvs_scene_refresh,
)

SENSOR_NAME = "lakefs_commit_sensor"
DEFAULT_INTERVAL_S = 30

TAG_COMMIT = "lakefs/commit"
TAG_BRANCH = "lakefs/branch"
TAG_REPOSITORY = "lakefs/repository"
TAG_MERGE_SOURCE = "lakefs/merge_source"
TAG_SCENE = "lakefs/scene"

#: The errors that mean "cannot reach the store now": skip, keep the cursor, try next tick.
UNREACHABLE: tuple[type[BaseException], ...] = (
    StoreUnavailableError,
    ConnectionError,
    TimeoutError,
)

PartitionRequest = dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest

_FINISHED = frozenset(
    {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
)
_UNFINISHED = [status for status in dg.DagsterRunStatus if status not in _FINISHED]

_SCENE_JOBS: dict[SceneKind, tuple[str, str]] = {
    SceneKind.CD: (cd_scene_refresh.name, CD_SCENE_OP),
    SceneKind.NVS: (nvs_scene_refresh.name, NVS_SCENE_OP),
}


def _partition_name(kind: SceneKind) -> str:
    name = SCENE_PARTITIONS[kind].name
    assert name is not None  # both are named DynamicPartitionsDefinitions
    return name


def batch_tags(changes: SceneChanges, repository: str) -> dict[str, str]:
    """The tags every run launched for ``changes`` carries."""
    tags = {
        TAG_COMMIT: changes.head,
        TAG_BRANCH: changes.branch,
        TAG_REPOSITORY: repository,
    }
    if changes.merge_sources:
        tags[TAG_MERGE_SOURCE] = ",".join(changes.merge_sources)
    return tags


def plan_scene_runs(
    changes: SceneChanges, known: Mapping[SceneKind, set[str]], repository: str
) -> tuple[list[dg.RunRequest], list[PartitionRequest]]:
    """The scene runs and partition changes for ``changes``, given the partitions that exist.

    A full comparison (first tick, lost cursor) has no list of deleted scenes: every partition
    without a scene at head is removed instead.
    """
    tags = batch_tags(changes, repository)
    runs: list[dg.RunRequest] = []
    partitions: list[PartitionRequest] = []
    for kind in SceneKind:
        definition = SCENE_PARTITIONS[kind]
        changed = changes.changed[kind]
        if changes.full:
            gone = sorted(known[kind] - set(changed))
        else:
            gone = [scene for scene in changes.deleted[kind] if scene in known[kind]]
        new = [scene for scene in changed if scene not in known[kind]]
        if new:
            partitions.append(definition.build_add_request(new))
        if gone:
            partitions.append(definition.build_delete_request(gone))
        job_name, op = _SCENE_JOBS[kind]
        runs += [
            dg.RunRequest(
                run_key=f"{changes.head}:{kind.value}/{scene}",
                job_name=job_name,
                partition_key=scene,
                run_config={"ops": {op: {"config": {"ref": changes.head}}}},
                tags={**tags, TAG_SCENE: f"{kind.value}/{scene}"},
            )
            for scene in changed
        ]
    return runs, partitions


def retrain_request(commit: str, tags: Mapping[str, str]) -> dg.RunRequest:
    """The one ``cd_retrain`` run for the batch that ended at ``commit``."""
    return dg.RunRequest(run_key=f"{commit}:cd/model", job_name=cd_retrain.name, tags=dict(tags))


class RetrainState(NamedTuple):
    """Whether a batch of CD scene runs awaits retraining, and the run that is due now."""

    request: dg.RunRequest | None  # due now
    waiting: bool  # scene runs of the batch are still queued or running
    reason: str


def pending_retrain(instance: dg.DagsterInstance, branch: str) -> RetrainState:
    """The retraining run that is due now for ``branch``, if any, and why.

    Why one run request after the batch, rather than declarative automation: ``cd/model`` reads
    the tiles of *every* CD scene, so it must train once per batch of changes and only after the
    batch's ``cd/tiles`` are written. A batch is known here, at the sensor (the commit diff says
    which scenes changed), but not to an automation condition, which sees partitions update one by
    one: ``eager()`` would retrain after the first scene's tiles, and again after each later one,
    and a data-version condition cannot tell "all of this commit's scenes are done". Requesting
    the model in the same tick as the scene runs would race them (the run queue may start it
    first and train on the old tiles). So the sensor requests it on a later tick, once every
    ``cd_scene_refresh`` run it launched since its last ``cd_retrain`` run has finished
    (successfully or not: a failed scene must not block the others), keyed by the newest commit
    among them; a new commit arriving meanwhile simply extends the batch.
    """
    last_model = instance.get_run_records(
        filters=dg.RunsFilter(job_name=cd_retrain.name, tags={TAG_BRANCH: branch}), limit=1
    )
    since = last_model[0].create_timestamp if last_model else None
    scene_runs = dg.RunsFilter(
        job_name=cd_scene_refresh.name, tags={TAG_BRANCH: branch}, created_after=since
    )
    latest = instance.get_run_records(filters=scene_runs, limit=1)
    if not latest:
        return RetrainState(None, False, "no CD scene run since the last retraining")
    running = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=cd_scene_refresh.name,
            tags={TAG_BRANCH: branch},
            created_after=since,
            statuses=_UNFINISHED,
        ),
        limit=1,
    )
    if running:
        run_id = running[0].dagster_run.run_id
        return RetrainState(None, True, f"retraining waits for CD scene run {run_id}")
    run_tags = latest[0].dagster_run.tags
    commit = run_tags[TAG_COMMIT]
    keep = (TAG_COMMIT, TAG_BRANCH, TAG_REPOSITORY, TAG_MERGE_SOURCE)
    request = retrain_request(commit, {k: run_tags[k] for k in keep if k in run_tags})
    return RetrainState(request, False, f"the CD scene runs up to {commit[:12]} have finished")


def build_lakefs_commit_sensor(
    minimum_interval_seconds: int = DEFAULT_INTERVAL_S,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    name: str = SENSOR_NAME,
) -> dg.SensorDefinition:
    """The commit sensor on ``scene_store.branch``, ticking every ``minimum_interval_seconds``."""

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        jobs=[cd_scene_refresh, nvs_scene_refresh, cd_retrain],
        description=(
            "Watches the scene branch; each new commit or merge re-materialises exactly the "
            "scenes it changed (runs keyed by commit and scene), adds and removes scene "
            "partitions, then retrains the CD model once per batch."
        ),
    )
    def lakefs_commit_sensor(
        context: dg.SensorEvaluationContext, scene_store: SceneStoreResource
    ) -> dg.SensorResult | dg.SkipReason:
        branch, cursor = scene_store.branch, context.cursor
        try:
            changes = scene_changes(scene_store.get_store(), branch, cursor)
        except UNREACHABLE as exc:
            return dg.SkipReason(
                f"scene store unreachable; cursor kept at {cursor or 'none'}: {exc}"
            )
        except NotFoundError as exc:
            return dg.SkipReason(
                f"branch {branch!r} of {scene_store.repository!r} not found; "
                f"cursor kept at {cursor or 'none'}: {exc}"
            )
        context.log.info(f"{branch}@{changes.head[:12]}: {changes.summary()}")
        known = {
            kind: set(context.instance.get_dynamic_partitions(_partition_name(kind)))
            for kind in SceneKind
        }
        runs, partitions = plan_scene_runs(changes, known, scene_store.repository)
        if not changes.changed[SceneKind.CD]:  # else: retrain after this tick's scene runs
            retrain = pending_retrain(context.instance, branch)
            context.log.info(retrain.reason)
            if retrain.request is not None:
                runs.append(retrain.request)
            elif changes.deleted[SceneKind.CD] and not retrain.waiting:
                # Only deletions: no scene run to wait for, the smaller training set is ready.
                tags = batch_tags(changes, scene_store.repository)
                runs.append(retrain_request(changes.head, tags))
        if not runs and not partitions:
            return dg.SensorResult(skip_reason=changes.summary(), cursor=changes.head)
        return dg.SensorResult(
            run_requests=runs, dynamic_partitions_requests=partitions, cursor=changes.head
        )

    return lakefs_commit_sensor


lakefs_commit_sensor = build_lakefs_commit_sensor()
