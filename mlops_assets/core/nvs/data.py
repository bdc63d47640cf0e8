"""Training views for Gaussian splatting from a COLMAP model and its image directory.

PINHOLE and SIMPLE_PINHOLE cameras are used as they are; SIMPLE_RADIAL and RADIAL images are
undistorted to a pinhole camera with COLMAP's own undistorter (pycolmap); every other camera model
is refused. Images are shrunk by an integer factor and then, if still larger, until their longer
side fits ``max_image_size``; the intrinsics are scaled by exactly the factors applied. Every n-th
image (sorted by name) is held out for evaluation, as in gsplat's simple_trainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pycolmap
import torch
from numpy.typing import NDArray
from PIL import Image
from torch import Tensor

from mlops_assets.core.nvs.config import NVSTrainConfig
from mlops_assets.core.nvs.gaussians import SceneFrame, scene_frame
from mlops_assets.core.scenes.colmap import PINHOLE_MODELS, RADIAL_MODELS, Camera, ColmapModel

SUPPORTED_MODELS = PINHOLE_MODELS + RADIAL_MODELS


class NVSDataError(ValueError):
    """The scene cannot be turned into training views; the message says why."""


@dataclass(frozen=True)
class NVSView:
    """One posed image, ready to render against."""

    name: str
    image: Tensor  # [H, W, 3] float32 in 0..1
    K: Tensor  # [3, 3] pinhole intrinsics at this image's size
    viewmat: Tensor  # [4, 4] world-to-camera (COLMAP convention: x_cam = R x_world + t)

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return int(self.image.shape[0])


@dataclass
class NVSDataset:
    """Training and held-out views, the sparse points, the scene frame and the background."""

    train: list[NVSView]
    test: list[NVSView]
    points: NDArray[np.float64]  # [N, 3] COLMAP world frame
    colours: NDArray[np.uint8]  # [N, 3]
    frame: SceneFrame
    background: tuple[float, float, float]
    undistorted_cameras: list[int] = field(default_factory=lambda: list[int]())
    notes: list[str] = field(default_factory=lambda: list[str]())

    @property
    def scene_scale(self) -> float:
        """simple_trainer's scene scale (camera extent)."""
        return self.frame.scale

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the first training view."""
        view = self.train[0]
        return view.width, view.height


def check_cameras(model: ColmapModel) -> None:
    """Raise `NVSDataError` for an empty model or a camera model that cannot be used."""
    if not model.images:
        raise NVSDataError("the COLMAP model has zero registered images: nothing to train on")
    used = {image.camera_id for image in model.images}
    for camera_id in sorted(used):
        camera = model.cameras.get(camera_id)
        if camera is None:
            raise NVSDataError(f"images refer to camera {camera_id}, which the model lacks")
        if camera.model not in SUPPORTED_MODELS:
            raise NVSDataError(
                f"camera {camera_id} uses the unsupported camera model {camera.model}; "
                f"supported: {', '.join(SUPPORTED_MODELS)} (radial ones are undistorted to "
                "pinhole)"
            )


def _undistort(
    array: NDArray[np.uint8],  # [H, W, 3]
    camera: Camera,
) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
    """COLMAP's undistortion of a radial camera's image: (pinhole image, its K)."""
    distorted = pycolmap.Camera(
        model=camera.model, width=camera.width, height=camera.height, params=list(camera.params)
    )
    bitmap, pinhole = pycolmap.undistort_image(
        pycolmap.UndistortCameraOptions(), pycolmap.Bitmap.from_array(array), distorted
    )
    fx, fy, cx, cy = (float(p) for p in pinhole.params)
    k = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return np.ascontiguousarray(bitmap.to_array()[..., :3], dtype=np.uint8), k


def _resize(
    array: NDArray[np.uint8],  # [H, W, 3]
    k: NDArray[np.float64],  # [3, 3]
    downscale: int,
    max_image_size: int | None,
) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
    height, width = array.shape[:2]
    factor = float(downscale)
    if max_image_size is not None:
        factor = max(factor, max(width, height) / max_image_size)
    if factor <= 1.0:
        return array, k
    new_w, new_h = max(1, round(width / factor)), max(1, round(height / factor))
    if max_image_size is not None:
        new_w, new_h = min(new_w, max_image_size), min(new_h, max_image_size)
    image = Image.fromarray(array).resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=3)
    scaled = k.copy()
    scaled[0] *= new_w / width  # fx and cx; pixel centres sit at +0.5, so scaling is exact
    scaled[1] *= new_h / height
    return np.asarray(image, dtype=np.uint8), scaled


def _border_background(views: Sequence[NVSView]) -> tuple[float, float, float]:
    """The images' border colour when nearly uniform (90% within 0.05 of the median), else black."""
    borders = torch.cat(
        [
            torch.cat([v.image[0], v.image[-1], v.image[:, 0], v.image[:, -1]])
            for v in views  # [2W + 2H, 3] each
        ]
    )
    median = borders.median(dim=0).values
    close = ((borders - median).abs() < 0.05).all(dim=1).float().mean()
    if close >= 0.9:
        r, g, b = (round(float(x), 4) for x in median)
        return (r, g, b)
    return (0.0, 0.0, 0.0)


