"""Orbit cameras around a scene and the .mp4 made from their renders.

Cameras follow COLMAP's (OpenCV's) convention: x right, y down, z forward; a view matrix maps
world to camera (x_cam = R x_world + t), as `PosedImage.world_to_camera` does and as gsplat's
``rasterization`` takes it. `orbit_from_model` places the orbit where the capture looked;
`orbit_cameras` samples it; `write_mp4` streams frames to ffmpeg (imageio-ffmpeg) and renames the
finished file into place.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from numpy.typing import NDArray

from mlops_assets.core.scenes.colmap import ColmapModel

FloatArray = NDArray[np.float64]

#: Smallest eigenvalue (per camera) of the ray-intersection normal matrix below which the viewing
#: directions are too close to parallel for their common point to be trusted (about 13 degrees).
_MIN_RAY_SPREAD = 0.05


@dataclass(frozen=True)
class Orbit:
    """A circle around ``center`` orthogonal to ``up``, seen from ``elevation_deg`` above."""

    center: FloatArray  # [3]
    radius: float
    up: FloatArray  # [3], unit
    elevation_deg: float
    start: FloatArray  # [3], unit, orthogonal to up: the direction of the first camera
    center_from: str  # "camera_rays" or "points" or "cameras": how the centre was found


def intrinsics(width: int, height: int, fov_deg: float) -> FloatArray:  # [3, 3]
    """A pinhole K with horizontal field of view ``fov_deg`` and the principal point centred."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    focal = 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def look_at(
    eye: FloatArray,  # [3]
    target: FloatArray,  # [3]
    up: FloatArray,  # [3]
) -> FloatArray:  # [4, 4]
    """The world-to-camera matrix of a camera at ``eye`` looking at ``target``, ``up`` upwards."""
    forward = target - eye
    norm = np.linalg.norm(forward)
    if norm == 0.0:
        raise ValueError("the camera sits on its target")
    forward = forward / norm
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("the viewing direction is parallel to up")
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    viewmat = np.eye(4)
    viewmat[:3, :3] = rotation
    viewmat[:3, 3] = -rotation @ eye
    return viewmat


def _unit(vector: FloatArray) -> FloatArray:
    return vector / np.linalg.norm(vector)


def _orthogonal(vector: FloatArray, up: FloatArray) -> FloatArray | None:
    """``vector`` without its ``up`` component, normalised (None when nothing is left)."""
    flat = vector - np.dot(vector, up) * up
    norm = float(np.linalg.norm(flat))
    return flat / norm if norm > 1e-9 else None


def _any_orthogonal(up: FloatArray) -> FloatArray:  # [3] unit, orthogonal to unit ``up``
    axis = np.eye(3)[int(np.argmin(np.abs(up)))]  # the axis least aligned with up
    return _unit(np.asarray(np.cross(up, axis), dtype=np.float64))


def _ray_focus(
    centers: FloatArray,  # [C, 3]
    forwards: FloatArray,  # [C, 3] unit
) -> FloatArray | None:  # [3]
    """The point closest to every optical axis, if the axes converge in front of the cameras."""
    projectors = np.eye(3)[None] - forwards[:, :, None] * forwards[:, None, :]  # [C, 3, 3]
    normal = projectors.sum(axis=0)
    if np.linalg.eigvalsh(normal)[0] < _MIN_RAY_SPREAD * len(centers):
        return None
    point = np.linalg.solve(normal, np.einsum("cij,cj->i", projectors, centers))
    in_front = np.einsum("ci,ci->c", point[None] - centers, forwards) > 0
    return point if in_front.mean() > 0.5 else None


def orbit_from_model(model: ColmapModel) -> Orbit:
    """An orbit around what the capture looked at, at its median camera distance and elevation.

    Up is the mean of the cameras' up vectors (-y of each camera). The centre is the point where
    the optical axes meet when they converge (an object-centred capture); otherwise the median of
    the sparse points; otherwise the mean camera centre plus the mean viewing direction.
    """
    if not model.images:
        raise ValueError("the model has no registered images to place an orbit around")
    rotations = np.stack([image.rotation for image in model.images])  # [C, 3, 3]
    centers = np.stack([image.center for image in model.images])  # [C, 3]
    forwards = rotations[:, 2, :]
    up = _unit(-rotations[:, 1, :].mean(axis=0))
    focus = _ray_focus(centers, forwards) if len(centers) > 1 else None
    if focus is not None:
        center, center_from = focus, "camera_rays"
    elif len(model.points):
        center, center_from = np.median(model.points, axis=0), "points"
    else:
        center, center_from = centers.mean(axis=0) + forwards.mean(axis=0), "cameras"
    offsets = centers - center[None]
    distances = np.linalg.norm(offsets, axis=1)
    radius = float(np.median(distances))
    if radius <= 0.0:
        raise ValueError("the cameras sit on the orbit centre")
    heights = offsets @ up
    elevation = float(np.degrees(np.median(np.arcsin(np.clip(heights / distances, -1.0, 1.0)))))
    start = _orthogonal(offsets[0], up)
    if start is None:  # the first camera is straight above the centre: any horizontal direction
        start = _any_orthogonal(up)
    return Orbit(center, radius, up, elevation, start, center_from)


