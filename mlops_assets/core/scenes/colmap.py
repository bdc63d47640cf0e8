"""COLMAP sparse models (cameras, posed images, 3D points with tracks) through pycolmap.

`ColmapModel` is a plain, typed copy of what the pipeline needs from a reconstruction; `read_model`
and `write_model` convert to and from COLMAP's text or binary files with pycolmap, so both formats
are handled by COLMAP's own reader and writer.

pycolmap trusts the counts in a binary model's headers: a truncated ``points3D.bin`` made it
allocate 17 GB. So `read_model` first walks every binary file's records (`check_binary_model`):
each count must fit in the bytes that follow it, every variable-length record (an image's
keypoints, a point's track) must end inside the file, and the last record must end exactly at the
end of the file. The walk reads a few bytes per record, in memory bounded by the file size.
A binary model's points, colours and tracks are then gathered from its files with numpy
(`_binary_points`) rather than copied out of pycolmap one observation at a time.
"""

from __future__ import annotations

import functools
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pycolmap
from numpy.typing import NDArray

ModelFormat = Literal["bin", "txt"]

#: Camera models the pipeline accepts: pinhole ones as they are, radial ones after undistortion.
PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
RADIAL_MODELS = ("SIMPLE_RADIAL", "RADIAL")


@dataclass(frozen=True)
class Camera:
    """Intrinsics of one COLMAP camera (``params`` in COLMAP's order for ``model``)."""

    camera_id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]

    @property
    def focal(self) -> tuple[float, float]:
        """(fx, fy) in pixels."""
        if self.model == "PINHOLE":
            return self.params[0], self.params[1]
        return self.params[0], self.params[0]  # SIMPLE_PINHOLE, SIMPLE_RADIAL, RADIAL: f, cx, cy...

    @property
    def principal_point(self) -> tuple[float, float]:
        """(cx, cy) in pixels."""
        if self.model == "PINHOLE":
            return self.params[2], self.params[3]
        return self.params[1], self.params[2]

    @property
    def distortion(self) -> tuple[float, ...]:
        """Radial distortion coefficients (empty for pinhole models)."""
        if self.model == "SIMPLE_RADIAL":
            return self.params[3:4]
        if self.model == "RADIAL":
            return self.params[3:5]
        return ()

    def calibration_matrix(self) -> NDArray[np.float64]:
        """The 3x3 intrinsic matrix K (distortion not included)."""
        (fx, fy), (cx, cy) = self.focal, self.principal_point
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class PosedImage:
    """A registered image: its camera and its world-to-camera pose (x_cam = R x_world + t)."""

    image_id: int
    name: str
    camera_id: int
    rotation: NDArray[np.float64]  # [3, 3]
    translation: NDArray[np.float64]  # [3]

    def world_to_camera(self) -> NDArray[np.float64]:
        """The 4x4 world-to-camera matrix."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.rotation
        matrix[:3, 3] = self.translation
        return matrix

    @property
    def center(self) -> NDArray[np.float64]:
        """The camera centre in world coordinates."""
        return -self.rotation.T @ self.translation


@dataclass
class ColmapModel:
    """A sparse reconstruction: cameras, registered images and coloured 3D points with tracks."""

    cameras: dict[int, Camera]
    images: list[PosedImage]
    points: NDArray[np.float64]  # [N, 3]
    colours: NDArray[np.uint8]  # [N, 3]
    #: For each point, the (image_id, x, y) of every image that observes it.
    observations: list[list[tuple[int, float, float]]] = field(
        default_factory=lambda: list[list[tuple[int, float, float]]]()
    )
    mean_reprojection_error: float | None = None

    @property
    def num_observations(self) -> int:
        """Total number of 2D observations of 3D points."""
        return sum(len(track) for track in self.observations)


def model_format(names: list[str]) -> ModelFormat | None:
    """The format of a complete model among file ``names`` (bin preferred), or None."""
    for suffix in ("bin", "txt"):
        if all(f"{stem}.{suffix}" in names for stem in ("cameras", "images", "points3D")):
            return "bin" if suffix == "bin" else "txt"
    return None


def read_model(directory: Path) -> ColmapModel:
    """Read the COLMAP model in ``directory``; raise `ValueError` naming it if unreadable."""
    names = [p.name for p in directory.iterdir()] if directory.is_dir() else []
    if model_format(names) is None:
        raise ValueError(
            f"{directory}: no complete COLMAP model (need cameras, images and points3D, "
            f".bin or .txt); found {', '.join(sorted(names)) or 'nothing'}"
        )
    if model_format(names) == "bin":
        check_binary_model(directory)
    try:
        rec = pycolmap.Reconstruction(str(directory))
    except Exception as exc:  # pycolmap raises plain RuntimeError / ValueError from C++
        raise ValueError(f"{directory}: COLMAP model is unreadable ({exc})") from exc
    cameras = {
        int(camera_id): Camera(
            camera_id=int(camera_id),
            model=str(camera.model.name),
            width=int(camera.width),
            height=int(camera.height),
            params=tuple(float(p) for p in camera.params),
        )
        for camera_id, camera in rec.cameras.items()
    }
    images: list[PosedImage] = []
    for image_id in sorted(rec.reg_image_ids()):
        image = rec.images[image_id]
        matrix = np.asarray(image.cam_from_world().matrix(), dtype=np.float64)
        images.append(
            PosedImage(
                image_id=int(image_id),
                name=str(image.name),
                camera_id=int(image.camera_id),
                rotation=matrix[:, :3].copy(),
                translation=matrix[:, 3].copy(),
            )
        )
    point_ids = sorted(rec.points3D)
    if model_format(names) == "bin":
        points, colours, observations = _binary_points(directory, point_ids)
    else:  # a text model: pycolmap's objects, one point and one observation at a time
        points = np.array([rec.points3D[i].xyz for i in point_ids], np.float64).reshape(-1, 3)
        colours = np.array([rec.points3D[i].color for i in point_ids], np.uint8).reshape(-1, 3)
        observations = [_track(rec, rec.points3D[i].track) for i in point_ids]
    error = float(rec.compute_mean_reprojection_error()) if point_ids else None
    return ColmapModel(cameras, images, points, colours, observations, error)


def _track(rec: pycolmap.Reconstruction, track: pycolmap.Track) -> list[tuple[int, float, float]]:
    """One point's observations, read through pycolmap (about 20 us each)."""
    observations: list[tuple[int, float, float]] = []
    for element in track.elements:
        xy = rec.images[element.image_id].points2D[element.point2D_idx].xy
        observations.append((int(element.image_id), float(xy[0]), float(xy[1])))
    return observations


