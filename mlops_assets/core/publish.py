"""Publishing pipeline outputs to the ``outputs`` branch: write on a branch, commit, then merge.

Outputs never go to the branch the sensors watch. Each publication stages its files on a fresh
short-lived branch cut from ``outputs``, commits there with lineage metadata, and merges into
``outputs`` only once the commit exists: readers of ``outputs`` see all of a scene's files from
one run or none of them. Publications of different scenes touch disjoint prefixes and merge
without conflict; two runs of the same scene resolve in favour of the later merge.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.branches import PUBLISH_PREFIX, work_branch_name
from mlops_assets.core.store.types import MergeStrategy, NoChangesError, StoreError

_CONTENT_TYPES = {
    ".tif": "image/tiff",
    ".png": "image/png",
    ".mp4": "video/mp4",
    ".json": "application/json",
}


def link_metadata(links: Mapping[str, str | None]) -> dict[str, str]:
    """Commit metadata the lakeFS UI shows as link buttons: ``::lakefs::<Name>::url[url:ui]``.

    Links without a URL are left out. Every commit the pipeline writes carries these (with the
    Dagster run id beside them): the change maps published here, and the merges of
    write-audit-publish ingestion (`mlops_assets.core.wap`).
    """
    return {f"::lakefs::{name}::url[url:ui]": url for name, url in links.items() if url}


@dataclass(frozen=True)
class Publication:
    """Where published files ended up."""

    branch: str
    commit_id: str  # the commit on the work branch holding exactly these files
    merge_commit_id: str  # head of ``branch`` after the merge
    paths: list[str]


def ensure_branch(store: VersionedStore, name: str, source: str) -> None:
    """Create ``name`` from ``source`` unless it exists (tolerating a concurrent creator)."""
    if name in store.list_branches():
        return
    try:
        store.create_branch(name, source)
    except StoreError:
        if name not in store.list_branches():
            raise


def publish_files(
    store: VersionedStore,
    outputs_branch: str,
    base: str,
    prefix: str,
    files: Mapping[str, Path],
    message: str,
    metadata: Mapping[str, str],
) -> Publication:
    """Write ``files`` (names relative to ``prefix``) to ``outputs_branch`` in one merge."""
    prefix = prefix.rstrip("/") + "/"
    ensure_branch(store, outputs_branch, base)
    # The UTC time in the name tells `mlops-assets gc` how old a branch a killed run left is.
    work = work_branch_name(PUBLISH_PREFIX, prefix.strip("/"), dt.datetime.now(dt.UTC))
    store.create_branch(work, outputs_branch)
    try:
        # Only the named files are written. Nothing else under the prefix is removed: outputs is
        # cut from main, so the scene's own inputs live there too.
        targets = {prefix + name: path for name, path in files.items()}
        for target, path in sorted(targets.items()):
            store.put(
                work, target, path, _CONTENT_TYPES.get(path.suffix, "application/octet-stream")
            )
        try:
            commit = store.commit(work, message, dict(metadata))
        except NoChangesError:  # the branch already holds exactly these bytes
            head = store.resolve(outputs_branch)
            return Publication(outputs_branch, head, head, sorted(targets))
        merged = store.merge(
            work,
            outputs_branch,
            message=f"Merge {prefix.rstrip('/')} from {work}",
            metadata=dict(metadata),
            strategy=MergeStrategy.SOURCE_WINS,
        )
    finally:
        with contextlib.suppress(StoreError):
            store.delete_branch(work)
    return Publication(outputs_branch, commit.id, merged, sorted(targets))
