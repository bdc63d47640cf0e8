"""The scene manifest: a small JSON file in a change-detection scene folder saying what it is.

``cd/<scene_id>/scene.json`` is optional. Without it a scene is georeferenced: its GeoTIFFs carry a
CRS, and post may be on any grid that overlaps pre. With ``"grid": "pixel"`` the scene declares
that it has no georeferencing (PNG crops of the public change-detection benchmarks, TorchGeo's
OSCD fixtures): pre, post and label are CRS-less GeoTIFFs of the same size, compared pixel for
pixel, and areas are counted in pixels. The other fields record where an imported scene came
from and how it was converted (bands, dates, reflectance scaling, label encoding), for lineage.

Example::

    {"version": 1, "grid": "pixel", "source": "levir-cd", "split": "train",
     "original": {"pre": "A/train_1.png", "post": "B/train_1.png", "label": "label/train_1.png"},
     "label_encoding": "0 no change, 255 change -> 0, 1"}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlops_assets.core.scenes.layout import SceneError

MANIFEST_NAME = "scene.json"
MANIFEST_VERSION = 1
#: A manifest is a few hundred bytes; anything much larger is not one (and is not read).
MAX_MANIFEST_BYTES = 64 * 1024

Grid = Literal["crs", "pixel"]
GRIDS: tuple[Grid, ...] = ("crs", "pixel")


@dataclass(frozen=True)
class SceneManifest:
    """What ``scene.json`` says about a scene."""

    grid: Grid = "crs"
    source: str = ""  # where the scene came from, e.g. "levir-cd", "oscd", "ingest"
    split: str | None = None  # the dataset split an imported scene belongs to
    original: dict[str, str] = field(default_factory=lambda: dict[str, str]())  # role -> file
    bands: list[str] = field(default_factory=lambda: list[str]())  # band names, in order
    dates: dict[str, str] = field(default_factory=lambda: dict[str, str]())  # "pre"/"post" -> date
    # Multiply stored values by this to get reflectance (Sentinel-2 L1C digital numbers: 1e-4).
    reflectance_scale: float | None = None
    label_encoding: str | None = None  # how the original label values were mapped to 0/1/255
    version: int = MANIFEST_VERSION

    @property
    def pixel_grid(self) -> bool:
        """Whether the scene is on a pixel grid (no CRS)."""
        return self.grid == "pixel"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return asdict(self)

    def to_json(self) -> str:
        """The file's content."""
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"

    def write(self, folder: Path) -> Path:
        """Write ``scene.json`` into ``folder``."""
        path = folder / MANIFEST_NAME
        path.write_text(self.to_json())
        return path

    @classmethod
    def parse(cls, content: bytes, name: str) -> SceneManifest:
        """Read a manifest; raise `SceneError` naming ``name`` and the problem."""
        if len(content) > MAX_MANIFEST_BYTES:
            raise SceneError(f"{name}: {len(content)} bytes, not a scene manifest (at most 64 KiB)")
        try:
            data = json.loads(content)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SceneError(f"{name}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise SceneError(f"{name}: expected a JSON object")
        values: dict[str, Any] = dict(data)  # pyright: ignore[reportUnknownArgumentType]
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise SceneError(f"{name}: unknown field(s) {', '.join(unknown)}")
        if values.get("grid", "crs") not in GRIDS:
            raise SceneError(f"{name}: grid must be one of {', '.join(GRIDS)}")
        if int(values.get("version", MANIFEST_VERSION)) > MANIFEST_VERSION:
            raise SceneError(
                f"{name}: manifest version {values['version']} is newer than this code reads "
                f"({MANIFEST_VERSION})"
            )
        try:
            return cls(**values)
        except TypeError as exc:
            raise SceneError(f"{name}: {exc}") from exc

    @classmethod
    def read(cls, folder: Path) -> SceneManifest | None:
        """The manifest in a local scene folder, or None if it has none."""
        path = folder / MANIFEST_NAME
        if not path.is_file():
            return None
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise SceneError(f"{path}: larger than 64 KiB, not a scene manifest")
        return cls.parse(path.read_bytes(), str(path))
