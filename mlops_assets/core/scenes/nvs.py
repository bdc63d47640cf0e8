"""Reading and checking novel-view-synthesis scenes: photos plus a COLMAP model.

`read_nvs_scene` pins a scene to one commit, lists its photos with checksums, downloads the COLMAP
model (a few small files) and reads it with pycolmap; photos are streamed one at a time to prove
they decode. Problems are recorded, not raised, so `check_nvs_scene` reports all of them.

A scene with photos and no ``sparse/`` at all is valid input: `core.nvs.recover` poses the
photos with structure-from-motion and publishes the model to the outputs branch (never to the
branch the sensors watch). Either way the scene records a `ModelLocation`, the commit and prefix
the model is read from, and `materialize_nvs_scene` downloads photos and model from there.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from mlops_assets.core.scenes.checks import CheckLimits, CheckOutcome, content_hash
from mlops_assets.core.scenes.colmap import (
    PINHOLE_MODELS,
    RADIAL_MODELS,
    Camera,
    ColmapModel,
    model_format,
    read_model,
)
from mlops_assets.core.scenes.layout import IMAGE_SUFFIXES, NVSPaths, SceneError
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.types import CorruptObjectError, lakefs_uri

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


ModelSource = Literal["scene", "sfm"]


@dataclass(frozen=True)
class ModelLocation:
    """Where a scene's COLMAP model is read from: a commit and a prefix of the same repository.

    ``source`` is ``scene`` for a model committed with the photos, ``sfm`` for one recovered by
    structure-from-motion and published to the outputs branch (``branch``).
    """

    source: ModelSource
    branch: str
    commit_id: str
    prefix: str
    files: list[ObjectRef] = field(default_factory=lambda: list[ObjectRef]())


@dataclass(frozen=True)
class SfMSummary:
    """How structure-from-motion posed a scene's photos."""

    images: int
    registered_images: int
    unregistered: list[str]
    mean_reprojection_error_px: float | None
    seconds: float | None  # None when an earlier run's model was reused
    reused: bool = False


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
    model_location: ModelLocation | None = None
    sfm: SfMSummary | None = None

    @property
    def needs_sfm(self) -> bool:
        """Photos that all decode and no model files at all: structure-from-motion can pose them."""
        return (
            not self.model_files
            and bool(self.images)
            and self.model_location is None
            and not self.problems
        )

    @property
    def paths(self) -> NVSPaths:
        """The scene's object paths."""
        return NVSPaths(self.scene_id)

    def uri(self, path: str) -> str:
        """A commit-pinned ``lakefs://`` URI."""
        return lakefs_uri(self.repository, self.commit_id, path)

    @property
    def model_uri(self) -> str | None:
        """A commit-pinned URI of the model's prefix (None without a usable model)."""
        location = self.model_location
        if location is None:
            return None
        return lakefs_uri(self.repository, location.commit_id, location.prefix)

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
            "model_location": None
            if self.model_location is None
            else {
                "source": self.model_location.source,
                "branch": self.model_location.branch,
                "commit_id": self.model_location.commit_id,
                "prefix": self.model_location.prefix,
                "uri": self.model_uri,
                "files": [vars(o) for o in self.model_location.files],
            },
            "sfm": None if self.sfm is None else vars(self.sfm),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NVSScene:
        """The scene `to_dict` wrote (the ``nvs/scene`` asset's value)."""
        location, model, sfm = data.get("model_location"), data.get("model"), data.get("sfm")
        return cls(
            scene_id=data["scene_id"],
            repository=data["repository"],
            ref=data.get("ref", ""),
            commit_id=data["commit_id"],
            images=[ObjectRef(**o) for o in data.get("images") or []],
            model_files=[ObjectRef(**o) for o in data.get("model_files") or []],
            model=None if not model else ModelSummary(**model),
            missing_images=list(data.get("missing_images") or []),
            problems=dict(data.get("problems") or {}),
            model_location=None
            if not location
            else ModelLocation(
                source=location["source"],
                branch=location["branch"],
                commit_id=location["commit_id"],
                prefix=location["prefix"],
                files=[ObjectRef(**o) for o in location.get("files") or []],
            ),
            sfm=None if not sfm else SfMSummary(**sfm),
        )


