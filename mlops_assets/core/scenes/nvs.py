"""Reading and checking novel-view-synthesis scenes: photos plus a COLMAP model.

`read_nvs_scene` pins a scene to one commit, lists its photos with checksums, downloads the COLMAP
model (a few small files) and reads it with pycolmap; photos are streamed one at a time to prove
they decode. Problems are recorded, not raised, so `check_nvs_scene` reports all of them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from mlops_assets.core.scenes.checks import CheckOutcome, content_hash
from mlops_assets.core.scenes.colmap import (
    PINHOLE_MODELS,
    RADIAL_MODELS,
    ColmapModel,
    model_format,
    read_model,
)
from mlops_assets.core.scenes.layout import IMAGE_SUFFIXES, NVSPaths
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.types import lakefs_uri

FILES_CHECK = "files_present_and_readable"
MODEL_CHECK = "model_readable_and_images_present"


@dataclass(frozen=True)
class ObjectRef:
    """One object of a scene at its commit."""

    path: str
    checksum: str
    size_bytes: int


@dataclass(frozen=True)
class ModelSummary:
    """What the pipeline reports about a COLMAP model."""

    format: str
    camera_models: list[str]
    registered_images: int
    points: int
    observations: int
    mean_reprojection_error_px: float | None
    image_names: list[str]


@dataclass(frozen=True)
class NVSScene:
    """A novel-view-synthesis scene pinned to one commit."""

    scene_id: str
    repository: str
    ref: str
    commit_id: str
    images: list[ObjectRef] = field(default_factory=lambda: list[ObjectRef]())
    model_files: list[ObjectRef] = field(default_factory=lambda: list[ObjectRef]())
    model: ModelSummary | None = None
    missing_images: list[str] = field(default_factory=lambda: list[str]())
    problems: dict[str, str] = field(default_factory=lambda: dict[str, str]())

    @property
    def paths(self) -> NVSPaths:
        """The scene's object paths."""
        return NVSPaths(self.scene_id)

    def uri(self, path: str) -> str:
        """A commit-pinned ``lakefs://`` URI."""
        return lakefs_uri(self.repository, self.commit_id, path)

    @property
    def content_hash(self) -> str:
        """A hash of the scene's files only: unchanged when other scenes change."""
        objects = [*self.images, *self.model_files]
        return content_hash(((o.path, o.checksum) for o in objects), self.problems)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable manifest."""
        return {
            "scene_id": self.scene_id,
            "repository": self.repository,
            "ref": self.ref,
            "commit_id": self.commit_id,
            "images": [vars(o) for o in self.images],
            "model_files": [vars(o) for o in self.model_files],
            "model": vars(self.model) if self.model else None,
            "missing_images": list(self.missing_images),
            "problems": dict(self.problems),
        }


def _image_problem(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        return f"not a readable image ({exc})"
    return None


def summarise_model(model: ColmapModel, fmt: str) -> ModelSummary:
    """The reportable summary of a model."""
    error = model.mean_reprojection_error
    return ModelSummary(
        format=fmt,
        camera_models=sorted({c.model for c in model.cameras.values()}),
        registered_images=len(model.images),
        points=len(model.points),
        observations=model.num_observations,
        mean_reprojection_error_px=None if error is None else round(error, 4),
        image_names=[image.name for image in model.images],
    )


def _model_problems(model: ColmapModel, where: str) -> list[str]:
    problems: list[str] = []
    if not model.images:
        problems.append(f"{where}: the COLMAP model has zero registered images")
    unsupported = sorted(
        {c.model for c in model.cameras.values()} - set(PINHOLE_MODELS) - set(RADIAL_MODELS)
    )
    if unsupported:
        problems.append(
            f"{where}: unsupported camera model(s) {', '.join(unsupported)} "
            f"(supported: {', '.join(PINHOLE_MODELS + RADIAL_MODELS)})"
        )
    return problems


def read_nvs_scene(store: VersionedStore, ref: str, scene_id: str) -> NVSScene:
    """Pin ``scene_id`` at ``ref`` to a commit and describe its photos and model."""
    paths = NVSPaths(scene_id)
    commit_id = store.resolve(ref)
    objects = list(store.list(commit_id, paths.prefix))
    images = [
        ObjectRef(o.path, o.checksum, o.size)
        for o in objects
        if o.path.startswith(paths.images)
        and "/" not in o.path[len(paths.images) :]
        and o.path.lower().endswith(IMAGE_SUFFIXES)
    ]
    model_files = [
        ObjectRef(o.path, o.checksum, o.size) for o in objects if o.path.startswith(paths.sparse)
    ]
    problems: dict[str, str] = {}
    if not images:
        problems[paths.images] = f"missing: scene {scene_id!r} has no .png/.jpg photos"
    summary: ModelSummary | None = None
    missing: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nvs-scene-") as tmp:
        for image in images:
            local = store.download(commit_id, image.path, Path(tmp) / "image")
            problem = _image_problem(local)
            if problem:
                problems[image.path] = problem
        model_dir = Path(tmp) / "sparse"
        for obj in model_files:
            store.download(commit_id, obj.path, model_dir / obj.path[len(paths.sparse) :])
        fmt = model_format([o.path[len(paths.sparse) :] for o in model_files])
        if fmt is None:
            problems[paths.sparse] = (
                "missing: no complete COLMAP model (cameras, images, points3D as .bin or .txt)"
            )
        else:
            try:
                model = read_model(model_dir)
            except ValueError as exc:
                problems[paths.sparse] = str(exc).replace(str(model_dir), paths.sparse)
            else:
                summary = summarise_model(model, fmt)
                for problem in _model_problems(model, paths.sparse):
                    problems.setdefault(paths.sparse, problem)
                present = {i.path[len(paths.images) :] for i in images}
                missing = sorted(i.name for i in model.images if i.name not in present)
    return NVSScene(
        scene_id=scene_id,
        repository=store.repository,
        ref=ref,
        commit_id=commit_id,
        images=images,
        model_files=model_files,
        model=summary,
        missing_images=missing,
        problems=problems,
    )


def check_nvs_scene(scene: NVSScene) -> list[CheckOutcome]:
    """The raw-scene checks: files present and readable; model readable, every image present."""
    file_problems = {p: v for p, v in scene.problems.items() if p != scene.paths.sparse}
    files = CheckOutcome(
        name=FILES_CHECK,
        passed=not file_problems,
        description=(
            f"{len(scene.images)} photos present and decodable"
            if not file_problems
            else "; ".join(f"{path}: {problem}" for path, problem in sorted(file_problems.items()))
        ),
        metadata={"images": len(scene.images), "problems": file_problems},
    )
    model_problem = scene.problems.get(scene.paths.sparse)
    reasons = [f"{scene.paths.sparse}: {model_problem}"] if model_problem else []
    if scene.missing_images:
        shown = ", ".join(scene.missing_images[:10])
        reasons.append(
            f"{len(scene.missing_images)} registered image(s) missing from "
            f"{scene.paths.images}: {shown}"
        )
    metadata: dict[str, Any] = {"missing_images": list(scene.missing_images)}
    if scene.model is not None:
        metadata |= {
            "registered_images": scene.model.registered_images,
            "points": scene.model.points,
            "camera_models": scene.model.camera_models,
        }
    model = CheckOutcome(
        name=MODEL_CHECK,
        passed=not reasons,
        description=(
            f"COLMAP model ({scene.model.format}) with {scene.model.registered_images} registered "
            f"images and {scene.model.points} points; every registered image is present"
            if not reasons and scene.model is not None
            else "; ".join(reasons)
        ),
        metadata=metadata,
    )
    return [files, model]


def local_nvs_files(src: Path) -> list[str]:
    """Relative paths of the photos and model files in a local scene folder."""
    images = sorted(
        f"images/{p.name}"
        for p in (src / "images").glob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    sparse = src / "sparse" / "0"
    model = sorted(f"sparse/0/{p.name}" for p in sparse.glob("*") if p.is_file())
    return images + model


def validate_local_nvs(src: Path) -> list[str]:
    """Problems with a local NVS scene folder (empty list: ready to ingest)."""
    problems: list[str] = []
    image_dir = src / "images"
    names = {
        p.name for p in image_dir.glob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }
    if not names:
        problems.append(f"{image_dir}: missing or holds no .png/.jpg photos")
    for name in sorted(names):
        problem = _image_problem(image_dir / name)
        if problem:
            problems.append(f"{image_dir / name}: {problem}")
    sparse = src / "sparse" / "0"
    if not sparse.is_dir():
        problems.append(f"{sparse}: missing (no COLMAP model)")
        return problems
    try:
        model = read_model(sparse)
    except ValueError as exc:
        problems.append(str(exc))
        return problems
    problems += _model_problems(model, str(sparse))
    missing = sorted(i.name for i in model.images if i.name not in names)
    if missing:
        problems.append(
            f"{image_dir}: {len(missing)} registered image(s) missing: {', '.join(missing[:10])}"
        )
    return problems