def load_dataset(
    model: ColmapModel,
    image_dir: Path,
    *,
    downscale: int = 1,
    max_image_size: int | None = None,
    holdout_every: int = 8,
    background: tuple[float, float, float] | Literal["auto"] = "auto",
) -> NVSDataset:
    """Views of every registered image of ``model``, read from ``image_dir``.

    ``background="auto"`` uses the training images' border colour where it is nearly uniform
    (a plain backdrop, as in the demo scenes) and black otherwise.

    Raises:
        NVSDataError: zero registered images, an unsupported camera model, or images the model
            names that are missing from ``image_dir`` (all listed in one message).
    """
    check_cameras(model)
    images = sorted(model.images, key=lambda image: image.name)
    missing = [image.name for image in images if not (image_dir / image.name).is_file()]
    if missing:
        raise NVSDataError(
            f"{len(missing)} of {len(images)} image(s) referenced by the COLMAP model are missing "
            f"from {image_dir}: {', '.join(missing)}"
        )
    views: list[NVSView] = []
    undistorted: set[int] = set()
    for posed in images:
        camera = model.cameras[posed.camera_id]
        with Image.open(image_dir / posed.name) as opened:
            array = np.asarray(opened.convert("RGB"), dtype=np.uint8)
        if (array.shape[1], array.shape[0]) != (camera.width, camera.height):
            raise NVSDataError(
                f"{posed.name} is {array.shape[1]}x{array.shape[0]} px but camera "
                f"{camera.camera_id} is {camera.width}x{camera.height}"
            )
        if camera.model in RADIAL_MODELS:
            array, k = _undistort(array, camera)
            undistorted.add(camera.camera_id)
        else:
            k = camera.calibration_matrix()
        array, k = _resize(array, k, downscale, max_image_size)
        views.append(
            NVSView(
                name=posed.name,
                image=torch.from_numpy(array.astype(np.float32) / 255.0),
                K=torch.from_numpy(k.astype(np.float32)),
                viewmat=torch.from_numpy(posed.world_to_camera().astype(np.float32)),
            )
        )
    notes: list[str] = []
    if len(views) < 2:
        notes.append(
            f"only {len(views)} registered image: nothing is held out, so held-out PSNR/SSIM "
            "cannot be computed"
        )
        train, test = views, []
    else:
        test = [v for i, v in enumerate(views) if i % holdout_every == 0]
        train = [v for i, v in enumerate(views) if i % holdout_every != 0]
    if background == "auto":
        background = _border_background(train)
    centres = np.stack([image.center for image in images])
    return NVSDataset(
        train=train,
        test=test,
        points=np.asarray(model.points, dtype=np.float64).reshape(-1, 3),
        colours=np.asarray(model.colours, dtype=np.uint8).reshape(-1, 3),
        frame=scene_frame(centres),
        background=background,
        undistorted_cameras=sorted(undistorted),
        notes=notes,
    )


def dataset_from_config(model: ColmapModel, image_dir: Path, config: NVSTrainConfig) -> NVSDataset:
    """`load_dataset` with the data settings of ``config``."""
    return load_dataset(
        model,
        image_dir,
        downscale=config.downscale,
        max_image_size=config.max_image_size,
        holdout_every=config.holdout_every,
        background=config.background,
    )


def view_sizes(views: Sequence[NVSView]) -> set[tuple[int, int]]:
    """The distinct (width, height) among ``views``."""
    return {(v.width, v.height) for v in views}