#: What Pillow may open a photo as: the formats the scene layout names (`IMAGE_SUFFIXES`). A
#: TIFF, GIF or BMP named ``.png`` would otherwise be decoded by a plugin with other memory needs.
PHOTO_FORMATS = ("PNG", "JPEG")  # JPEG opens a camera's MPO (a JPEG with a preview) too
#: The metadata a JPEG may carry before its image data: Pillow keeps every APPn segment in memory
#: and walks the segments in Python, so both their bytes and their number are bounded.
MAX_JPEG_HEADER_BYTES = 16 << 20
MAX_JPEG_SEGMENTS = 4096
_SEQUENTIAL_SOF = (0xC0, 0xC1)  # baseline and extended sequential Huffman frames
_STANDALONE = (0x01, *range(0xD0, 0xD9))  # TEM, RSTn, SOI: markers with no length


def _jpeg_layout(path: Path) -> bool | str:
    """Whether libjpeg must buffer a JPEG's coefficients, or why its header is refused.

    A JPEG whose first scan does not hold every component (a multi-scan sequential file), or
    whose frame is not sequential (progressive above all), is decoded through a buffer of every
    DCT coefficient, 2 bytes each, before a pixel comes out. The walk reads segment headers only
    (APPn bodies are skipped). False for a file that is not a JPEG at all.
    """
    with path.open("rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False
        components, buffered = 0, True
        for _ in range(MAX_JPEG_SEGMENTS):
            marker = f.read(2)
            while len(marker) == 2 and marker == b"\xff\xff":
                marker = marker[1:] + f.read(1)  # fill bytes
            if len(marker) < 2 or marker[0] != 0xFF:
                return True  # no scan found: Pillow's decoder says what is wrong
            code = marker[1]
            if code in _STANDALONE:
                continue
            length = int.from_bytes(f.read(2), "big")
            if code == 0xDA:  # start of scan
                in_scan = f.read(1)
                return buffered or not in_scan or in_scan[0] < components
            if 0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):  # a frame header
                frame = f.read(max(length - 2, 0))
                components = frame[5] if len(frame) > 5 else 0
                buffered = code not in _SEQUENTIAL_SOF
                continue
            f.seek(max(length - 2, 0), 1)
            if f.tell() > MAX_JPEG_HEADER_BYTES:
                return (
                    f"holds over {MAX_JPEG_HEADER_BYTES >> 20} MiB of metadata before its image "
                    "data (refused before decoding)"
                )
    return f"holds over {MAX_JPEG_SEGMENTS:,} metadata segments (refused before decoding)"


def _coefficient_bytes(image: Image.Image) -> int:
    """The bytes of libjpeg's whole-image coefficient buffer for the JPEG ``image``.

    Each component holds 64 coefficients of 2 bytes per 8 x 8 block of its (subsampled) plane,
    rounded up to whole MCUs, as libjpeg allocates it (``jdcoefct.c``).
    """
    layers: list[tuple[int, int, int, int]] = getattr(image, "layer", [])
    if not layers:
        return 0
    width, height = image.size
    h_max = max(1, *(h for _, h, _, _ in layers))
    v_max = max(1, *(v for _, _, v, _ in layers))
    total = 0
    for _, h, v, _ in layers:
        h, v = max(h, 1), max(v, 1)
        across = _ceil(_ceil(width * h, 8 * h_max), h) * h
        down = _ceil(_ceil(height * v, 8 * v_max), v) * v
        total += across * down * 64 * 2
    return total


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def image_problem(path: Path, limits: CheckLimits | None = None) -> str | None:
    """Why the photo at ``path`` cannot be trained on, or None: it must decode completely.

    ``Image.verify`` reads the header and checksums only: a JPEG truncated to a third, or with
    garbage after its header, passes it. So the photo is decoded whole, after what decoding it
    holds is checked against ``limits.max_photo_pixels`` (a header may claim any size): its
    pixels, plus, for a progressive or multi-scan JPEG, libjpeg's coefficient buffer counted in
    pixels of 4 bytes (a progressive 4:4:4 RGB JPEG counts 2.5 pixels a pixel).
    """
    limits = limits or CheckLimits()
    try:
        buffered = _jpeg_layout(path)
        if isinstance(buffered, str):
            return buffered
        with Image.open(path, formats=PHOTO_FORMATS) as image:
            width, height = image.size
            if width < 1 or height < 1:
                return f"has no pixels ({width} x {height})"
            cost = width * height
            coefficients = _coefficient_bytes(image) if buffered else 0
            if cost + coefficients // 4 > limits.max_photo_pixels:
                extra = (
                    f" (counted as {cost + coefficients // 4:,} px with the DCT coefficients a "
                    "progressive or multi-scan JPEG buffers)"
                    if coefficients
                    else ""
                )
                return (
                    f"{width:,} x {height:,} px{extra} is over the photo budget of "
                    f"{limits.max_photo_pixels:,} pixels (refused before decoding)"
                )
            image.load()
    except Image.DecompressionBombError as exc:
        return f"refused before decoding: {exc}"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
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


