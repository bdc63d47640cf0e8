"""Short-lived branches: how writers name them, and how abandoned ones are found and removed.

Every writer owns a branch (lakeFS's ``transact`` pattern): plain ingests and ``demo-data`` write
on ``write-<label>-<UTC time>-<random>``, output publications on
``publish-<label>-<UTC time>-<random>``, write-audit-publish ingests on
``ingest-<scene>-<UTC time>[-N]``. The writer deletes its branch when
it is done, whether it merged or failed; a writer that is killed cannot, and its branch stays. The
time in the name says how old such a branch is (lakeFS records no creation time for a branch, and
the head commit of a branch that never committed is as old as the commit it was cut from).

`collect_branches` removes the abandoned ones once they are older than a grace period, except a
write-audit-publish branch that the audit kept for inspection: its head commit records the failed
checks (or the failed merge) under `WAP_STATUS_KEY`, and the README promises those stay.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import uuid
from dataclasses import dataclass

from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.types import NotFoundError

#: Commit metadata naming the branch a merge came from: written by every merge the pipeline makes
#: (ingest, write-audit-publish), read by `mlops_assets.core.changes` to tell where a commit came
#: from.
MERGE_SOURCE_KEY = "merge_source"

WRITE_PREFIX = "write-"
PUBLISH_PREFIX = "publish-"
INGEST_PREFIX = "ingest-"
#: Prefixes of the branches writers create and delete again; nothing else is ever collected.
WORK_PREFIXES = (WRITE_PREFIX, PUBLISH_PREFIX, INGEST_PREFIX)
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
#: Commit metadata key on a write-audit-publish branch whose scene was not merged, and why.
WAP_STATUS_KEY = "wap_status"
WAP_CHECKS_FAILED = "checks-failed"
WAP_MERGE_FAILED = "merge-failed"

_STAMP_RE = re.compile(r"-(\d{8}T\d{6}Z)(?:-[0-9a-z]+)?$")
_SLUG_RE = re.compile(r"[^\w-]+")


def timestamp(when: dt.datetime) -> str:
    """``20261123T143901Z``: a UTC time as branch names carry it."""
    return when.astimezone(dt.UTC).strftime(TIMESTAMP_FORMAT)


def work_branch_name(prefix: str, label: str, when: dt.datetime) -> str:
    """A fresh branch name ``<prefix><label>-<UTC time>-<8 hex>`` (valid in lakeFS)."""
    slug = _SLUG_RE.sub("-", label).strip("-")[:40] or "scene"
    return f"{prefix}{slug}-{timestamp(when)}-{uuid.uuid4().hex[:8]}"


def branch_created_at(name: str) -> dt.datetime | None:
    """When a writer created branch ``name``, read from its name (None without a time)."""
    match = _STAMP_RE.search(name)
    if match is None:
        return None
    return dt.datetime.strptime(match.group(1), TIMESTAMP_FORMAT).replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class BranchVerdict:
    """What garbage collection decided about one writer's branch, and why."""

    name: str
    head: str
    age: dt.timedelta
    remove: bool
    reason: str


def _describe(age: dt.timedelta) -> str:
    hours = age.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def classify_branches(
    store: VersionedStore, now: dt.datetime, grace: dt.timedelta
) -> list[BranchVerdict]:
    """A verdict for every writer's branch (``write-``, ``publish-``, ``ingest-``)."""
    verdicts: list[BranchVerdict] = []
    for name, head in sorted(store.list_branches().items()):
        if not name.startswith(WORK_PREFIXES):
            continue
        try:
            commit = store.get_commit(head)
        except NotFoundError:
            continue  # deleted meanwhile
        created = branch_created_at(name) or dt.datetime.fromtimestamp(commit.creation_date, dt.UTC)
        age = now - created
        status = commit.metadata.get(WAP_STATUS_KEY)
        if name.startswith(INGEST_PREFIX) and status:
            reason = f"kept for inspection: {status} ({commit.metadata.get('checks', '')})"
            verdicts.append(BranchVerdict(name, head, age, False, reason.replace(" ()", "")))
        elif age < grace:
            reason = f"{_describe(age)} old, within the grace period: its writer may be running"
            verdicts.append(BranchVerdict(name, head, age, False, reason))
        else:
            reason = f"abandoned {_describe(age)} ago by a writer that did not finish"
            verdicts.append(BranchVerdict(name, head, age, True, reason))
    return verdicts


def collect_branches(
    store: VersionedStore, now: dt.datetime, grace: dt.timedelta, dry_run: bool = False
) -> list[BranchVerdict]:
    """Delete the abandoned writers' branches (unless ``dry_run``); return every verdict."""
    verdicts = classify_branches(store, now, grace)
    for verdict in verdicts:
        if verdict.remove and not dry_run:
            with contextlib.suppress(NotFoundError):  # another collector was faster
                store.delete_branch(verdict.name)
    return verdicts