def _binary_points(
    directory: Path, point_ids: list[int]
) -> tuple[NDArray[np.float64], NDArray[np.uint8], list[list[tuple[int, float, float]]]]:
    """The points, colours and tracks of ``point_ids`` (ascending), read with numpy.

    Copying them out of pycolmap costs Python-level calls per point and six per observation
    (11 s for a 200k-point model); here one loop finds where each record of ``points3D.bin``
    begins and numpy gathers the coordinates, colours, track elements and keypoints at once.
    The files have passed `check_binary_model`, so every record lies inside its file; a track
    element naming a missing image or keypoint is refused.
    """
    keypoints: dict[int, NDArray[np.float64]] = {}  # image_id -> [keypoints, 2] x, y
    images = (directory / "images.bin").read_bytes()
    offset = 8
    for _ in range(_COUNT.unpack_from(images)[0]):
        image_id = int.from_bytes(images[offset : offset + 4], "little")
        offset = images.index(b"\0", offset + _IMAGE.size) + 1
        (count,) = _COUNT.unpack_from(images, offset)
        table = np.frombuffer(images, "<f8", count * 3, offset + 8).reshape(count, 3)
        keypoints[image_id] = table[:, :2]
        offset += 8 + count * _POINT2D_BYTES
    raw = (directory / "points3D.bin").read_bytes()
    data = np.frombuffer(raw, np.uint8)
    n = int(_COUNT.unpack_from(raw)[0])
    heads = np.empty(n, np.int64)  # where each record begins
    lengths = np.empty(n, np.int64)  # its track length
    offset, unpack = 8, _COUNT.unpack_from
    for k in range(n):  # the one Python loop: a record's length decides where the next begins
        (length,) = unpack(raw, offset + _POINT_HEAD)
        heads[k], lengths[k] = offset, length
        offset += _POINT_HEAD + 8 + length * _TRACK_ELEMENT_BYTES
    ids = _gather(data, heads, 8).view("<u8").ravel()
    if sorted(ids.tolist()) != point_ids:
        raise ValueError(f"{directory}: points3D.bin and pycolmap disagree on the point ids")
    by_id = np.argsort(ids, kind="stable")
    points = _gather(data, heads[by_id] + 8, 24).view("<f8").astype(np.float64)
    colours = _gather(data, heads[by_id] + 32, 3)
    # element j of point k lies at heads[k] + _POINT_HEAD + 8 + 8 j
    before = np.cumsum(lengths) - lengths
    first = np.repeat(heads + _POINT_HEAD + 8 - 8 * before, lengths)
    elements = _gather(data, first + 8 * np.arange(int(lengths.sum())), 8).view("<u4")
    image_ids, indices = elements[:, 0].astype(np.int64), elements[:, 1].astype(np.int64)
    xy = np.empty((len(image_ids), 2), np.float64)
    order = np.argsort(image_ids, kind="stable")
    bounds = np.flatnonzero(np.diff(image_ids[order])) + 1
    for group in np.split(order, bounds) if len(order) else []:
        image_id, last = int(image_ids[group[0]]), int(indices[group].max())
        table = keypoints.get(image_id)
        if table is None or last >= len(table):
            found = "is not in images.bin" if table is None else f"has {len(table):,} keypoints"
            raise ValueError(
                f"{directory / 'points3D.bin'}: a track names keypoint {last:,} of image "
                f"{image_id}, which {found}"
            )
        xy[group] = table[indices[group]]
    del keypoints, images, data, raw  # the files' bytes, before the Python objects are built
    flat = list(zip(image_ids.tolist(), xy[:, 0].tolist(), xy[:, 1].tolist(), strict=True))
    ends = np.cumsum(lengths)
    tracks = [flat[a:b] for a, b in zip((ends - lengths).tolist(), ends.tolist(), strict=True)]
    return points, colours, [tracks[k] for k in by_id.tolist()]


