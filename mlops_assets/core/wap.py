r"""Write, audit, publish: a scene reaches main only from a branch whose checks all passed.

`write_audit_publish` does the three steps for one local scene folder:

* **write**: cut a fresh branch from main's head, upload the scene there and commit;
* **audit**: run the raw-scene checks against that commit, the same core functions the
  ``cd/scene`` and ``nvs/scene`` asset checks run (`check_cd_scene`, `check_nvs_scene`; every one
  of them is blocking there, so every one is blocking here);
* **publish**: merge exactly the audited commit into main, only when every check passed, with
  metadata naming the branch it came from (`MERGE_SOURCE_KEY`, which the commit sensor reads),
  the checks, and the lineage the caller passes (Dagster run id, lakeFS link buttons). The merge
  is `merge_scenes`'s, as for a plain ingest: if any other writer changed the scene on main since
  the branch was cut (while the checks ran, say), nothing is merged, even when the two folders
  differ in different files (both rewrote the scene's writer marker, so the merge conflicts).

A scene that fails a check is never merged: main's head is unchanged, the branch stays for
inspection, and the result lists the failed checks with their messages. An empty commit on the
branch records the verdict (`WAP_STATUS_KEY`), so ``mlops-assets gc`` keeps such a branch while it
removes those of ingests that were killed before their audit ended. After a merge the branch is
deleted (its commits stay reachable from main).

Branch names: the design asked for ``ingest/<scene_id>-<timestamp>``, but lakeFS refuses ``/``
in branch names (graveler's ``^\w[-\w]*$``, which the embedded store enforces too), so the
branches are ``ingest-<scene_id>-<UTC timestamp>``, e.g. ``ingest-farm-20261123T143901Z``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from mlops_assets.core.scenes.cd import check_cd_scene, read_cd_scene
from mlops_assets.core.scenes.checks import CheckLimits, CheckOutcome, failures
from mlops_assets.core.scenes.ingest import (
    ProgressCallback,
    UploadPlan,
    commit_scenes,
    merge_scenes,
    require_clean,
)
from mlops_assets.core.scenes.layout import SceneKind
from mlops_assets.core.scenes.nvs import check_nvs_scene, read_nvs_scene
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.branches import (
    INGEST_PREFIX,
    MERGE_SOURCE_KEY,
    WAP_CHECKS_FAILED,
    WAP_MERGE_FAILED,
    WAP_STATUS_KEY,
    timestamp,
)
from mlops_assets.core.store.types import AlreadyExistsError, NoChangesError, StoreError

INGEST_BRANCH_PREFIX = INGEST_PREFIX
#: Attempts at a free branch name when ingests of one scene start within the same second.
_NAME_ATTEMPTS = 20


class PublishError(StoreError):
    """The scene passed its checks but could not be merged into main; its branch is kept."""


def ingest_branch_name(scene_id: str, when: dt.datetime) -> str:
    """``ingest-<scene_id>-<UTC timestamp>`` (lakeFS branch names cannot hold ``/``)."""
    return f"{INGEST_BRANCH_PREFIX}{scene_id}-{timestamp(when)}"


def audit_scene(
    store: VersionedStore,
    kind: SceneKind,
    scene_id: str,
    ref: str,
    limits: CheckLimits | None = None,
) -> list[CheckOutcome]:
    """The raw-scene checks of ``kind/scene_id`` at ``ref``, as the scene assets run them."""
    if kind is SceneKind.CD:
        return check_cd_scene(read_cd_scene(store, ref, scene_id, limits))
    return check_nvs_scene(read_nvs_scene(store, ref, scene_id, limits))


def describe_checks(outcomes: list[CheckOutcome]) -> str:
    """``name: passed; name: FAILED`` for commit metadata."""
    return "; ".join(f"{o.name}: {'passed' if o.passed else 'FAILED'}" for o in outcomes)


@dataclass(frozen=True)
class WapResult:
    """What happened to one scene: where it was written, what the checks said, whether merged."""

    kind: SceneKind
    scene_id: str
    branch: str  # the ingest branch (deleted after a merge unless kept)
    base: str  # main's head when the branch was cut
    commit_id: str  # the audited commit on the branch
    checks: list[CheckOutcome]
    main_branch: str
    merge_commit_id: str | None = None  # None: not merged
    branch_kept: bool = True

    @property
    def scene(self) -> str:
        """``<kind>/<scene_id>``."""
        return f"{self.kind.value}/{self.scene_id}"

    @property
    def merged(self) -> bool:
        """True when the scene reached main."""
        return self.merge_commit_id is not None

    @property
    def failed(self) -> list[CheckOutcome]:
        """The checks that did not pass."""
        return failures(self.checks)

    def failure_lines(self) -> list[str]:
        """One ``check: message`` line per failed check."""
        return [f"{o.name}: {o.description}" for o in self.failed]


def _cut_branch(store: VersionedStore, scene_id: str, base: str, when: dt.datetime) -> str:
    name = ingest_branch_name(scene_id, when)
    for attempt in range(_NAME_ATTEMPTS):
        candidate = name if attempt == 0 else f"{name}-{attempt + 1}"
        try:
            store.create_branch(candidate, base)
        except AlreadyExistsError:
            continue
        return candidate
    raise AlreadyExistsError(f"branches {name} to {name}-{_NAME_ATTEMPTS} all exist already")


def _record(
    store: VersionedStore,
    branch: str,
    ingest_commit: str,
    status: str,
    checks: list[CheckOutcome],
    lineage: Mapping[str, str],
) -> None:
    """An empty commit on the kept branch saying why it was not merged (gc keeps such branches)."""
    store.commit(
        branch,
        f"Not merged: {status} ({describe_checks(checks)})",
        {
            WAP_STATUS_KEY: status,
            "checks": describe_checks(checks),
            "ingest_commit": ingest_commit,
            **lineage,
        },
        allow_empty=True,
    )


def write_audit_publish(
    store: VersionedStore,
    main_branch: str,
    plan: UploadPlan,
    *,
    when: dt.datetime,
    message: str | None = None,
    metadata: Mapping[str, str] | None = None,
    lineage: Mapping[str, str] | None = None,
    keep_branch: bool = False,
    progress: ProgressCallback | None = None,
    limits: CheckLimits | None = None,
) -> WapResult:
    """Upload ``plan`` to a fresh branch, audit that commit, merge it into main if it passes.

    ``metadata`` goes on the ingest commit; ``lineage`` (Dagster run id, `link_metadata` link
    buttons, ...) goes on the ingest commit and on the merge. Failed checks are not an error:
    the result says which failed and the branch is kept. Errors are: a scene identical to main's
    (`NoChangesError`; no branch is left behind), an upload that fails (the branch is removed,
    nothing was committed), and a merge that fails after the checks passed (`PublishError`,
    e.g. another writer changed the same scene on main since the branch was cut, whichever
    files it changed; the branch is kept).
    """
    lineage = dict(lineage or {})
    require_clean(store, main_branch)  # nothing could be merged into it
    base = store.resolve(main_branch)
    branch = _cut_branch(store, plan.scene_id, base, when)
    scene = f"{plan.kind.value}/{plan.scene_id}"
    try:
        commit = commit_scenes(
            store,
            branch,
            [plan],
            message or f"Ingest {plan.kind.value} scene {plan.scene_id} (audit pending)",
            metadata={**(metadata or {}), **lineage, "wap_branch": branch},
            progress=progress,
        )
    except NoChangesError:
        store.delete_branch(branch)
        raise NoChangesError(
            f"{scene} is already identical on {main_branch!r} at {base[:12]}: nothing to publish"
        ) from None
    except BaseException:
        with contextlib.suppress(StoreError):  # keep the upload's error, not a cleanup's
            store.delete_branch(branch)  # nothing of ours was committed there
        raise
    checks = audit_scene(store, plan.kind, plan.scene_id, commit.id, limits)
    result = WapResult(plan.kind, plan.scene_id, branch, base, commit.id, checks, main_branch)
    if result.failed:
        _record(store, branch, commit.id, WAP_CHECKS_FAILED, checks, lineage)
        return result
    try:
        merged = merge_scenes(
            store,
            commit.id,  # exactly the audited commit, whatever the branch holds by now
            main_branch,
            base,
            [plan],
            f"Merge '{branch}' into '{main_branch}': {scene} passed its checks",
            {
                MERGE_SOURCE_KEY: branch,
                "scene": scene,
                "ingest_commit": commit.id,
                "checks": describe_checks(checks),
                **lineage,
            },
        )
    except StoreError as exc:
        with contextlib.suppress(StoreError):
            _record(store, branch, commit.id, WAP_MERGE_FAILED, checks, lineage)
        raise PublishError(
            f"{scene} passed its checks on branch {branch!r} ({commit.id[:12]}) but was not "
            f"merged into {main_branch!r}; the branch is kept: {exc}"
        ) from exc
    if not keep_branch:
        store.delete_branch(branch)
    return WapResult(
        plan.kind,
        plan.scene_id,
        branch,
        base,
        commit.id,
        checks,
        main_branch,
        merge_commit_id=merged,
        branch_kept=keep_branch,
    )
