"""``lakefs_commit_sensor``: each commit or merge on the watched branch re-materialises its scenes.

The cursor is the last commit seen on the branch (``scene_store.branch``, default ``main``). Each
tick diffs cursor..head (`mlops_assets.core.changes.scene_changes`) and answers with:

* a dynamic partition for every new scene, and the removal of the partition of every scene whose
  prefix is gone at head;
* one run per changed scene: ``cd_scene_refresh`` (``cd/scene``, ``cd/tiles``, ``cd/change_map``)
  or ``nvs_scene_refresh`` (the NVS chain), with ``run_key = <commit>:<kind>/<scene>`` and run
  config pinning the scene read to that commit, so a repeated or racing tick never launches twice
  and each run reads exactly the commit it was launched for;
* instead, for a batch of more than ``batch_over`` scenes of one kind (an import of a dataset),
  or for a commit whose metadata carries `BATCH_KEY`, one Dagster backfill of the same assets
  over all of them, tagged with the commit (the scene assets read the commit in that tag), so
  hundreds of scenes are not hundreds of sensor runs;
* once the scene runs (or the backfill) of a batch have all finished, one ``cd_retrain`` run
  (``cd/model``, ``cd/registered_model``) with ``run_key = <commit>:cd/model``
  (see `pending_retrain`).

The first tick (no cursor, or a cursor commit that no longer exists) compares every scene at head,
but requests only the scenes that are not done already: a scene whose latest materialisation read
a commit with the same files as head, and whose chain (`SCENE_CHAINS`) was materialised after it,
is skipped, so ``make dev`` after ``make demo`` launches nothing (`materialised_commits`).

Every run is tagged with the commit, the branch and, for merges, the merged branch. A tick while
the store is unreachable (or the branch is missing) skips with the reason and keeps its cursor.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple

import dagster as dg

from mlops_assets.core.changes import SceneChanges, scene_changes, unchanged_since
from mlops_assets.core.scenes.layout import SceneKind
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.types import NotFoundError, StoreUnavailableError
from mlops_assets.keys import (
    CD_SCENE_OP,
    COMMIT_METADATA_KEY,
    NVS_SCENE_OP,
    TAG_BRANCH,
    TAG_COMMIT,
    TAG_MERGE_SOURCE,
    TAG_REPOSITORY,
    TAG_SCENE,
    TAG_SCENE_KIND,
)
from mlops_assets.partitions import SCENE_PARTITIONS
from mlops_assets.resources.scene_store import SceneStoreResource

# Backfills are not in Dagster's public API: a sensor requests one with
# `RunRequest.for_asset_graph_subset`, as Dagster's own automation sensor does.
from mlops_assets.sensors.dagster_internals import (
    BULK_ACTION_TERMINAL_STATUSES,
    AssetGraph,
    AssetGraphSubset,
    AssetKeyPartitionKey,
    BulkActionsFilter,
    PartitionBackfill,
)
from mlops_assets.sensors.jobs import (
    CD_REFRESH_KEYS,
    CD_SCENE_CHAIN,
    NVS_REFRESH_KEYS,
    NVS_SCENE_CHAIN,
    cd_retrain,
    cd_scene_refresh,
    nvs_scene_refresh,
)

SENSOR_NAME = "lakefs_commit_sensor"
DEFAULT_INTERVAL_S = 30
#: More changed scenes of one kind than this in one tick: one backfill instead of one run each.
DEFAULT_BATCH_OVER = 20

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


class SceneJob(NamedTuple):
    """How one kind of scene is refreshed: its job, the op pinned to the commit, its assets."""

    job_name: str
    scene_op: str
    assets: tuple[dg.AssetKey, ...]  # everything the job materialises (a backfill's selection)
    chain: tuple[dg.AssetKey, ...]  # what must be materialised for the scene to be done


SCENE_JOBS: dict[SceneKind, SceneJob] = {
    SceneKind.CD: SceneJob(cd_scene_refresh.name, CD_SCENE_OP, CD_REFRESH_KEYS, CD_SCENE_CHAIN),
    SceneKind.NVS: SceneJob(
        nvs_scene_refresh.name, NVS_SCENE_OP, NVS_REFRESH_KEYS, NVS_SCENE_CHAIN
    ),
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


def materialised_commits(
    instance: dg.DagsterInstance, kind: SceneKind, scenes: Collection[str]
) -> dict[str, str]:
    """For each of ``scenes`` that is done, the commit its latest materialisation read.

    Done: the latest materialisation of the scene asset names its commit (`COMMIT_METADATA_KEY`),
    and every later asset of the kind's chain was materialised after it (so the scene's tiles, or
    splats, were computed from that very read). A few queries whatever the number of scenes.
    """
    chain = SCENE_JOBS[kind].chain
    storage = instance.event_log_storage
    event = dg.DagsterEventType.ASSET_MATERIALIZATION
    complete = dict(
        storage.get_latest_storage_id_by_partition(chain[0], event, partitions=set(scenes))
    )
    for key in chain[1:]:
        if not complete:
            return {}
        later = storage.get_latest_storage_id_by_partition(key, event, partitions=set(complete))
        complete = {s: sid for s, sid in complete.items() if later.get(s, -1) > sid}
    if not complete:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=chain[0], storage_ids=list(complete.values())),
        limit=len(complete),
    ).records
    commits: dict[str, str] = {}
    for record in records:
        materialization = record.asset_materialization
        if materialization is None or materialization.partition is None:
            continue
        commit = materialization.metadata.get(COMMIT_METADATA_KEY)
        if commit is not None and isinstance(commit.value, str):
            commits[materialization.partition] = commit.value
    return commits


def done_scenes(
    instance: dg.DagsterInstance, store: VersionedStore, changes: SceneChanges
) -> dict[SceneKind, set[str]]:
    """Of the scenes ``changes`` lists, those already materialised from their files at head."""
    made_at = {
        (kind, scene): commit
        for kind in SceneKind
        for scene, commit in materialised_commits(instance, kind, changes.changed[kind]).items()
    }
    same = unchanged_since(store, changes.head, made_at)
    return {kind: {scene for k, scene in same if k == kind} for kind in SceneKind}


def scene_run(
    changes: SceneChanges, kind: SceneKind, scene: str, tags: Mapping[str, str]
) -> dg.RunRequest:
    """The run refreshing one scene at the head of ``changes``."""
    job = SCENE_JOBS[kind]
    return dg.RunRequest(
        run_key=f"{changes.head}:{kind.value}/{scene}",
        job_name=job.job_name,
        partition_key=scene,
        run_config={"ops": {job.scene_op: {"config": {"ref": changes.head}}}},
        tags={**tags, TAG_SCENE: f"{kind.value}/{scene}"},
    )


def backfill_request(
    asset_graph: AssetGraph,
    kind: SceneKind,
    scenes: Sequence[str],
    tags: Mapping[str, str],
) -> dg.RunRequest:
    """One backfill of the kind's refresh assets over ``scenes``.

    Dagster runs it as one entity (one page in the UI, one status), scene partitions in parallel
    up to the run queue's limit. A backfill has no run key and no per-op run config, so the scene
    assets read the commit in its `TAG_COMMIT` tag, which each of its runs carries.
    """
    subset = AssetGraphSubset.from_asset_partition_set(
        {AssetKeyPartitionKey(key, scene) for key in SCENE_JOBS[kind].assets for scene in scenes},
        asset_graph,
    )
    return dg.RunRequest.for_asset_graph_subset(subset, {**tags, TAG_SCENE_KIND: kind.value})


def plan_scene_runs(
    changes: SceneChanges,
    known: Mapping[SceneKind, set[str]],
    repository: str,
    *,
    done: Mapping[SceneKind, set[str]] | None = None,
    asset_graph: AssetGraph | None = None,
    batch_over: int = DEFAULT_BATCH_OVER,
) -> tuple[list[dg.RunRequest], list[PartitionRequest]]:
    """The scene runs and partition changes for ``changes``, given the partitions that exist.

    A full comparison (first tick, lost cursor) has no list of deleted scenes: every partition
    without a scene at head is removed instead. Scenes in ``done`` keep (or get) their partition
    but no run. With an ``asset_graph``, more than ``batch_over`` scenes of one kind, or any scene
    of a commit marked as a batch, become one backfill.
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
        todo = [scene for scene in changed if done is None or scene not in done[kind]]
        batched = len(todo) > batch_over or (bool(changes.batches) and len(todo) > 1)
        if todo and batched and asset_graph is not None:
            runs.append(backfill_request(asset_graph, kind, todo, tags))
        else:
            runs += [scene_run(changes, kind, scene, tags) for scene in todo]
    return runs, partitions