def _gather(data: NDArray[np.uint8], offsets: NDArray[np.int64], width: int) -> NDArray[np.uint8]:
    """The ``width`` bytes at each of ``offsets``, as a [len(offsets), width] array.

    Indexing a sliding-window view picks whole rows: no [len(offsets), width] index array.
    """
    if not len(offsets):  # no points (or no observations): the file may be shorter than width
        return np.empty((0, width), np.uint8)
    return np.lib.stride_tricks.sliding_window_view(data, width)[offsets]


@functools.cache
def _camera_param_counts() -> dict[int, int]:
    """Parameters per COLMAP camera model id, as this pycolmap knows them."""
    counts: dict[int, int] = {}
    for name, model_id in pycolmap.CameraModelId.__members__.items():
        if int(model_id) < 0 or name == "INVALID":
            continue
        camera = pycolmap.Camera.create_from_model_id(1, model_id, 1.0, 2, 2)
        counts[int(model_id)] = len(camera.params)
    return counts


_COUNT = struct.Struct("<Q")
_CAMERA = struct.Struct("<IiQQ")  # camera_id, model_id, width, height, then the params
_IMAGE = struct.Struct("<I4d3dI")  # image_id, qvec, tvec, camera_id, then name and keypoints
_POINT2D_BYTES = 24  # x, y (double), point3D_id (int64)
_POINT_HEAD = 8 + 24 + 3 + 8  # point3D_id, xyz, rgb, error; then the track length (uint64)
_TRACK_ELEMENT_BYTES = 8  # image_id, point2D_idx (uint32 each)
_MAX_NAME_BYTES = 4096
#: Smallest record of the files newer COLMAPs write beside the model (only their count is read).
_MIN_RECORD = {"rigs.bin": 8, "frames.bin": 68}


class _Walk:
    """A cursor over one binary file that fails, naming it, when a record runs past its end."""

    def __init__(self, path: Path, data: mmap.mmap | bytes) -> None:
        self.path = path
        self.data = data
        self.size = len(data)
        self.offset = 0

    def fail(self, what: str) -> ValueError:
        return ValueError(
            f"{self.path}: truncated or corrupt binary COLMAP file ({what}; the file has "
            f"{self.size:,} bytes)"
        )

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.offset + n > self.size:
            raise self.fail(f"{what} needs {n:,} bytes at offset {self.offset:,}")

    def unpack(self, layout: struct.Struct, what: str) -> tuple[int | float, ...]:
        self.need(layout.size, what)
        values = layout.unpack_from(self.data, self.offset)
        self.offset += layout.size
        return values

    def count(self, min_record: int, what: str) -> int:
        (n,) = self.unpack(_COUNT, f"the number of {what}")
        n = int(n)
        if n * min_record > self.size - self.offset:
            raise self.fail(
                f"it declares {n:,} {what}, which need at least {n * min_record:,} bytes, but "
                f"{self.size - self.offset:,} follow"
            )
        return n

    def end(self) -> None:
        if self.offset != self.size:
            raise self.fail(f"{self.size - self.offset:,} bytes follow the last record")


