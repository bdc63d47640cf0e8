"""Uploading a local scene folder to a branch: validate first, stream, commit, or leave nothing.

A scene folder is checked locally before a byte is sent (required files, readable rasters or
photos, a readable COLMAP model, no symbolic links). The upload itself never touches the branch
people read: `ingest_scenes` cuts a short-lived branch ``write-<scene>-<UTC time>-<random>`` from
the target's head, makes the scene's prefix there hold exactly the folder's files, commits, and
merges that commit into the target with the default (fail on conflict) strategy, the way lakeFS's
``Branch.transact`` does. So two ingests at once never see each other's files; two ingests of the
same scene never leave a commit mixing both folders (the later one fails, naming the commit that
won); an ingest that fails, is interrupted or killed leaves the target exactly as it was (a killed
one leaves its ``write-`` branch behind, for ``mlops-assets gc``).

Two writers of one scene whose folders differ in *different* files would merge cleanly (a merge
conflicts only on a path both sides changed), so every writer also commits the scene's marker
(`mlops_assets.core.scenes.layout.write_marker`) with content of its own: both writers changed
that path, and whichever merges second conflicts, atomically, inside the store's own merge (the
same on lakeFS). `merge_scenes` turns that into `SceneConflictError` naming the winner.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mlops_assets.core.scenes.layout import (
    CDPaths,
    NVSPaths,
    SceneError,
    SceneKind,
    local_nvs_files,
    scene_prefix,
    validate_scene_id,
    write_marker,
)
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.branches import MERGE_SOURCE_KEY, WRITE_PREFIX, work_branch_name
from mlops_assets.core.store.types import (
    Change,
    Commit,
    DirtyBranchError,
    MergeConflictError,
    NoChangesError,
    NotFoundError,
    StoreError,
)

#: Judges a local scene folder before its upload: every problem, one line each (none: usable).
FolderCheck = Callable[[Path], list[str]]


class SceneConflictError(StoreError):
    """Another writer changed the same scene on the target branch while this ingest ran."""

    def __init__(self, message: str, scene: str = "", other: str | None = None) -> None:
        super().__init__(message)  # args stay (message,): the error pickles across processes
        self.scene = scene  # ``<kind>/<scene_id>``
        self.other = other  # the commit that changed the scene on the target, when known


ProgressCallback = Callable[[int], None]

_CONTENT_TYPES = {
    ".tif": "image/tiff",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
}


@dataclass(frozen=True)
class UploadPlan:
    """The files of one validated local scene and where each goes."""

    kind: SceneKind
    scene_id: str
    files: list[tuple[Path, str]]  # (local file, object path)
    ignored: list[Path] = field(default_factory=lambda: list[Path]())

    @property
    def prefix(self) -> str:
        """The scene's prefix in the repository."""
        return scene_prefix(self.kind, self.scene_id)

    @property
    def marker(self) -> str:
        """The scene's writer marker (`write_marker`), rewritten by every ingest of it."""
        return write_marker(self.kind, self.scene_id)

    @property
    def total_bytes(self) -> int:
        """Bytes to upload."""
        return sum(local.stat().st_size for local, _ in self.files)


def _link_problem(src: Path, local: Path, follow_symlinks: bool) -> str | None:
    """Why ``local`` (inside ``src``) may not be uploaded as it is, or None.

    A symbolic link anywhere between ``src`` and the file is refused: it would upload whatever
    it points to (``/etc/passwd`` ...). With ``follow_symlinks`` a link is followed only when
    its target lies inside ``src``. Only regular files are uploaded (a FIFO would hang the
    checks).
    """
    root = src.resolve()
    current = src
    for part in local.relative_to(src).parts:
        current = current / part
        if not current.is_symlink():
            continue
        target = current.readlink()
        if not follow_symlinks:
            return (
                f"{current} is a symbolic link (to {target}); ingest uploads regular files only "
                "(--follow-symlinks uploads link targets that lie inside the folder)"
            )
        resolved = current.resolve()
        if not resolved.is_relative_to(root):
            return f"{current} is a symbolic link to {resolved}, outside {src}: refused"
    if not local.is_file():
        return f"{local} is not a regular file"
    return None


