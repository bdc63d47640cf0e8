"""The evaluation set: labelled scenes that no model trains on, listed in the store itself.

The convention (the same in the embedded store and in lakeFS):

    eval/scenes.json   on the main branch: {"cd": ["scene-a", ...]}

The file is committed like any ingest (on a short-lived branch merged into main, see
`write_evaluation_set`), so who added which scene, and when, is in the history, and a change to
the set is a reviewable commit. An evaluation resolves main to one commit and reads both the list
and the listed scenes at that commit: champion and challenger are then measured on exactly the
same pixels, and the commit is recorded with the evaluation.

A file was chosen over a lakeFS tag: a tag names a commit but not which scenes, cannot be
edited in a reviewed commit, and would freeze every other scene at that commit too. The file sits
outside ``cd/`` and ``nvs/``, so no sensor takes it for a scene.

Training reads the same file (`EvaluationSet.excludes`): a listed scene is never trained or
validated on, and each model version records the scenes it did train on, so a gate can refuse a
comparison on a scene the model has seen.

Only change-detection scenes are listed. A splat model belongs to one capture and cannot be
trained without it, so NVS holds out views, not scenes: every ``holdout_every``-th photo of each
capture (`mlops_assets.core.nvs.config`) is never trained on and scores the model. An ``"nvs"``
key is refused with a line saying so, rather than accepted and ignored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_assets.core.scenes.layout import SceneError, SceneKind, scene_id_problem
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.branches import WRITE_PREFIX, work_branch_name
from mlops_assets.core.store.types import MergeStrategy, NoChangesError, NotFoundError, StoreError

#: Where the evaluation set is listed, on the main branch.
EVALUATION_PATH = "eval/scenes.json"


class EvaluationSetError(SceneError):
    """The evaluation-set file is malformed or lists a scene that is not there."""


#: Why eval/scenes.json lists no NVS scenes (the message for an ``"nvs"`` key or kind).
NVS_NOT_HELD_OUT = (
    "NVS scenes are not held out whole (a splat model is trained on its own capture): each "
    "capture is evaluated on its own held-out views, every holdout_every-th photo by name; list "
    'only change-detection scenes, under "cd"'
)


def _cd_only(kind: SceneKind) -> None:
    if kind is not SceneKind.CD:
        raise EvaluationSetError(f"{EVALUATION_PATH}: {NVS_NOT_HELD_OUT}")


@dataclass(frozen=True)
class EvaluationSet:
    """The evaluation scenes of one kind, pinned to the commit they were read at."""

    kind: SceneKind
    scene_ids: tuple[str, ...]
    commit_id: str
    repository: str
    path: str = EVALUATION_PATH

    def __bool__(self) -> bool:
        return bool(self.scene_ids)

    def excludes(self, scene_id: str) -> bool:
        """True when ``scene_id`` is held out (no training, no validation)."""
        return scene_id in self.scene_ids

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored between assets)."""
        return {
            "kind": self.kind.value,
            "scene_ids": list(self.scene_ids),
            "commit_id": self.commit_id,
            "repository": self.repository,
            "path": self.path,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationSet:
        """Inverse of `to_dict`."""
        return cls(
            SceneKind(data["kind"]),
            tuple(data["scene_ids"]),
            str(data["commit_id"]),
            str(data["repository"]),
            str(data.get("path", EVALUATION_PATH)),
        )


def parse_evaluation_file(
    content: bytes, name: str = EVALUATION_PATH
) -> dict[SceneKind, list[str]]:
    """The scene ids per kind in an evaluation-set file; `EvaluationSetError` naming the problem."""
    try:
        data = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvaluationSetError(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise EvaluationSetError(f'{name}: expected an object like {{"cd": [scene ids]}}')
    listing: dict[SceneKind, list[str]] = {}
    for key, ids in data.items():  # pyright: ignore[reportUnknownVariableType]
        kinds = {SceneKind.CD.value: SceneKind.CD}
        if key == SceneKind.NVS.value:
            raise EvaluationSetError(f"{name}: key 'nvs': {NVS_NOT_HELD_OUT}")
        if key not in kinds:
            raise EvaluationSetError(f"{name}: unknown key {key!r} (expected 'cd')")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):  # pyright: ignore[reportUnknownVariableType]
            raise EvaluationSetError(f"{name}: {key!r} must be a list of scene ids")
        for scene_id in ids:  # pyright: ignore[reportUnknownVariableType]
            problem = scene_id_problem(scene_id)  # pyright: ignore[reportUnknownArgumentType]
            if problem is not None:
                raise EvaluationSetError(f"{name}: {key} scene id {scene_id!r}: {problem}")
        listing[kinds[key]] = sorted(set(ids))  # pyright: ignore[reportUnknownArgumentType]
    return listing


def _required_files(scene_id: str) -> list[str]:
    # An evaluation scene must be labelled: it is scored against its label.
    return [f"cd/{scene_id}/{name}" for name in ("pre.tif", "post.tif", "label.tif")]


def read_evaluation_set(
    store: VersionedStore, kind: SceneKind, ref: str | None = None, check: bool = True
) -> EvaluationSet:
    """The evaluation scenes of ``kind`` at ``ref`` (default: main), pinned to its commit.

    No file means an empty set. With ``check``, every listed scene must exist at that commit
    (and a CD scene must have its label): otherwise `EvaluationSetError` names the scene and file.
    ``kind`` must be CD (`NVS_NOT_HELD_OUT` says why).
    """
    _cd_only(kind)
    commit = store.resolve(ref or store.default_branch())
    try:
        content = store.read_bytes(commit, EVALUATION_PATH)
    except NotFoundError:
        return EvaluationSet(kind, (), commit, store.repository)
    ids = parse_evaluation_file(content).get(kind, [])
    if check:
        for scene_id in ids:
            for path in _required_files(scene_id):
                if not store.exists(commit, path):
                    raise EvaluationSetError(
                        f"{EVALUATION_PATH} at {commit[:12]} lists {kind.value}/{scene_id} but "
                        f"{path} does not exist there"
                    )
    return EvaluationSet(kind, tuple(ids), commit, store.repository)


def write_evaluation_set(
    store: VersionedStore,
    kind: SceneKind,
    scene_ids: Sequence[str],
    message: str | None = None,
    metadata: Mapping[str, str] | None = None,
    branch: str | None = None,
) -> str:
    """Set the evaluation scenes of ``kind`` (other kinds kept); return the merged head commit.

    Written on a short-lived branch, committed, then merged into ``branch`` (default: main) in
    one step: a killed writer leaves main as it was. ``kind`` must be CD.
    """
    _cd_only(kind)
    target = branch or store.default_branch()
    head = store.resolve(target)
    try:
        current = parse_evaluation_file(store.read_bytes(head, EVALUATION_PATH))
    except NotFoundError:
        current = {}
    for scene_id in scene_ids:
        problem = scene_id_problem(scene_id)
        if problem is not None:
            raise EvaluationSetError(f"evaluation scene id {scene_id!r}: {problem}")
    current[kind] = sorted(set(scene_ids))
    body = {k.value: current[k] for k in sorted(current, key=lambda k: k.value) if current[k]}
    work = work_branch_name(WRITE_PREFIX, "eval", dt.datetime.now(dt.UTC))
    store.create_branch(work, target)
    try:
        with tempfile.TemporaryDirectory(prefix="eval-set-") as tmp:
            path = Path(tmp) / "scenes.json"
            path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
            store.put(work, EVALUATION_PATH, path, "application/json")
        text = message or f"Evaluation set: {kind.value} = {', '.join(current[kind]) or 'none'}"
        try:
            store.commit(work, text, dict(metadata or {}))
        except NoChangesError:  # the set is already exactly this
            return head
        return store.merge(
            work,
            target,
            message=f"Merge {EVALUATION_PATH} from {work}",
            metadata=dict(metadata or {}),
            strategy=MergeStrategy.SOURCE_WINS,
        )
    finally:
        with contextlib.suppress(StoreError):
            store.delete_branch(work)
