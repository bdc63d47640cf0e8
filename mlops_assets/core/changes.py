"""Which scenes a batch of commits on a branch changed: the core of the commit sensor.

`scene_changes` compares two snapshots of the watched branch, the commit the sensor saw last (its
cursor) and the branch's head, and maps every changed path to its scene with `scene_of_path`:

* a scene that still has files at head is *changed* (new scenes included);
* a scene whose prefix is empty at head is *deleted*;
* paths outside every valid scene (a README, ``cd/Bad Name/...``) are counted and ignored.

Without a cursor (first tick), or when the cursor commit no longer exists (a branch reset
followed by garbage collection, or a repository recreated), every scene at head counts as changed
and the result says why. The comparison is two-dot (snapshot against snapshot), so it is exact
whether or not the cursor is an ancestor of head; uncommitted changes on the branch are never seen,
since both sides are commit ids.

A full comparison need not redo work: `unchanged_since` tells, for scenes last materialised at
known commits, which of them have exactly the same files at head (one diff per distinct commit).

Merges are ordinary commits on the branch, so they need nothing special to be diffed; the commits
of the batch are listed with their parents and message, and for a merge the source branch when it
can be told: from the commit metadata key `MERGE_SOURCE_KEY` (set it when merging), else from the
message lakeFS and the embedded store write by default (``Merge 'src' into 'dst'``), else from a
branch whose head is still the merged commit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from mlops_assets.core.scenes.layout import SceneKind, scene_of_path
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.branches import MERGE_SOURCE_KEY
from mlops_assets.core.store.types import Commit, NotFoundError

#: The default merge message of lakeFS (graveler) and of the embedded store.
_DEFAULT_MERGE_MESSAGE = re.compile(r"^Merge '(?P<source>[^']+)' into '(?P<destination>[^']+)'")
#: At most this many commits of a batch are listed (the diff itself is never truncated).
MAX_BATCH_COMMITS = 50
#: Commit metadata asking for the commit's scenes to be materialised as one batch, whatever
#: their number (a dataset import sets it, with a short description as the value).
BATCH_KEY = "batch"

SceneRef = tuple[SceneKind, str]


def _empty_ids() -> dict[SceneKind, list[str]]:
    return {kind: [] for kind in SceneKind}


@dataclass(frozen=True)
class BatchCommit:
    """One commit between the cursor (excluded) and head (included)."""

    id: str
    parents: tuple[str, ...]
    message: str
    merge_source: str | None = None  # the merged branch, when it can be told
    batch: str | None = None  # the commit's `BATCH_KEY` metadata, when set

    @property
    def is_merge(self) -> bool:
        """True for a commit with more than one parent."""
        return len(self.parents) > 1


@dataclass(frozen=True)
class SceneChanges:
    """What a batch of commits changed, scene by scene."""

    branch: str
    head: str
    cursor: str | None
    full: bool  # True: every scene at head, not a diff against the cursor
    reason: str  # how the comparison was made, for logs and skip reasons
    changed: dict[SceneKind, list[str]] = field(default_factory=_empty_ids)
    deleted: dict[SceneKind, list[str]] = field(default_factory=_empty_ids)
    ignored_paths: int = 0  # changed paths outside every valid scene
    commits: list[BatchCommit] = field(default_factory=lambda: list[BatchCommit]())
    commits_truncated: bool = False  # more than `MAX_BATCH_COMMITS` commits in the batch

    @property
    def is_empty(self) -> bool:
        """True when no scene was changed or deleted."""
        return not any(self.changed.values()) and not any(self.deleted.values())

    @property
    def merge_sources(self) -> list[str]:
        """The branches merged in this batch (when they could be told), sorted."""
        return sorted({c.merge_source for c in self.commits if c.merge_source})

    @property
    def batches(self) -> list[str]:
        """The `BATCH_KEY` values of the batch's commits (imports and the like), oldest first."""
        return [c.batch for c in reversed(self.commits) if c.batch]

    def without(self, done: Mapping[SceneKind, set[str]], why: str) -> SceneChanges:
        """These changes less the scenes in ``done`` (already up to date), ``why`` in the reason."""
        changed = {
            kind: [s for s in ids if s not in done[kind]] for kind, ids in self.changed.items()
        }
        skipped = sum(len(ids) - len(changed[kind]) for kind, ids in self.changed.items())
        if not skipped:
            return self
        return replace(self, changed=changed, reason=f"{self.reason}; {skipped} {why}")

    @property
    def merges(self) -> list[BatchCommit]:
        """The merge commits of the batch, newest first."""
        return [c for c in self.commits if c.is_merge]

    def summary(self) -> str:
        """One line: the counts per kind and how they were found."""
        parts = [
            f"{len(self.changed[kind])} {kind.value} changed, {len(self.deleted[kind])} deleted"
            for kind in SceneKind
        ]
        return f"{'; '.join(parts)} ({self.reason})"


def merge_source(store: VersionedStore, commit: Commit, branch: str) -> str | None:
    """The branch a merge commit brought into ``branch``, or None when it cannot be told."""
    if len(commit.parents) < 2:
        return None
    named = commit.metadata.get(MERGE_SOURCE_KEY)
    if named:
        return named
    match = _DEFAULT_MERGE_MESSAGE.match(commit.message)
    if match and match["destination"] == branch:
        return match["source"]
    # A branch still pointing at the merged commit (the source is the second parent).
    heads = sorted(
        name for name, head in store.list_branches().items() if head == commit.parents[1]
    )
    candidates = [name for name in heads if name != branch]
    return candidates[0] if len(candidates) == 1 else None