def plan_upload(
    kind: SceneKind,
    src: Path,
    scene_id: str,
    check: FolderCheck | None,
    *,
    follow_symlinks: bool = False,
) -> UploadPlan:
    """Map a local scene folder's files to their object paths, judged by ``check`` first.

    ``check`` is the validator of the folder's kind, given by the caller (ingest does not know
    what makes a raster or a photo usable): `mlops_assets.core.scenes.folders.folder_check`, or
    `~mlops_assets.core.scenes.folders.plan_checked` for both steps at once. A `SceneError` lists
    every problem it finds. ``None`` leaves the judging to the raw-scene checks on the branch the
    scene is written to (write-audit-publish, `mlops_assets.core.wap`): there, a scene that fails
    stays on its branch for inspection. The scene id, the folder itself and symbolic links
    (refused, or with ``follow_symlinks`` followed only inside the folder) are checked either
    way, before any file is opened.
    """
    validate_scene_id(scene_id)
    if not src.is_dir():
        raise SceneError(f"scene {scene_id!r}: {src} is not a directory")
    if kind is SceneKind.CD:
        paths = CDPaths(scene_id)
        wanted = {"pre.tif": paths.pre, "post.tif": paths.post, "label.tif": paths.label}
        files = [
            (src / name, target)
            for name, target in wanted.items()
            if (src / name).exists() or (src / name).is_symlink()
        ]
    else:
        nvs_paths = NVSPaths(scene_id)
        files = [(src / rel, nvs_paths.prefix + rel) for rel in local_nvs_files(src)]
    links = [p for local, _ in files if (p := _link_problem(src, local, follow_symlinks))]
    if links:
        raise SceneError(f"{kind.value} scene {scene_id!r} from {src}: {'; '.join(links)}")
    problems = [] if check is None else check(src)
    if problems:
        listed = "; ".join(problems)
        raise SceneError(f"{kind.value} scene {scene_id!r} from {src} is not valid: {listed}")
    if not files:
        raise SceneError(f"{kind.value} scene {scene_id!r}: {src} holds no file of the layout")
    taken = {local.resolve() for local, _ in files}
    ignored = sorted(p for p in src.rglob("*") if p.is_file() and p.resolve() not in taken)
    return UploadPlan(kind, scene_id, files, ignored)


class _Counting(io.RawIOBase):
    """Reports bytes as they are read, for progress bars."""

    def __init__(self, stream: BinaryIO, progress: ProgressCallback) -> None:
        self._stream = stream
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        self._progress(len(data))
        return len(data)


def stage_scene(
    store: VersionedStore, branch: str, plan: UploadPlan, progress: ProgressCallback | None = None
) -> list[Change]:
    """Make the scene's prefix on ``branch`` hold exactly the planned files (uncommitted).

    On failure the staged changes under the prefix are reset before the error propagates.
    """
    if branch not in store.list_branches():
        raise NotFoundError(
            f"branch {branch!r} not found in repository {store.repository!r}: "
            f"cannot upload {plan.kind.value} scene {plan.scene_id!r}"
        )
    targets = {target for _, target in plan.files}
    try:
        for existing in store.list(branch, plan.prefix):
            if existing.path not in targets:
                store.delete(branch, existing.path)
        for local, target in plan.files:
            content_type = _CONTENT_TYPES.get(local.suffix.lower(), "application/octet-stream")
            with local.open("rb") as stream:
                source: BinaryIO = (
                    io.BufferedReader(_Counting(stream, progress), buffer_size=1 << 20)
                    if progress
                    else stream
                )
                store.put(branch, target, source, content_type)
    except BaseException:
        store.reset(branch, plan.prefix)
        raise
    return store.uncommitted(branch, plan.prefix)


def require_clean(store: VersionedStore, branch: str) -> None:
    """Refuse a target with uncommitted changes: nothing can be merged into it.

    Since every writer works on its own branch, only an older version of this tool (or a hand)
    stages on a branch people read; `mlops-assets reset` drops what it left.
    """
    pending = store.uncommitted(branch)
    if pending:
        raise DirtyBranchError(
            f"branch {branch!r} has {len(pending)} uncommitted change(s) (e.g. {pending[0].path}), "
            "probably left by an interrupted write: nothing can be merged into it until they are "
            f"dropped with `mlops-assets reset {branch}` (or committed)"
        )


