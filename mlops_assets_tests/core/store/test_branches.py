"""Writers' branches: names that carry their age, and garbage collection of abandoned ones."""

from __future__ import annotations

import datetime as dt
import io

from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.branches import (
    INGEST_PREFIX,
    PUBLISH_PREFIX,
    WAP_STATUS_KEY,
    WRITE_PREFIX,
    branch_created_at,
    collect_branches,
    work_branch_name,
)
from mlops_assets.core.store.types import validate_branch_name

WHEN = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)


def test_names_are_valid_lakefs_branches_and_carry_their_time() -> None:
    name = work_branch_name(WRITE_PREFIX, "cd/farm.v2", WHEN)
    assert name.startswith("write-cd-farm-v2-20260304T050607Z-")
    assert validate_branch_name(name) == name
    assert branch_created_at(name) == WHEN
    assert branch_created_at("ingest-farm-20260304T050607Z-3") == WHEN
    assert branch_created_at("main") is None


def test_only_abandoned_writer_branches_are_collected(store: VersionedStore) -> None:
    now = WHEN + dt.timedelta(days=2)
    old, young = WHEN, now - dt.timedelta(minutes=5)
    abandoned = [
        work_branch_name(WRITE_PREFIX, "a", old),
        work_branch_name(PUBLISH_PREFIX, "cd-a", old),
        f"{INGEST_PREFIX}a-20260304T050607Z",
    ]
    kept = [work_branch_name(WRITE_PREFIX, "b", young), "feature-x", "outputs"]
    for name in [*abandoned, *kept]:
        store.create_branch(name, "main")
    inspected = f"{INGEST_PREFIX}bad-20260304T050607Z"
    store.create_branch(inspected, "main")
    store.put(inspected, "cd/bad/pre.tif", io.BytesIO(b"x"))
    store.commit(inspected, "ingest")
    store.commit(inspected, "audit", {WAP_STATUS_KEY: "checks-failed"}, allow_empty=True)

    preview = collect_branches(store, now, dt.timedelta(hours=24), dry_run=True)
    assert sorted(v.name for v in preview if v.remove) == sorted(abandoned)
    assert len(store.list_branches()) == 8

    verdicts = collect_branches(store, now, dt.timedelta(hours=24))
    assert set(store.list_branches()) == {"main", inspected, *kept}
    reasons = {v.name: v.reason for v in verdicts}
    assert reasons[inspected].startswith("kept for inspection: checks-failed")
    assert "within the grace period" in reasons[kept[0]]
    assert reasons[abandoned[0]].startswith("abandoned 2.0 days ago")
