"""Structure-from-motion for photos without poses, with pycolmap on the CPU.

`run_sfm` runs COLMAP's classic pipeline: SIFT features, exhaustive matching with geometric
verification, incremental mapping. It keeps the reconstruction with the most registered images,
writes it as a binary model and reads it back as a `ColmapModel`. Too few registered images is an
`SfMError` whose message says how many of how many registered, and where.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import pycolmap

from mlops_assets.core.scenes.colmap import ColmapModel, read_model
from mlops_assets.core.scenes.layout import IMAGE_SUFFIXES

#: The camera model COLMAP fits by default: one focal length, principal point and one radial term.
DEFAULT_CAMERA_MODEL = "SIMPLE_RADIAL"


class SfMError(ValueError):
    """Structure-from-motion could not pose enough of the photos."""


@dataclass(frozen=True)
class SfMResult:
    """A recovered model and how it was obtained."""

    model: ColmapModel
    model_dir: Path  # the binary model (cameras.bin, images.bin, points3D.bin)
    num_images: int
    unregistered: list[str]
    seconds: float

    @property
    def registered(self) -> int:
        """How many photos have a pose."""
        return len(self.model.images)


def default_num_threads() -> int:
    """The CPUs this process may use (COLMAP's own default would take every core of the host)."""
    return max(1, len(os.sched_getaffinity(0)))


def image_names(image_dir: Path) -> list[str]:
    """The photos directly inside ``image_dir`` (.png, .jpg, .jpeg), sorted."""
    if not image_dir.is_dir():
        return []
    return sorted(
        p.name for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


@contextlib.contextmanager
def _colmap_log_level(level: int) -> Generator[None, None, None]:
    """COLMAP's glog threshold (0 info, 1 warning, 2 error) while the block runs."""
    previous = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = level
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = previous


def run_sfm(
    image_dir: Path,
    work_dir: Path,
    *,
    min_registered: int = 3,
    max_image_size: int | None = 1600,
    num_threads: int | None = None,
    camera_model: str = DEFAULT_CAMERA_MODEL,
    seed: int = 0,
    verbose: bool = False,
) -> SfMResult:
    """Pose the photos in ``image_dir``; write the model to ``work_dir/sparse/0``.

    Args:
        image_dir: The photos (only files directly inside it, .png/.jpg/.jpeg).
        work_dir: Scratch directory for COLMAP's database and reconstructions; the chosen model
            ends in ``work_dir/sparse/0`` (replaced if present).
        min_registered: Fewest registered photos accepted (at least 2).
        max_image_size: Longest side SIFT sees, in pixels (None: full resolution).
        num_threads: CPU threads for every stage (None: the CPUs this process may use).
        camera_model: The COLMAP camera model fitted to each photo.
        seed: COLMAP's random seed (RANSAC, mapper).
        verbose: Let COLMAP log at INFO level (otherwise warnings and errors only).

    Raises:
        SfMError: No photos, or fewer than ``min_registered`` of them registered.
    """
    if min_registered < 2:
        raise ValueError(f"min_registered must be at least 2, got {min_registered}")
    names = image_names(image_dir)
    if not names:
        raise SfMError(f"SfM found no .png/.jpg photos in {image_dir}")
    if len(names) < min_registered:
        raise SfMError(
            f"SfM needs at least {min_registered} photos, {image_dir} holds {len(names)}"
        )
    threads = num_threads if num_threads is not None else default_num_threads()
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    database = work_dir / "database.db"
    started = time.perf_counter()
    pycolmap.set_random_seed(seed)

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = threads
    extraction.max_image_size = -1 if max_image_size is None else max_image_size
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads
    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.num_threads = threads
    mapping.random_seed = seed
    # Keep small models too, so that "registered 2 of 10" reports the real count; the threshold
    # is applied below to the largest reconstruction.
    mapping.min_model_size = 2
    with _colmap_log_level(0 if verbose else 1):
        pycolmap.extract_features(
            database,
            image_dir,
            image_names=names,
            camera_mode=pycolmap.CameraMode.AUTO,
            reader_options=reader,
            extraction_options=extraction,
            device=pycolmap.Device.cpu,
        )
        pycolmap.match_exhaustive(database, matching_options=matching, device=pycolmap.Device.cpu)
        reconstructions = pycolmap.incremental_mapping(
            database, image_dir, work_dir / "reconstructions", options=mapping
        )
    seconds = time.perf_counter() - started
    best = max(reconstructions.values(), key=lambda r: r.num_reg_images(), default=None)
    registered = 0 if best is None else int(best.num_reg_images())
    if best is None or registered < min_registered:
        raise SfMError(
            f"SfM registered {registered} of {len(names)} images in {image_dir}; "
            f"at least {min_registered} are needed"
        )
    model_dir = work_dir / "sparse" / "0"
    model_dir.mkdir(parents=True)
    best.write_binary(str(model_dir))
    model = read_model(model_dir)
    posed = {image.name for image in model.images}
    return SfMResult(
        model=model,
        model_dir=model_dir,
        num_images=len(names),
        unregistered=[name for name in names if name not in posed],
        seconds=seconds,
    )
