"""Uploading a local scene folder to a branch: validate first, stream, commit, or leave nothing.

A scene folder is checked locally before a byte is sent (required files, readable rasters or
photos, a readable COLMAP model). It then replaces the scene's prefix on the branch exactly (files
no longer present are deleted) and is committed. If anything fails after the first upload, the
staged changes under the scene's prefix are reset, so the branch is left as it was.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mlops_assets.core.scenes.cd import validate_local_cd
from mlops_assets.core.scenes.layout import (
    CDPaths,
    NVSPaths,
    SceneError,
    SceneKind,
    scene_prefix,
    validate_scene_id,
)
from mlops_assets.core.scenes.nvs import local_nvs_files, validate_local_nvs
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.types import Change, Commit, NoChangesError, NotFoundError, StoreError

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
    def total_bytes(self) -> int:
        """Bytes to upload."""
        return sum(local.stat().st_size for local, _ in self.files)


def plan_upload(kind: SceneKind, src: Path, scene_id: str, validate: bool = True) -> UploadPlan:
    """Validate a local scene folder; raise `SceneError` listing every problem.

    ``validate=False`` only maps the folder's layout files to their object paths and leaves the
    judging to the raw-scene checks on the branch the scene is written to (write-audit-publish,
    `mlops_assets.core.wap`): there, a scene that fails stays on its branch for inspection. The
    scene id and the folder itself are checked either way.
    """
    validate_scene_id(scene_id)
    if not src.is_dir():
        raise SceneError(f"scene {scene_id!r}: {src} is not a directory")
    problems: list[str] = []
    if kind is SceneKind.CD:
        if validate:
            problems = validate_local_cd(src)
        paths = CDPaths(scene_id)
        wanted = {"pre.tif": paths.pre, "post.tif": paths.post, "label.tif": paths.label}
        files = [(src / name, target) for name, target in wanted.items() if (src / name).exists()]
    else:
        if validate:
            problems = validate_local_nvs(src)
        nvs_paths = NVSPaths(scene_id)
        files = [(src / rel, nvs_paths.prefix + rel) for rel in local_nvs_files(src)]
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


def ingest_scenes(
    store: VersionedStore,
    branch: str,
    plans: list[UploadPlan],
    message: str,
    metadata: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> Commit:
    """Upload validated scenes to ``branch`` and commit them together; return the commit.

    Refuses a branch with uncommitted changes (they would end up in this commit) and raises
    `NoChangesError` if the branch already holds exactly these files. On failure, nothing the
    call staged stays staged.
    """
    if branch not in store.list_branches():
        names = ", ".join(f"{p.kind.value} scene {p.scene_id!r}" for p in plans)
        raise NotFoundError(
            f"branch {branch!r} not found in repository {store.repository!r}: cannot upload {names}"
        )
    pending = store.uncommitted(branch)
    if pending:
        raise StoreError(
            f"branch {branch!r} has {len(pending)} uncommitted change(s) (e.g. {pending[0].path}); "
            "commit or reset them before ingesting"
        )
    staged: list[UploadPlan] = []
    try:
        changed = False
        for plan in plans:
            staged.append(plan)
            changed |= bool(stage_scene(store, branch, plan, progress))
        if not changed:
            names = ", ".join(f"{p.kind.value}/{p.scene_id}" for p in plans)
            raise NoChangesError(f"{names} unchanged on branch {branch!r}: no changes to commit")
        return store.commit(
            branch,
            message,
            {
                "scenes": ",".join(f"{p.kind.value}/{p.scene_id}" for p in plans),
                "files": str(sum(len(p.files) for p in plans)),
                **(metadata or {}),
            },
        )
    except BaseException:
        for plan in staged:
            store.reset(branch, plan.prefix)
        raise


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