def commit_scenes(
    store: VersionedStore,
    branch: str,
    plans: list[UploadPlan],
    message: str,
    metadata: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> Commit:
    """Upload scenes to ``branch``, a branch this writer owns, and commit them together.

    Every scene whose files changed gets its writer marker (`UploadPlan.marker`) rewritten with
    content unique to this call, so that two writers of one scene conflict when they merge
    (`merge_scenes`); an unchanged scene's marker is left alone (the scene stays unchanged). Raises
    `NoChangesError` if the branch already holds exactly these files. On failure, nothing the
    call staged stays staged.
    """
    staged: list[UploadPlan] = []
    try:
        changed = False
        for plan in plans:
            staged.append(plan)
            if stage_scene(store, branch, plan, progress):
                changed = True
                store.put(
                    branch, plan.marker, io.BytesIO(_marker(plan, branch)), "application/json"
                )
        if not changed:
            names = ", ".join(f"{p.kind.value}/{p.scene_id}" for p in plans)
            raise NoChangesError(f"{names} unchanged on branch {branch!r}: no changes to commit")
        return store.commit(branch, message, _commit_metadata(plans, metadata))
    except BaseException:
        with contextlib.suppress(StoreError):  # keep the original error, not a cleanup's
            for plan in staged:
                store.reset(branch, plan.prefix)
                store.reset(branch, plan.marker)
        raise


def _marker(plan: UploadPlan, branch: str) -> bytes:
    """The marker's content: who wrote the scene, and a nonce no other writer shares."""
    return json.dumps(
        {
            "scene": f"{plan.kind.value}/{plan.scene_id}",
            "branch": branch,
            "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "nonce": uuid.uuid4().hex,
        },
        sort_keys=True,
    ).encode()


def _commit_metadata(plans: list[UploadPlan], metadata: Mapping[str, str] | None) -> dict[str, str]:
    return {
        "scenes": ",".join(f"{p.kind.value}/{p.scene_id}" for p in plans),
        "files": str(sum(len(p.files) for p in plans)),
        **(metadata or {}),
    }


def scene_conflict(
    store: VersionedStore, branch: str, base: str, plans: list[UploadPlan]
) -> SceneConflictError | None:
    """The error to raise if a scene of ``plans`` changed on ``branch`` since ``base``.

    A scene changed when its files or its writer marker differ between ``base`` and the head
    of ``branch``; the error names the newest commit that changed either, and the branch it
    was merged from when the commit says so.
    """
    head = store.resolve(branch)
    if head == base:
        return None
    for plan in plans:
        if not (store.diff(base, head, plan.prefix) or store.diff(base, head, plan.marker)):
            continue
        scene = f"{plan.kind.value}/{plan.scene_id}"
        other = next(iter(store.log(head, prefixes=[plan.prefix, plan.marker], limit=1)), None)
        if other is None:
            by = f"head {head[:12]}"
        else:
            source = other.metadata.get(MERGE_SOURCE_KEY)
            merged_from = f", merged from {source!r}" if source else ""
            by = f"commit {other.id[:12]} ({other.message!r}{merged_from})"
        return SceneConflictError(
            f"{scene} was changed on {branch!r} by {by} while this ingest ran (it started from "
            f"{base[:12]}); nothing was merged and {branch!r} holds that version whole: ingest "
            "again to replace it",
            scene,
            other.id if other else None,
        )
    return None


def merge_scenes(
    store: VersionedStore,
    commit_id: str,
    branch: str,
    base: str,
    plans: list[UploadPlan],
    message: str,
    metadata: Mapping[str, str],
) -> str:
    """Merge a writer's commit of ``plans``, cut from ``base``, into ``branch``; return the merge.

    Raises `SceneConflictError` if another writer changed one of the scenes on ``branch`` since
    ``base``: looked for before the merge, and enforced by the merge itself, since both writers
    rewrote the scene's marker (a writer that lands between the look and the merge makes the
    merge conflict, and nothing is merged). Other merge errors propagate as they are.
    """
    conflict = scene_conflict(store, branch, base, plans)
    if conflict is not None:
        raise conflict
    try:
        return store.merge(commit_id, branch, message=message, metadata=metadata)
    except MergeConflictError:
        conflict = scene_conflict(store, branch, base, plans)
        if conflict is None:
            raise
        raise conflict from None


def ingest_scenes(
    store: VersionedStore,
    branch: str,
    plans: list[UploadPlan],
    message: str,
    metadata: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> Commit:
    """Write validated scenes into ``branch`` in one merge; return the merge commit.

    The files go to a fresh ``write-`` branch cut from ``branch``'s head and are committed there
    (`commit_scenes`); that commit is merged into ``branch`` with the default strategy
    (`merge_scenes`), and the ``write-`` branch is deleted, whatever happened. Raises
    `NoChangesError` if ``branch`` already holds exactly these files, `SceneConflictError` if
    another writer changed one of the scenes on ``branch`` meanwhile (nothing is merged),
    `DirtyBranchError` if ``branch`` has uncommitted changes. ``branch`` never holds a part of
    the upload.
    """
    if branch not in store.list_branches():
        names = ", ".join(f"{p.kind.value} scene {p.scene_id!r}" for p in plans)
        raise NotFoundError(
            f"branch {branch!r} not found in repository {store.repository!r}: cannot upload {names}"
        )
    require_clean(store, branch)
    label = plans[0].scene_id if len(plans) == 1 else "scenes"
    work = work_branch_name(WRITE_PREFIX, label, dt.datetime.now(dt.UTC))
    base = store.create_branch(work, branch)
    try:
        try:
            commit = commit_scenes(store, work, plans, message, metadata, progress)
        except NoChangesError:
            names = ", ".join(f"{p.kind.value}/{p.scene_id}" for p in plans)
            raise NoChangesError(
                f"{names} unchanged on branch {branch!r}: no changes to commit"
            ) from None
        merged = merge_scenes(
            store,
            commit.id,
            branch,
            base,
            plans,
            message,
            {**_commit_metadata(plans, metadata), MERGE_SOURCE_KEY: work},
        )
        return store.get_commit(merged)
    finally:
        with contextlib.suppress(StoreError):  # keep the original error, not a cleanup's
            store.delete_branch(work)


def ingest_scene(
    store: VersionedStore,
    branch: str,
    plan: UploadPlan,
    message: str | None = None,
    metadata: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> Commit:
    """Upload one validated scene to ``branch`` and commit it (see `ingest_scenes`)."""
    return ingest_scenes(
        store,
        branch,
        [plan],
        message or f"Ingest {plan.kind.value} scene {plan.scene_id}",
        metadata,
        progress,
    )