def batch_commits(
    store: VersionedStore, head: str, cursor: str | None, branch: str
) -> tuple[list[BatchCommit], bool]:
    """The commits reachable from ``head`` but newer than ``cursor``, newest first.

    Stops at the cursor, or after `MAX_BATCH_COMMITS` commits (then the flag is True). Without a
    cursor only ``head`` is listed: the batch is "everything", not a list of commits.
    """

    def batch_commit(commit: Commit) -> BatchCommit:
        source = merge_source(store, commit, branch)
        batch = commit.metadata.get(BATCH_KEY) or None
        return BatchCommit(commit.id, commit.parents, commit.message, source, batch)

    if cursor is None:
        return [batch_commit(store.get_commit(head))], False
    commits: list[BatchCommit] = []
    for commit in store.log(head, limit=MAX_BATCH_COMMITS + 1):
        if commit.id == cursor:
            return commits, False
        if len(commits) == MAX_BATCH_COMMITS:
            return commits, True
        commits.append(batch_commit(commit))
    return commits, False


def scenes_at(store: VersionedStore, ref: str) -> dict[SceneKind, list[str]]:
    """The valid scene ids at ``ref`` per kind, sorted."""
    found = _empty_ids()
    for kind in SceneKind:
        for prefix in store.list_prefixes(ref, f"{kind.value}/"):
            scene = scene_of_path(prefix)
            if scene is not None:
                found[kind].append(scene[1])
        found[kind].sort()
    return found


def _has_objects(store: VersionedStore, ref: str, prefix: str) -> bool:
    return next(iter(store.list(ref, prefix)), None) is not None


def touched_scenes(
    store: VersionedStore, old: str, new: str
) -> tuple[dict[SceneKind, set[str]], int]:
    """Per kind, the scenes with a path that differs between commits ``old`` and ``new``.

    Also returns the number of differing paths outside every valid scene.
    """
    touched: dict[SceneKind, set[str]] = {kind: set() for kind in SceneKind}
    ignored = 0
    for change in store.diff(old, new):
        scene = scene_of_path(change.path)
        if scene is None:
            ignored += 1
        else:
            touched[scene[0]].add(scene[1])
    return touched, ignored


def unchanged_since(
    store: VersionedStore, head: str, made_at: Mapping[SceneRef, str]
) -> set[SceneRef]:
    """The scenes of ``made_at`` whose files at ``head`` are exactly those at their commit.

    ``made_at`` maps a scene to the commit it was last materialised from. The scene assets' data
    versions hash exactly these files (path and checksum), so an unchanged scene would get the same
    data version again: there is nothing to redo. One diff per distinct commit; a commit that no
    longer exists (garbage-collected, another repository) counts as changed.
    """
    by_commit: dict[str, list[SceneRef]] = {}
    for scene, commit in made_at.items():
        by_commit.setdefault(commit, []).append(scene)
    same: set[SceneRef] = set()
    for commit, scenes in by_commit.items():
        if commit == head:
            same.update(scenes)
            continue
        try:
            touched, _ = touched_scenes(store, commit, head)
        except NotFoundError:
            continue
        same.update(s for s in scenes if s[1] not in touched[s[0]])
    return same


def scene_changes(store: VersionedStore, branch: str, cursor: str | None) -> SceneChanges:
    """The scenes changed on ``branch`` from commit ``cursor`` (None: from nothing) to its head.

    Raises whatever the store raises for the branch itself (`NotFoundError` when it does not
    exist, `StoreUnavailableError` when the server is down); a missing cursor commit is not an
    error but a full comparison, and the reason says so.
    """
    head = store.resolve(branch)  # a commit id: staged changes on the branch are never seen
    if cursor is not None and cursor == head:
        return SceneChanges(branch, head, cursor, False, f"no new commit on {branch!r}")
    known_cursor: str | None = cursor
    if cursor is None:
        reason = f"no cursor: every scene at {branch}@{head[:12]}"
    else:
        try:
            store.get_commit(cursor)
        except NotFoundError as exc:
            known_cursor = None
            reason = (
                f"cursor commit {cursor[:12]} no longer exists ({exc}): "
                f"every scene at {branch}@{head[:12]}"
            )
        else:
            reason = f"diff {cursor[:12]}..{head[:12]} on {branch!r}"
    commits, truncated = batch_commits(store, head, known_cursor, branch)
    if known_cursor is None:
        return SceneChanges(
            branch, head, cursor, True, reason, changed=scenes_at(store, head), commits=commits
        )
    touched, ignored = touched_scenes(store, known_cursor, head)
    changed, deleted = _empty_ids(), _empty_ids()
    for kind, ids in touched.items():
        for scene_id in sorted(ids):
            present = _has_objects(store, head, f"{kind.value}/{scene_id}/")
            (changed if present else deleted)[kind].append(scene_id)
    return SceneChanges(
        branch,
        head,
        cursor,
        False,
        reason,
        changed=changed,
        deleted=deleted,
        ignored_paths=ignored,
        commits=commits,
        commits_truncated=truncated,
    )
