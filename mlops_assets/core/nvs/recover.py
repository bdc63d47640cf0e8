"""Posing a photos-only NVS scene with structure-from-motion, and publishing the model.

`mlops_assets.core.scenes.nvs` describes a scene and says when it `needs_sfm`; this module runs
`mlops_assets.core.nvs.sfm.run_sfm` on its photos and commits the recovered model to the outputs
branch, or reads back the model an earlier run published for the same photos and settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from mlops_assets.core.nvs.sfm import SfMError, run_sfm
from mlops_assets.core.publish import publish_files
from mlops_assets.core.scenes.colmap import read_model
from mlops_assets.core.scenes.nvs import (
    ModelLocation,
    NVSScene,
    ObjectRef,
    SfMSummary,
    model_problems,
    summarise_model,
)
from mlops_assets.core.store.base import VersionedStore


@dataclass(frozen=True)
class SfMSettings:
    """The structure-from-motion knobs `recover_model_with_sfm` passes to `run_sfm`."""

    min_registered: int = 3
    max_image_size: int | None = 1600
    num_threads: int | None = None
    reuse: bool = True  # reuse a model an earlier run published for the same photos and settings
    enabled: bool = True  # False: a scene without a model fails instead


def recover_model_with_sfm(
    store: VersionedStore,
    scene: NVSScene,
    work_dir: Path,
    *,
    outputs_branch: str,
    base_branch: str,
    settings: SfMSettings | None = None,
    message: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> NVSScene:
    """Pose a photos-only scene with structure-from-motion and publish the model to outputs.

    The photos are read at the scene's commit; the model is written under the scene's
    ``sparse/0/`` on ``outputs_branch`` (created from ``base_branch`` if missing) through
    `publish_files`, with ``metadata`` plus the SfM figures on the commit. With
    ``settings.reuse``, a model an earlier run published for the same scene commit and settings
    is read back instead of running SfM again. Returns the scene with its `ModelLocation`,
    model summary and `SfMSummary`; when SfM poses too few photos, the scene carries the error as
    its model problem and nothing is written.
    """
    settings = settings or SfMSettings()
    if not scene.needs_sfm:
        raise ValueError(f"nvs/{scene.scene_id} does not need structure-from-motion")
    paths = scene.paths
    if not settings.enabled:
        problem = "no COLMAP model, and structure-from-motion is disabled"
        return replace(scene, problems={**scene.problems, paths.sparse: problem})
    tag = _sfm_tag(scene, settings)
    if settings.reuse:
        reused = _published_sfm_model(store, scene, outputs_branch, tag, work_dir / "reused")
        if reused is not None:
            return reused
    images_dir = work_dir / "images"
    for image in scene.images:
        store.download(scene.commit_id, image.path, images_dir / image.path[len(paths.images) :])
    try:
        result = run_sfm(
            images_dir,
            work_dir / "sfm",
            min_registered=settings.min_registered,
            max_image_size=settings.max_image_size,
            num_threads=settings.num_threads,
        )
    except SfMError as exc:
        problem = str(exc).replace(str(images_dir), f"{paths.images} at {scene.commit_id[:12]}")
        return replace(scene, problems={**scene.problems, paths.sparse: problem})
    model = result.model
    found = model_problems(model)
    if found:  # SfM fits the camera model asked for; refuse it all the same if odd
        return replace(scene, problems={**scene.problems, paths.sparse: "; ".join(found)})
    error = model.mean_reprojection_error
    sfm = SfMSummary(
        images=result.num_images,
        registered_images=result.registered,
        unregistered=result.unregistered,
        mean_reprojection_error_px=None if error is None else round(error, 4),
        seconds=round(result.seconds, 2),
    )
    files = {p.name: p for p in sorted(result.model_dir.iterdir()) if p.is_file()}
    publication = publish_files(
        store,
        outputs_branch,
        base_branch,
        paths.sparse,
        files,
        message
        or (
            f"SfM model of nvs/{scene.scene_id} at {scene.commit_id[:12]}: "
            f"{sfm.registered_images} of {sfm.images} photos registered"
        ),
        {
            **(metadata or {}),
            "source_commit": scene.commit_id,
            "source_repository": scene.repository,
            "scene": f"nvs/{scene.scene_id}",
            "model_source": "sfm",
            _SFM_TAG_KEY: tag,
            "sfm_images": str(sfm.images),
            "sfm_registered_images": str(sfm.registered_images),
            "sfm_mean_reprojection_error_px": str(sfm.mean_reprojection_error_px),
        },
    )
    refs = [
        ObjectRef(o.path, o.checksum, o.size)
        for o in store.list(publication.commit_id, paths.sparse)
    ]
    location = ModelLocation("sfm", outputs_branch, publication.commit_id, paths.sparse, refs)
    return replace(scene, model=summarise_model(model, "bin"), model_location=location, sfm=sfm)


_SFM_TAG_KEY = "sfm_settings"


def _sfm_tag(scene: NVSScene, settings: SfMSettings) -> str:
    """What makes two SfM runs interchangeable: the photos and the settings that shape the model."""
    return (
        f"{scene.content_hash}:min_registered={settings.min_registered}:"
        f"max_image_size={settings.max_image_size}"
    )


def _published_sfm_model(
    store: VersionedStore, scene: NVSScene, outputs_branch: str, tag: str, work_dir: Path
) -> NVSScene | None:
    """The scene with the SfM model an earlier run published for ``tag``, if outputs has it."""
    paths = scene.paths
    if outputs_branch not in store.list_branches():
        return None
    latest = next(iter(store.log(outputs_branch, prefixes=[paths.sparse], limit=1)), None)
    if latest is None or latest.metadata.get(_SFM_TAG_KEY) != tag:
        return None
    objects = list(store.list(latest.id, paths.sparse))
    for obj in objects:
        store.download(latest.id, obj.path, work_dir / obj.path[len(paths.sparse) :])
    try:
        model = read_model(work_dir)
    except ValueError:
        return None  # not a model after all: run SfM again
    error = model.mean_reprojection_error
    posed = {image.name for image in model.images}
    names = [image.path[len(paths.images) :] for image in scene.images]
    sfm = SfMSummary(
        images=len(names),
        registered_images=len(model.images),
        unregistered=[name for name in names if name not in posed],
        mean_reprojection_error_px=None if error is None else round(error, 4),
        seconds=None,
        reused=True,
    )
    refs = [ObjectRef(o.path, o.checksum, o.size) for o in objects]
    location = ModelLocation("sfm", outputs_branch, latest.id, paths.sparse, refs)
    return replace(scene, model=summarise_model(model, "bin"), model_location=location, sfm=sfm)