def _camera_problem(camera: Camera) -> str | None:
    """Why a camera's intrinsics cannot be trained with, or None."""
    fx, fy = camera.focal
    if camera.width < 1 or camera.height < 1:
        return f"camera {camera.camera_id} is {camera.width} x {camera.height} px"
    if not all(math.isfinite(v) for v in camera.params):
        return f"camera {camera.camera_id} has non-finite parameters {list(camera.params)}"
    if fx <= 0 or fy <= 0:
        return f"camera {camera.camera_id} has focal length {fx:g}, {fy:g} px (must be > 0)"
    return None


def model_problems(model: ColmapModel) -> list[str]:
    """What makes a readable model unusable for training.

    Zero registered images, an unsupported camera model, intrinsics that are not positive and
    finite, poses or points that are not finite, an image whose camera is missing.
    """
    problems: list[str] = []
    if not model.images:
        problems.append("the COLMAP model has zero registered images")
    for camera in model.cameras.values():
        problem = _camera_problem(camera)
        if problem is not None:
            problems.append(problem)
    bad_poses = [
        image.name
        for image in model.images
        if not (np.isfinite(image.rotation).all() and np.isfinite(image.translation).all())
    ]
    if bad_poses:
        problems.append(
            f"{len(bad_poses)} image(s) have non-finite poses: {', '.join(bad_poses[:5])}"
        )
    orphans = sorted({i.camera_id for i in model.images} - set(model.cameras))
    if orphans:
        problems.append(f"images refer to missing camera(s) {orphans}")
    bad_points = int((~np.isfinite(model.points).all(axis=1)).sum()) if len(model.points) else 0
    if bad_points:
        problems.append(f"{bad_points} 3D point(s) have non-finite coordinates")
    unsupported = sorted(
        {c.model for c in model.cameras.values()} - set(PINHOLE_MODELS) - set(RADIAL_MODELS)
    )
    if unsupported:
        problems.append(
            f"unsupported camera model(s) {', '.join(unsupported)} "
            f"(supported: {', '.join(PINHOLE_MODELS + RADIAL_MODELS)})"
        )
    return problems


def read_nvs_scene(
    store: VersionedStore, ref: str, scene_id: str, limits: CheckLimits | None = None
) -> NVSScene:
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
    location: ModelLocation | None = None
    missing: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nvs-scene-") as tmp:
        for image in images:
            try:  # the download checks the object's bytes
                local = store.download(commit_id, image.path, Path(tmp) / "image")
            except CorruptObjectError as exc:
                problems[image.path] = str(exc).removeprefix(f"{image.path}: ")
                continue
            problem = image_problem(local, limits)
            if problem:
                problems[image.path] = problem
        model_dir = Path(tmp) / "sparse"
        for obj in model_files:
            try:
                store.download(commit_id, obj.path, model_dir / obj.path[len(paths.sparse) :])
            except CorruptObjectError as exc:
                problems[paths.sparse] = str(exc)
        fmt = model_format([o.path[len(paths.sparse) :] for o in model_files])
        if fmt is None and model_files:
            found = ", ".join(sorted(o.path[len(paths.sparse) :] for o in model_files))
            problems[paths.sparse] = (
                "incomplete: no complete COLMAP model (cameras, images, points3D as .bin or "
                f".txt); found {found}"
            )
        elif fmt is None:
            pass  # photos only: structure-from-motion can pose them (`core.nvs.recover`)
        elif paths.sparse in problems:
            pass  # a model file is damaged in the store: reading it would read what is left
        else:
            try:
                model = read_model(model_dir)
            except ValueError as exc:
                problems[paths.sparse] = str(exc).removeprefix(f"{model_dir}: ")
            else:
                summary = summarise_model(model, fmt)
                found = model_problems(model)
                if found:
                    problems[paths.sparse] = "; ".join(found)
                else:
                    location = ModelLocation("scene", ref, commit_id, paths.sparse, model_files)
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
        model_location=location,
    )