def _walk_cameras(walk: _Walk) -> None:
    counts = _camera_param_counts()
    for i in range(walk.count(_CAMERA.size + 8, "cameras")):
        _, model_id, _, _ = walk.unpack(_CAMERA, f"camera {i}")
        if int(model_id) not in counts:
            raise walk.fail(f"camera {i} has the unknown camera model id {model_id}")
        walk.need(8 * counts[int(model_id)], f"the parameters of camera {i}")
        walk.offset += 8 * counts[int(model_id)]
    walk.end()


def _walk_images(walk: _Walk) -> None:
    for i in range(walk.count(_IMAGE.size + 1 + 8, "images")):
        walk.unpack(_IMAGE, f"image {i}")
        end = walk.data.find(b"\0", walk.offset, walk.offset + _MAX_NAME_BYTES)
        if end < 0:
            raise walk.fail(f"the name of image {i} does not end")
        walk.offset = end + 1
        (points,) = walk.unpack(_COUNT, f"the keypoint count of image {i}")
        if int(points) > (walk.size - walk.offset) // _POINT2D_BYTES:
            raise walk.fail(f"image {i} declares {int(points):,} keypoints")
        walk.offset += int(points) * _POINT2D_BYTES
    walk.end()


def _walk_points(walk: _Walk) -> None:
    data, size = walk.data, walk.size
    n = walk.count(_POINT_HEAD + 8, "3D points")
    offset = walk.offset
    for i in range(n):  # the hot loop: one 8-byte read per point
        length_at = offset + _POINT_HEAD
        if length_at + 8 > size:
            walk.offset = offset
            raise walk.fail(f"3D point {i} of {n:,} runs past the end")
        length = int.from_bytes(data[length_at : length_at + 8], "little")
        if length > (size - length_at - 8) // _TRACK_ELEMENT_BYTES:
            walk.offset = offset
            raise walk.fail(f"3D point {i} declares a track of {length:,} observations")
        offset = length_at + 8 + length * _TRACK_ELEMENT_BYTES
    walk.offset = offset
    walk.end()


def check_binary_model(directory: Path) -> None:
    """Walk the binary model files in ``directory``; raise `ValueError` naming a broken one."""
    walkers = {
        "cameras.bin": _walk_cameras,
        "images.bin": _walk_images,
        "points3D.bin": _walk_points,
    }
    for name in [*walkers, *_MIN_RECORD]:
        path = directory / name
        if not path.is_file():
            continue
        with path.open("rb") as stream:
            size = path.stat().st_size
            data: mmap.mmap | bytes = (
                mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            )
            try:
                walk = _Walk(path, data)
                if name in walkers:
                    walkers[name](walk)
                else:
                    walk.count(_MIN_RECORD[name], name.removesuffix(".bin"))
            finally:
                if isinstance(data, mmap.mmap):
                    data.close()


def write_model(model: ColmapModel, directory: Path, fmt: ModelFormat = "bin") -> Path:
    """Write ``model`` as a COLMAP model (``fmt``: ``bin`` or ``txt``) into ``directory``."""
    rec = pycolmap.Reconstruction()
    for camera in model.cameras.values():
        rec.add_camera_with_trivial_rig(
            pycolmap.Camera(
                model=camera.model,
                width=camera.width,
                height=camera.height,
                params=list(camera.params),
                camera_id=camera.camera_id,
            )
        )
    # Each observation becomes a keypoint of its image; remember its index for the tracks.
    keypoints: dict[int, list[tuple[float, float]]] = {image.image_id: [] for image in model.images}
    tracks: list[list[tuple[int, int]]] = []
    for track in model.observations:
        elements: list[tuple[int, int]] = []
        for image_id, x, y in track:
            elements.append((image_id, len(keypoints[image_id])))
            keypoints[image_id].append((x, y))
        tracks.append(elements)
    for image in model.images:
        xy = np.asarray(keypoints[image.image_id], dtype=np.float64).reshape(-1, 2)
        pose = pycolmap.Rigid3d(np.hstack([image.rotation, image.translation.reshape(3, 1)]))
        rec.add_image_with_trivial_frame(
            pycolmap.Image(
                name=image.name, keypoints=xy, camera_id=image.camera_id, image_id=image.image_id
            ),
            pose,
        )
    for xyz, colour, elements in zip(model.points, model.colours, tracks, strict=True):
        track = pycolmap.Track()
        for image_id, point2d_idx in elements:
            track.add_element(image_id, point2d_idx)
        rec.add_point3D(
            np.asarray(xyz, dtype=np.float64), track, np.asarray(colour, dtype=np.uint8)
        )
    rec.update_point_3d_errors()
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "bin":
        rec.write_binary(str(directory))
    else:
        rec.write_text(str(directory))
    return directory