def retrain_request(commit: str, tags: Mapping[str, str]) -> dg.RunRequest:
    """The one ``cd_retrain`` run for the batch that ended at ``commit``."""
    return dg.RunRequest(run_key=f"{commit}:cd/model", job_name=cd_retrain.name, tags=dict(tags))


class RetrainState(NamedTuple):
    """Whether a batch of CD scene runs awaits retraining, and the run that is due now."""

    request: dg.RunRequest | None  # due now
    waiting: bool  # scene runs (or a backfill) of the batch are still queued or running
    reason: str


def _cd_backfills(
    instance: dg.DagsterInstance, branch: str, since: float | None
) -> list[PartitionBackfill]:
    """The CD scene backfills this sensor launched on ``branch`` after ``since``, newest first."""
    after = None if since is None else dt.datetime.fromtimestamp(since, dt.UTC)
    return list(
        instance.get_backfills(
            filters=BulkActionsFilter(
                tags={TAG_BRANCH: branch, TAG_SCENE_KIND: SceneKind.CD.value}, created_after=after
            ),
            limit=20,
        )
    )


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
    ``cd_scene_refresh`` run and CD backfill it launched since its last ``cd_retrain`` run has
    finished (successfully or not: a failed scene must not block the others), keyed by the newest
    commit among them; a new commit arriving meanwhile simply extends the batch. No scene run and
    no backfill since the last retraining (after ``make demo``, say): nothing to retrain.
    """
    last_model = instance.get_run_records(
        filters=dg.RunsFilter(job_name=cd_retrain.name, tags={TAG_BRANCH: branch}), limit=1
    )
    since = last_model[0].create_timestamp.timestamp() if last_model else None
    scene_runs = dg.RunsFilter(
        job_name=cd_scene_refresh.name,
        tags={TAG_BRANCH: branch},
        created_after=None if since is None else dt.datetime.fromtimestamp(since, dt.UTC),
    )
    latest = instance.get_run_records(filters=scene_runs, limit=1)
    backfills = _cd_backfills(instance, branch, since)
    if not latest and not backfills:
        return RetrainState(None, False, "no CD scene run since the last retraining")
    running = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=cd_scene_refresh.name,
            tags={TAG_BRANCH: branch},
            created_after=scene_runs.created_after,
            statuses=_UNFINISHED,
        ),
        limit=1,
    )
    if running:
        run_id = running[0].dagster_run.run_id
        return RetrainState(None, True, f"retraining waits for CD scene run {run_id}")
    unfinished = [b for b in backfills if b.status not in BULK_ACTION_TERMINAL_STATUSES]
    if unfinished:
        backfill_id = unfinished[0].backfill_id
        return RetrainState(None, True, f"retraining waits for CD backfill {backfill_id}")
    # The newest batch decides the commit: the latest scene run or backfill.
    candidates = [(r.create_timestamp.timestamp(), r.dagster_run.tags) for r in latest]
    candidates += [(b.backfill_timestamp, b.tags) for b in backfills[:1]]
    _, run_tags = max(candidates, key=lambda c: c[0])
    commit = run_tags[TAG_COMMIT]
    keep = (TAG_COMMIT, TAG_BRANCH, TAG_REPOSITORY, TAG_MERGE_SOURCE)
    request = retrain_request(commit, {k: run_tags[k] for k in keep if k in run_tags})
    return RetrainState(request, False, f"the CD scene runs up to {commit[:12]} have finished")


def build_lakefs_commit_sensor(
    minimum_interval_seconds: int = DEFAULT_INTERVAL_S,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    name: str = SENSOR_NAME,
    batch_over: int = DEFAULT_BATCH_OVER,
) -> dg.SensorDefinition:
    """The commit sensor on ``scene_store.branch``, ticking every ``minimum_interval_seconds``.

    More than ``batch_over`` changed scenes of one kind in a tick are launched as one backfill.
    """

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        jobs=[cd_scene_refresh, nvs_scene_refresh, cd_retrain],
        description=(
            "Watches the scene branch; each new commit or merge re-materialises exactly the "
            "scenes it changed (runs keyed by commit and scene, or one backfill for a large "
            "batch), adds and removes scene partitions, then retrains the CD model once per "
            "batch. The first tick skips scenes already materialised from the same files."
        ),
    )
    def lakefs_commit_sensor(
        context: dg.SensorEvaluationContext, scene_store: SceneStoreResource
    ) -> dg.SensorResult | dg.SkipReason:
        branch, cursor = scene_store.branch, context.cursor
        try:
            store = scene_store.get_store()
            changes = scene_changes(store, branch, cursor)
            # A full comparison lists every scene at head; those done already are not redone.
            done = done_scenes(context.instance, store, changes) if changes.full else None
        except UNREACHABLE as exc:
            return dg.SkipReason(
                f"scene store unreachable; cursor kept at {cursor or 'none'}: {exc}"
            )
        except NotFoundError as exc:
            return dg.SkipReason(
                f"branch {branch!r} of {scene_store.repository!r} not found; "
                f"cursor kept at {cursor or 'none'}: {exc}"
            )
        todo = changes if done is None else changes.without(done, "done already, not redone")
        context.log.info(f"{branch}@{changes.head[:12]}: {todo.summary()}")
        known = {
            kind: set(context.instance.get_dynamic_partitions(_partition_name(kind)))
            for kind in SceneKind
        }
        repository_def = context.repository_def
        runs, partitions = plan_scene_runs(
            changes,
            known,
            scene_store.repository,
            done=done,
            asset_graph=None if repository_def is None else repository_def.asset_graph,
            batch_over=batch_over,
        )
        if not todo.changed[SceneKind.CD]:  # else: retrain after this tick's scene runs
            retrain = pending_retrain(context.instance, branch)
            context.log.info(retrain.reason)
            if retrain.request is not None:
                runs.append(retrain.request)
            elif changes.deleted[SceneKind.CD] and not retrain.waiting:
                # Only deletions: no scene run to wait for, the smaller training set is ready.
                tags = batch_tags(changes, scene_store.repository)
                runs.append(retrain_request(changes.head, tags))
        if not runs and not partitions:
            return dg.SensorResult(skip_reason=todo.summary(), cursor=changes.head)
        return dg.SensorResult(
            run_requests=runs, dynamic_partitions_requests=partitions, cursor=changes.head
        )

    return lakefs_commit_sensor


lakefs_commit_sensor = build_lakefs_commit_sensor()
