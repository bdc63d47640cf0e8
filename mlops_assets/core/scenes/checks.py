"""Check outcomes, check limits and scene fingerprints, independent of any orchestrator."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

#: Default raster budget: far above any real scene (46,340 px square), far below a hostile one.
MAX_RASTER_PIXELS = 2**31
#: Default photo budget. A photo is decoded whole and Pillow holds every mode it decodes a PNG or
#: JPEG to in 4 bytes a pixel (RGB too), so 2^26 px (a 67 MP photo) is 256 MiB; with the checking
#: process's own 130 MB that peaks at 383 MB (benchmarks: adversarial-rss), under the 512 MB bound.
MAX_PHOTO_PIXELS = 2**26
#: Default block bound: GDAL holds a decoded block about 2.5 times over while rasterio copies it
#: out (a 256 MiB block peaked at 718 MB, a 64 MiB one at 286 MB), so 64 MiB keeps the worst
#: legal block under the 512 MB bound.
MAX_BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class CheckLimits:
    """How much a check may decode, hold and spend on one file before it refuses it.

    The budgets are tested before anything is decoded, so a hostile header (a sparse
    1,000,000 x 1,000,000 px GeoTIFF of 11 MB) is refused in milliseconds.
    """

    max_raster_pixels: int = MAX_RASTER_PIXELS  # width x height of a GeoTIFF
    max_photo_pixels: int = MAX_PHOTO_PIXELS  # width x height of a photo
    max_block_bytes: int = MAX_BLOCK_BYTES  # one GeoTIFF block (all bands), decoded at once
    decode_chunk_bytes: int = 64 << 20  # what one windowed read of a decode pass may return
    gdal_cache_mb: int = 64  # GDAL's block cache while checking (its default is 5 % of RAM)
    seconds_per_file: float = 900.0  # wall-clock bound of one file's decode pass

    @classmethod
    def with_max_pixels(cls, max_pixels: int | None) -> CheckLimits:
        """The defaults, with both pixel budgets set to ``max_pixels`` when it is given."""
        limits = cls()
        if max_pixels is None:
            return limits
        return replace(limits, max_raster_pixels=max_pixels, max_photo_pixels=max_pixels)

    def deadline(self) -> float:
        """The `time.monotonic` value a check started now must finish by."""
        return time.monotonic() + self.seconds_per_file


@dataclass(frozen=True)
class CheckOutcome:
    """One check on one scene: passed or not, why, and figures worth showing."""

    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=lambda: dict[str, Any]())


def content_hash(files: Iterable[tuple[str, str]], problems: Mapping[str, str]) -> str:
    """A fingerprint of a scene's own files (path, checksum) and problems.

    Used as the scene asset's data version: a commit that changes other scenes leaves it equal.
    """
    digest = hashlib.sha256()
    for path, checksum in files:
        digest.update(f"{path}\0{checksum}\n".encode())
    for path, problem in sorted(problems.items()):
        digest.update(f"{path}\0{problem}\n".encode())
    return digest.hexdigest()[:16]


def failures(outcomes: list[CheckOutcome]) -> list[CheckOutcome]:
    """The outcomes that did not pass."""
    return [o for o in outcomes if not o.passed]