def check_nvs_scene(scene: NVSScene) -> list[CheckOutcome]:
    """The raw-scene checks: files present and readable; model readable, every image present.

    A scene with photos and no model at all passes the model check before structure-from-motion
    has run (`NVSScene.needs_sfm`: the photos are valid input); once `core.nvs.recover` has
    run, the check says what it recovered, or fails with its error.
    """
    paths = scene.paths
    file_problems = {p: v for p, v in scene.problems.items() if p != paths.sparse}
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
    model_problem = scene.problems.get(paths.sparse)
    reasons = [f"{paths.sparse}: {model_problem}"] if model_problem else []
    if scene.missing_images:
        shown = ", ".join(scene.missing_images[:10])
        reasons.append(
            f"{len(scene.missing_images)} registered image(s) missing from {paths.images}: {shown}"
        )
    if not reasons and scene.model_location is None and not scene.needs_sfm:
        reasons.append(
            f"{paths.sparse}: no COLMAP model, and structure-from-motion cannot run until every "
            "photo is readable"
            if scene.images
            else f"{paths.sparse}: no COLMAP model, and no photos to recover one from"
        )
    metadata: dict[str, Any] = {"missing_images": list(scene.missing_images)}
    if scene.model is not None:
        metadata |= {
            "registered_images": scene.model.registered_images,
            "points": scene.model.points,
            "camera_models": scene.model.camera_models,
        }
    location = scene.model_location
    if location is not None:
        metadata |= {
            "model_source": location.source,
            "model_uri": lakefs_uri(scene.repository, location.commit_id, location.prefix),
        }
    if reasons:
        description = "; ".join(reasons)
    elif scene.model is None or location is None:
        description = (
            f"no COLMAP model under {paths.sparse}: structure-from-motion will pose the "
            f"{len(scene.images)} photos"
        )
    elif location.source == "sfm" and scene.sfm is not None:
        description = (
            f"no COLMAP model under {paths.sparse}; structure-from-motion registered "
            f"{scene.sfm.registered_images} of {scene.sfm.images} photos ({scene.model.points} "
            f"points), model on {location.branch} at {location.commit_id[:12]}"
        )
    else:
        description = (
            f"COLMAP model ({scene.model.format}) with {scene.model.registered_images} registered "
            f"images and {scene.model.points} points; every registered image is present"
        )
    model = CheckOutcome(
        name=MODEL_CHECK, passed=not reasons, description=description, metadata=metadata
    )
    return [files, model]


def materialize_nvs_scene(
    store: VersionedStore, scene: NVSScene | Mapping[str, Any], dest: Path
) -> tuple[Path, Path]:
    """Download a scene's photos and model, each at its pinned commit, into ``dest``.

    ``scene`` is the ``nvs/scene`` asset's value (or its `NVSScene.to_dict` form). Photos come
    from the scene's commit; the model from its ``model_location`` (the same commit, or the
    outputs commit SfM published it in). Returns ``(dest / "sparse" / "0", dest / "images")``;
    raises `SceneError` when the record has no usable model.
    """
    if not isinstance(scene, NVSScene):
        scene = NVSScene.from_dict(scene)
    location = scene.model_location
    if location is None:
        problems = scene.problems or "none found"
        raise SceneError(f"nvs/{scene.scene_id}: no usable COLMAP model recorded ({problems})")
    model_dir, images_dir = dest / "sparse" / "0", dest / "images"
    for image in scene.images:
        store.download(scene.commit_id, image.path, images_dir / image.path.rsplit("/", 1)[-1])
    prefix = location.prefix
    files = [o.path for o in location.files] or [
        o.path for o in store.list(location.commit_id, prefix)
    ]
    for path in files:
        store.download(location.commit_id, path, model_dir / path[len(prefix) :])
    return model_dir, images_dir


def validate_local_nvs(src: Path, limits: CheckLimits | None = None) -> list[str]:
    """Problems with a local NVS scene folder (empty list: ready to ingest)."""
    problems: list[str] = []
    image_dir = src / "images"
    names = {
        p.name for p in image_dir.glob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }
    if not names:
        problems.append(f"{image_dir}: missing or holds no .png/.jpg photos")
    for name in sorted(names):
        problem = image_problem(image_dir / name, limits)
        if problem:
            problems.append(f"{image_dir / name}: {problem}")
    sparse = src / "sparse" / "0"
    if not (src / "sparse").exists():
        return problems  # photos only: nvs/scene poses them with structure-from-motion
    if not sparse.is_dir():
        problems.append(f"{sparse}: missing (sparse/ holds no model 0)")
        return problems
    try:
        model = read_model(sparse)
    except ValueError as exc:
        problems.append(str(exc))
        return problems
    problems += [f"{sparse}: {problem}" for problem in model_problems(model)]
    missing = sorted(i.name for i in model.images if i.name not in names)
    if missing:
        problems.append(
            f"{image_dir}: {len(missing)} registered image(s) missing: {', '.join(missing[:10])}"
        )
    return problems
