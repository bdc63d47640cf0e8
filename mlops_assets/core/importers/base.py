"""What every dataset importer shares: found pairs, converted scenes, scene ids, the commit.

An import runs in three steps, and nothing reaches the store until the last:

1. `DatasetFormat.discover` walks the dataset root and pairs the files of each scene (a missing
   split or label folder, or names that do not pair up, stop the import naming the file);
2. `prepare_import` converts every pair into a scene folder (``pre.tif``, ``post.tif``,
   ``label.tif`` and ``scene.json``) and checks it as ``ingest`` would; the first bad scene stops
   the import with one line naming its file and the problem;
3. `commit_import` uploads every scene and commits them together, in one commit whose metadata
   says it is an import (``source: mlops-assets import <format>``, the scene count), so the
   sensors can treat it as one batch.
"""

from __future__ import annotations

import abc
import datetime as dt
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from mlops_assets.core.scenes.cd import validate_local_cd
from mlops_assets.core.scenes.checks import CheckLimits
from mlops_assets.core.scenes.ingest import ProgressCallback, UploadPlan, ingest_scenes
from mlops_assets.core.scenes.layout import (
    CDPaths,
    SceneError,
    SceneKind,
    scene_id_problem,
)
from mlops_assets.core.scenes.manifest import MANIFEST_NAME
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.types import Commit

#: Commit metadata value of ``source`` for an import: ``mlops-assets import <format>``.
IMPORT_SOURCE = "mlops-assets import"


class DatasetImportError(SceneError):
    """A dataset root that cannot be imported; the message names the file and the problem."""


