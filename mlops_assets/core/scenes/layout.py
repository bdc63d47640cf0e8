"""Where scenes live inside a repository; the same layout in every store.

::

    cd/<scene_id>/pre.tif             change detection: the earlier image
    cd/<scene_id>/post.tif            the later image (any CRS / resolution overlapping pre)
    cd/<scene_id>/label.tif           optional: 1 change, 0 no change, nodata allowed
    cd/<scene_id>/scene.json          optional manifest; {"grid": "pixel"} declares a scene
                                      without georeferencing (same-size CRS-less GeoTIFFs)
    nvs/<scene_id>/images/<name>.png  novel-view synthesis: the photos (.png / .jpg / .jpeg)
    nvs/<scene_id>/sparse/0/...       the COLMAP model: cameras, images, points3D (.bin or .txt)
    _writes/<kind>/<scene_id>.json    who wrote the scene last (`write_marker`), outside every
                                      scene prefix: not part of the scene

Scene ids match ``[a-z0-9][a-z0-9_-]{0,62}`` so they are safe as path segments, Dagster partition
keys and lakeFS branch-name parts.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path

SCENE_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
COLMAP_FILES = ("cameras", "images", "points3D")
#: Where the writers of scenes leave their markers (`write_marker`); never a scene kind.
WRITES_PREFIX = "_writes/"


class SceneError(ValueError):
    """A scene is missing, malformed or unreadable; the message names the scene and the file."""


class SceneKind(enum.StrEnum):
    """The two families of scenes."""

    CD = "cd"
    NVS = "nvs"


def scene_id_problem(scene_id: str) -> str | None:
    """Why ``scene_id`` is not a valid scene id, or None if it is."""
    if not scene_id:
        return "it is empty"
    if ".." in scene_id:
        return "it contains '..'"
    if "/" in scene_id or "\\" in scene_id:
        return "it contains a path separator"
    if len(scene_id) > 63:
        return f"it is {len(scene_id)} characters long (at most 63)"
    if scene_id != scene_id.lower():
        return "it contains upper-case letters"
    if not SCENE_ID_RE.fullmatch(scene_id):  # match() with ``$`` accepts a trailing newline
        return "it must start with a-z or 0-9 and contain only a-z, 0-9, '_' and '-'"
    return None


def validate_scene_id(scene_id: str) -> str:
    """Return ``scene_id`` if valid, else raise `SceneError` saying why."""
    problem = scene_id_problem(scene_id)
    if problem is not None:
        raise SceneError(f"invalid scene id {scene_id!r}: {problem}")
    return scene_id


def scene_prefix(kind: SceneKind, scene_id: str) -> str:
    """The repository prefix holding one scene, ending with ``/``."""
    return f"{kind.value}/{validate_scene_id(scene_id)}/"


def write_marker(kind: SceneKind, scene_id: str) -> str:
    """``_writes/<kind>/<scene_id>.json``: the object every writer of the scene rewrites.

    Each ingest commits it beside the scene's files with content of its own (its branch and a
    random nonce), so any two writers of one scene, started from the same commit, have both
    changed this path and their merges conflict, on lakeFS as on the embedded store, even when
    their folders differ in different files. It lies outside the scene's prefix, so listing,
    reading, checking or exporting a scene never meets it, and the commit sensor counts it
    among the paths outside every scene (`scene_of_path` is None for it).
    """
    return f"{WRITES_PREFIX}{kind.value}/{validate_scene_id(scene_id)}.json"


@dataclass(frozen=True)
class CDPaths:
    """Object paths of a change-detection scene."""

    scene_id: str

    @property
    def prefix(self) -> str:
        """The scene's prefix."""
        return scene_prefix(SceneKind.CD, self.scene_id)

    @property
    def pre(self) -> str:
        """The earlier image."""
        return self.prefix + "pre.tif"

    @property
    def post(self) -> str:
        """The later image."""
        return self.prefix + "post.tif"

    @property
    def label(self) -> str:
        """The optional change label."""
        return self.prefix + "label.tif"

    @property
    def manifest(self) -> str:
        """The optional scene manifest (`mlops_assets.core.scenes.manifest`)."""
        return self.prefix + "scene.json"


@dataclass(frozen=True)
class NVSPaths:
    """Object paths of a novel-view-synthesis scene."""

    scene_id: str

    @property
    def prefix(self) -> str:
        """The scene's prefix."""
        return scene_prefix(SceneKind.NVS, self.scene_id)

    @property
    def images(self) -> str:
        """Prefix of the photos."""
        return self.prefix + "images/"

    @property
    def sparse(self) -> str:
        """Prefix of the COLMAP model."""
        return self.prefix + "sparse/0/"


@dataclass(frozen=True)
class SceneListing:
    """The scene directories found at a ref: valid ids, and the others with the reason."""

    valid: list[str] = field(default_factory=lambda: list[str]())
    invalid: dict[str, str] = field(default_factory=lambda: dict[str, str]())


def scene_of_path(path: str) -> tuple[SceneKind, str] | None:
    """The scene an object path belongs to, or None if it is outside every valid scene."""
    parts = path.split("/", 2)
    if len(parts) < 3 or parts[0] not in (SceneKind.CD.value, SceneKind.NVS.value):
        return None
    if scene_id_problem(parts[1]) is not None:
        return None
    return SceneKind(parts[0]), parts[1]


def split_listing(prefixes: list[str], kind: SceneKind) -> SceneListing:
    """Turn the common prefixes under ``<kind>/`` into a `SceneListing`."""
    listing = SceneListing()
    for prefix in prefixes:
        name = prefix.removeprefix(f"{kind.value}/").rstrip("/")
        problem = scene_id_problem(name)
        if problem is None:
            listing.valid.append(name)
        else:
            listing.invalid[name] = problem
    listing.valid.sort()
    return listing


def local_nvs_files(src: Path) -> list[str]:
    """Relative paths of the photos and model files in a local scene folder.

    Symbolic links are listed too (whatever they point to), so that the ingest can refuse them.
    """
    images = sorted(
        f"images/{p.name}"
        for p in (src / "images").glob("*")
        if (p.is_file() or p.is_symlink()) and p.suffix.lower() in IMAGE_SUFFIXES
    )
    sparse = src / "sparse" / "0"
    model = sorted(f"sparse/0/{p.name}" for p in sparse.glob("*") if p.is_file() or p.is_symlink())
    return images + model
