"""Generate every demo scene and commit them to a store, then list the held-out ones.

The scenes go in one commit; the evaluation set (``eval/scenes.json``, the scenes of
`DEMO_CD_EVAL_SCENES`) in a second one, each merged from the writer's own branch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mlops_assets.core.demo.cd import DEMO_CD_EVAL_SCENES, DEMO_CD_SCENES, write_cd_scene
from mlops_assets.core.demo.nvs import DEMO_NVS_SCENES, write_nvs_scene
from mlops_assets.core.scenes.evaluation import read_evaluation_set, write_evaluation_set
from mlops_assets.core.scenes.folders import plan_checked
from mlops_assets.core.scenes.ingest import ProgressCallback, ingest_scenes
from mlops_assets.core.scenes.layout import SceneKind
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.types import Commit, NoChangesError

DemoScene = tuple[SceneKind, str, Path]


def generate_demo_scenes(
    root: Path, cd_size: int = 512, nvs_image_size: int = 128
) -> list[DemoScene]:
    """Write every demo scene under ``root/<kind>/<scene_id>``; return (kind, id, folder)."""
    scenes: list[DemoScene] = []
    for spec in (*DEMO_CD_SCENES, *DEMO_CD_EVAL_SCENES):
        folder = write_cd_scene(spec, root / "cd" / spec.scene_id, size=cd_size)
        scenes.append((SceneKind.CD, spec.scene_id, folder))
    for nvs_spec in DEMO_NVS_SCENES:
        folder = write_nvs_scene(
            nvs_spec, root / "nvs" / nvs_spec.scene_id, image_size=nvs_image_size
        )
        scenes.append((SceneKind.NVS, nvs_spec.scene_id, folder))
    return scenes


def publish_scenes(
    store: VersionedStore,
    branch: str,
    scenes: list[DemoScene],
    message: str,
    metadata: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> Commit | None:
    """Validate and commit ``scenes`` to ``branch``; None if they are already there unchanged.

    The demo's evaluation scenes among them are then listed in the evaluation set (a second
    commit, none when the set is already that).
    """
    plans = [plan_checked(kind, folder, scene_id) for kind, scene_id, folder in scenes]
    try:
        commit: Commit | None = ingest_scenes(store, branch, plans, message, metadata, progress)
    except NoChangesError:
        commit = None
    held_out = {spec.scene_id for spec in DEMO_CD_EVAL_SCENES}
    listed = sorted(s for kind, s, _ in scenes if kind is SceneKind.CD and s in held_out)
    if listed:
        # Added to the scenes already held out there (a user's own set stays held out).
        already = read_evaluation_set(store, SceneKind.CD, branch, check=False).scene_ids
        write_evaluation_set(
            store,
            SceneKind.CD,
            sorted({*already, *listed}),
            message=f"Evaluation set: hold out the demo scene(s) {', '.join(listed)}",
            metadata=dict(metadata or {}),
            branch=branch,
        )
    return commit