@dataclass(frozen=True)
class SourcePair:
    """The files of one scene in a dataset, before conversion."""

    scene_id: str
    split: str
    name: str  # the scene's name in the dataset (a crop's file stem, a city)
    pre: tuple[Path, ...]  # one image, or one file per band
    post: tuple[Path, ...]
    label: Path | None
    root: Path  # the dataset root the files were found under
    dates: tuple[str, str] | None = None

    def original(self, path: Path) -> str:
        """``path`` as the dataset names it: relative to its root."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    @property
    def originals(self) -> dict[str, str]:
        """Role -> original file (the first band's folder for a file per band)."""
        found = {"pre": self.original(self.pre[0]), "post": self.original(self.post[0])}
        if len(self.pre) > 1:
            found = {
                "pre": self.original(self.pre[0].parent),
                "post": self.original(self.post[0].parent),
            }
        if self.label is not None:
            found["label"] = self.original(self.label)
        return found


@dataclass(frozen=True)
class ConvertedScene:
    """A scene folder ready to upload, and what the summary says about it."""

    scene_id: str
    split: str
    folder: Path
    width: int
    height: int
    bands: int
    dtype: str
    grid: str
    changed_pixels: int
    labelled_pixels: int

    @property
    def plan(self) -> UploadPlan:
        """Where each file of the folder goes."""
        paths = CDPaths(self.scene_id)
        targets = [
            ("pre.tif", paths.pre),
            ("post.tif", paths.post),
            ("label.tif", paths.label),
            (MANIFEST_NAME, paths.manifest),
        ]
        files = [(self.folder / n, t) for n, t in targets if (self.folder / n).exists()]
        return UploadPlan(SceneKind.CD, self.scene_id, files)


#: Largest image an import decodes whole, in pixels: a bound on its memory (LEVIR-CD's crops are
#: 1024 x 1024, OSCD's cities at most about 1200 x 1200 at 10 m).
MAX_PIXELS = 8192 * 8192


def check_decodable(path: Path, width: int, height: int) -> None:
    """Refuse an image an import would have to decode whole beyond `MAX_PIXELS`."""
    if width * height > MAX_PIXELS:
        raise DatasetImportError(
            f"{path}: {width}x{height} px is too large to import (an import decodes each image "
            f"whole, at most {MAX_PIXELS:,} px); cut it into crops or ingest it as a scene"
        )


def read_rgb_image(path: Path) -> NDArray[Any]:
    """An image as uint8 [3, H, W] (as TorchGeo reads LEVIR: converted to RGB)."""
    try:
        with Image.open(path) as image:
            check_decodable(path, image.width, image.height)
            array = np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as exc:
        if isinstance(exc, DatasetImportError):
            raise
        raise DatasetImportError(f"{path}: not a readable image ({exc})") from exc
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def read_label_image(path: Path) -> NDArray[Any]:
    """A label image's values [H, W] (colour or palette labels read as grey, as TorchGeo does)."""
    try:
        with Image.open(path) as image:
            check_decodable(path, image.width, image.height)
            grey = image if image.mode in ("L", "I", "I;16") else image.convert("L")
            return np.asarray(grey)
    except (OSError, ValueError) as exc:
        if isinstance(exc, DatasetImportError):
            raise
        raise DatasetImportError(f"{path}: not a readable image ({exc})") from exc


class DatasetFormat(abc.ABC):
    """One dataset's on-disk layout: how to find its pairs and turn each into a scene."""

    name: str  # as typed after ``mlops-assets import``
    splits: tuple[str, ...]
    default_prefix: str

    @abc.abstractmethod
    def present_splits(self, root: Path) -> list[str]:
        """The splits ``root`` holds (what an import without ``--split`` takes)."""

    @abc.abstractmethod
    def discover(self, root: Path, splits: Sequence[str], prefix: str) -> list[SourcePair]:
        """Every pair of the requested splits, in a stable order; raise `DatasetImportError`."""

    @abc.abstractmethod
    def convert(self, pair: SourcePair, folder: Path) -> ConvertedScene:
        """Write ``pair`` as a scene folder; raise `DatasetImportError` naming the bad file."""


def scene_id_for(prefix: str, split: str, name: str, where: Path) -> str:
    """``<prefix><split>-<name>``, lower-cased, other characters as ``-``; checked.

    A name that already starts with the split (TorchGeo's ``A/train_1.png``) keeps it once.
    """
    stem = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")
    for sep in ("_", "-"):
        if stem.startswith(split + sep):
            stem = stem[len(split) + 1 :]
    scene_id = f"{prefix}{split}-{stem}" if stem else f"{prefix}{split}"
    problem = scene_id_problem(scene_id)
    if problem is not None:
        raise DatasetImportError(
            f"{where}: cannot name its scene {scene_id!r} ({problem}); choose another --prefix"
        )
    return scene_id


def check_unique(pairs: Sequence[SourcePair]) -> None:
    """Refuse two pairs that would become the same scene."""
    seen: dict[str, SourcePair] = {}
    for pair in pairs:
        other = seen.setdefault(pair.scene_id, pair)
        if other is not pair:
            raise DatasetImportError(
                f"{pair.pre[0]}: its scene id {pair.scene_id!r} is also that of {other.pre[0]}"
            )


def prepare_import(
    dataset: DatasetFormat,
    root: Path,
    splits: Sequence[str],
    prefix: str,
    work: Path,
    on_scene: Callable[[ConvertedScene], None] | None = None,
    on_found: Callable[[int], None] | None = None,
    limits: CheckLimits | None = None,
) -> list[ConvertedScene]:
    """Discover, convert and check every scene of ``splits`` under ``work``; nothing is stored.

    The converted scenes are checked with ``limits``, as ``ingest`` checks a folder (the
    pixel budget of ``MLOPS_MAX_PIXELS`` or ``--max-pixels``); decoding a source image whole is
    bounded by `MAX_PIXELS` in any case. Raises `DatasetImportError` at the first problem, naming
    the file.
    """
    if not root.is_dir():
        raise DatasetImportError(f"{root}: not a directory")
    unknown = [s for s in splits if s not in dataset.splits]
    if unknown:
        raise DatasetImportError(
            f"{dataset.name} has no split {unknown[0]!r}; "
            f"its splits are {', '.join(dataset.splits)}"
        )
    if not splits:
        splits = dataset.present_splits(root)
        if not splits:
            raise DatasetImportError(
                f"{root}: no {dataset.name} split found (looked for {', '.join(dataset.splits)}; "
                "see `mlops-assets import --help` for the layout)"
            )
    pairs = dataset.discover(root, splits, prefix)
    if not pairs:
        raise DatasetImportError(f"{root}: no {dataset.name} scene found")
    check_unique(pairs)
    if on_found is not None:
        on_found(len(pairs))
    scenes: list[ConvertedScene] = []
    for pair in pairs:
        scene = dataset.convert(pair, work / pair.scene_id)
        problems = validate_local_cd(scene.folder, limits, pixel_grid=scene.grid == "pixel")
        if problems:
            raise DatasetImportError(
                f"{pair.pre[0]}: the converted scene is not valid: {problems[0]}"
            )
        scenes.append(scene)
        if on_scene is not None:
            on_scene(scene)
    return scenes


@dataclass(frozen=True)
class ImportSummary:
    """What an import brought in, for the command's last lines."""

    format: str
    scenes: int
    per_split: dict[str, int]
    sizes: dict[str, int]  # "WxH" -> scenes, most common first
    bands: str  # e.g. "3 x uint8"
    grid: str
    changed_percent: float | None
    without_change: int
    first: str
    last: str
    notes: list[str] = field(default_factory=lambda: list[str]())

    def lines(self) -> list[str]:
        """A few human lines."""
        splits = ", ".join(f"{split} {n}" for split, n in self.per_split.items())
        sizes = ", ".join(f"{size} ({n})" for size, n in list(self.sizes.items())[:4])
        change = (
            "no labels"
            if self.changed_percent is None
            else f"{self.changed_percent:.2f}% of labelled pixels changed; "
            f"{self.without_change} scene(s) without change"
        )
        return [
            f"{self.scenes} {self.format} scenes ({splits}): {self.first} .. {self.last}",
            f"  sizes {sizes}; bands {self.bands}; grid {self.grid}",
            f"  {change}",
        ]


def summarise(dataset: DatasetFormat, scenes: Sequence[ConvertedScene]) -> ImportSummary:
    """Counts per split, sizes, bands and label balance of the converted scenes."""
    labelled = sum(s.labelled_pixels for s in scenes)
    changed = sum(s.changed_pixels for s in scenes)
    kinds = Counter(f"{s.bands} x {s.dtype}" for s in scenes)
    ids = sorted(s.scene_id for s in scenes)
    return ImportSummary(
        format=dataset.name,
        scenes=len(scenes),
        per_split=dict(Counter(s.split for s in scenes)),
        sizes=dict(Counter(f"{s.width}x{s.height}" for s in scenes).most_common()),
        bands=", ".join(kinds),
        grid=", ".join(sorted({s.grid for s in scenes})),
        changed_percent=100.0 * changed / labelled if labelled else None,
        without_change=sum(1 for s in scenes if s.labelled_pixels and not s.changed_pixels),
        first=ids[0],
        last=ids[-1],
    )


def commit_import(
    store: VersionedStore,
    branch: str,
    dataset: DatasetFormat,
    root: Path,
    scenes: Sequence[ConvertedScene],
    progress: ProgressCallback | None = None,
    message: str | None = None,
) -> Commit:
    """Upload every converted scene and commit them in one commit (see `ingest_scenes`).

    Raises `mlops_assets.core.store.types.NoChangesError` when the branch already holds exactly
    these scenes.
    """
    splits = sorted({s.split for s in scenes})
    metadata = {
        "source": f"{IMPORT_SOURCE} {dataset.name}",
        "import_format": dataset.name,
        "import_root": str(root.resolve()),
        "import_splits": ",".join(splits),
        "import_scene_count": str(len(scenes)),
        "ingested_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    return ingest_scenes(
        store,
        branch,
        [scene.plan for scene in scenes],
        message or f"Import {len(scenes)} {dataset.name} scenes ({', '.join(splits)})",
        metadata,
        progress,
    )