def orbit_cameras(
    center: FloatArray,  # [3]
    radius: float,
    up: FloatArray,  # [3]
    n_frames: int,
    *,
    elevation_deg: float = 0.0,
    width: int,
    height: int,
    fov_deg: float | None = 50.0,
    K: FloatArray | None = None,  # [3, 3]  # noqa: N803 (the usual name of the matrix)
    start: FloatArray | None = None,  # [3]
) -> list[tuple[FloatArray, FloatArray]]:  # n_frames x (viewmat [4, 4], K [3, 3])
    """``n_frames`` cameras evenly spaced on a circle, each looking at ``center``.

    The circle lies ``radius * sin(elevation)`` above ``center`` along ``up``, with horizontal
    radius ``radius * cos(elevation)``, so every camera is ``radius`` from the centre. It starts in
    the direction ``start`` (projected orthogonal to ``up``; default: any). Intrinsics are ``K``
    when given, else a pinhole with horizontal field of view ``fov_deg`` centred on the image.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be at least 1, got {n_frames}")
    if radius <= 0.0:
        raise ValueError(f"radius must be positive, got {radius}")
    if not -90.0 < elevation_deg < 90.0:
        raise ValueError(f"elevation_deg must be in (-90, 90), got {elevation_deg}")
    if K is not None:
        matrix = np.asarray(K, dtype=np.float64)
    elif fov_deg is not None:
        matrix = intrinsics(width, height, fov_deg)
    else:
        raise ValueError("give either fov_deg or K")
    center = np.asarray(center, dtype=np.float64)
    up = _unit(np.asarray(up, dtype=np.float64))
    first = _orthogonal(np.asarray(start, dtype=np.float64), up) if start is not None else None
    if first is None:
        first = _any_orthogonal(up)
    second = np.cross(up, first)
    elevation = math.radians(elevation_deg)
    cameras: list[tuple[FloatArray, FloatArray]] = []
    for i in range(n_frames):
        angle = 2.0 * math.pi * i / n_frames
        direction = math.cos(angle) * first + math.sin(angle) * second
        eye = center + radius * (math.cos(elevation) * direction + math.sin(elevation) * up)
        cameras.append((look_at(eye, center, up), matrix.copy()))
    return cameras


def write_mp4(
    frames: Iterable[NDArray[np.uint8]],  # each [H, W, 3]
    path: Path,
    fps: int = 30,
    *,
    quality: int = 7,
) -> Path:
    """Encode ``frames`` as H.264 (yuv420p) into ``path``, streaming; atomic (temp + rename).

    Every frame must be uint8 RGB of the same size. yuv420p needs an even width and height, so an
    odd size is padded by repeating the last column / row. Raises `ValueError` on a bad frame or
    no frames; nothing is left at ``path`` (or beside it) then.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        prefix=f".{path.stem}.", suffix=".mp4", dir=path.parent, delete=False
    ) as handle:
        tmp = Path(handle.name)
    try:
        count = _encode(frames, tmp, fps, quality)
        if count == 0:
            raise ValueError(f"no frames to write to {path}")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _encode(frames: Iterable[NDArray[np.uint8]], path: Path, fps: int, quality: int) -> int:
    writer = None
    size: tuple[int, int, int] = (0, 0, 0)
    count = 0
    try:
        for frame in frames:
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(
                    f"frame {count}: expected uint8 [H, W, 3], got {frame.dtype} {frame.shape}"
                )
            if writer is None:
                size = (frame.shape[0], frame.shape[1], 3)
                height, width = size[0] + size[0] % 2, size[1] + size[1] % 2
                writer = imageio_ffmpeg.write_frames(
                    str(path),
                    (width, height),
                    fps=fps,
                    quality=quality,
                    codec="libx264",
                    macro_block_size=2,
                    output_params=["-movflags", "+faststart"],
                )
                writer.send(None)
            elif frame.shape != size:
                raise ValueError(f"frame {count}: size {frame.shape} differs from {size}")
            padded = np.pad(frame, ((0, size[0] % 2), (0, size[1] % 2), (0, 0)), mode="edge")
            writer.send(np.ascontiguousarray(padded))
            count += 1
    finally:
        if writer is not None:
            writer.close()
    return count
