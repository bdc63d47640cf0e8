from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from mlops_assets.core.nvs.video import (
    intrinsics,
    look_at,
    orbit_cameras,
    orbit_from_model,
    write_mp4,
)
from mlops_assets.core.scenes.colmap import Camera, ColmapModel, PosedImage, read_model
from mlops_assets_tests.conftest import DATA

MAUPERTUIS = DATA / "kapture" / "maupertuis"


def _project(viewmat: np.ndarray, k: np.ndarray, point: np.ndarray) -> tuple[np.ndarray, float]:
    cam = viewmat[:3, :3] @ point + viewmat[:3, 3]
    uvw = k @ cam
    return uvw[:2] / uvw[2], float(cam[2])


@pytest.mark.parametrize("elevation", [0.0, 30.0, -15.0])
def test_orbit_looks_at_the_centre_from_the_circle(elevation: float) -> None:
    center = np.array([1.0, -2.0, 0.5])
    up = np.array([0.0, 0.0, 2.0])  # not unit: normalised
    cameras = orbit_cameras(center, 3.0, up, 12, elevation_deg=elevation, width=64, height=48)
    assert len(cameras) == 12
    eyes = []
    for viewmat, k in cameras:
        rotation = viewmat[:3, :3]
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rotation) == pytest.approx(1.0)
        uv, depth = _project(viewmat, k, center)
        np.testing.assert_allclose(uv, [32.0, 24.0], atol=1e-9)  # the principal point
        assert depth == pytest.approx(3.0)
        eye = -rotation.T @ viewmat[:3, 3]
        eyes.append(eye)
        offset = eye - center
        assert np.linalg.norm(offset) == pytest.approx(3.0)
        assert offset[2] == pytest.approx(3.0 * np.sin(np.radians(elevation)))
        # OpenCV convention: image y points down, so world up projects upwards (smaller v).
        above, _ = _project(viewmat, k, center + 0.1 * np.array([0.0, 0.0, 1.0]))
        assert above[1] < 24.0
    # Evenly spaced: consecutive cameras are the same distance apart.
    steps = np.linalg.norm(np.diff(np.array(eyes + eyes[:1]), axis=0), axis=1)
    np.testing.assert_allclose(steps, steps[0])


def test_intrinsics_from_fov_or_given() -> None:
    k = intrinsics(100, 50, 90.0)
    np.testing.assert_allclose(k, [[50.0, 0.0, 50.0], [0.0, 50.0, 25.0], [0.0, 0.0, 1.0]])
    given = np.array([[80.0, 0.0, 30.0], [0.0, 80.0, 20.0], [0.0, 0.0, 1.0]])
    cameras = orbit_cameras(
        np.zeros(3), 1.0, np.array([0.0, 1.0, 0.0]), 3, width=60, height=40, K=given
    )
    assert all(np.array_equal(k, given) for _, k in cameras)
    with pytest.raises(ValueError, match="give either fov_deg or K"):
        orbit_cameras(
            np.zeros(3), 1.0, np.array([0.0, 1.0, 0.0]), 3, width=6, height=4, fov_deg=None
        )


def _ring_model(n: int = 8, radius: float = 4.0, height: float = 1.0) -> ColmapModel:
    """Cameras on a ring above the origin (world up = -y as in many COLMAP captures)."""
    world_up = np.array([0.0, -1.0, 0.0])
    images = []
    for i in range(n):
        angle = 2 * np.pi * i / n
        eye = np.array([radius * np.cos(angle), -height, radius * np.sin(angle)])
        viewmat = look_at(eye, np.zeros(3), world_up)
        images.append(PosedImage(i + 1, f"{i}.png", 1, viewmat[:3, :3], viewmat[:3, 3]))
    rng = np.random.default_rng(0)
    points = rng.normal(0.0, 0.3, (50, 3)) + np.array([5.0, 0.0, 0.0])  # off-centre on purpose
    return ColmapModel(
        {1: Camera(1, "PINHOLE", 64, 48, (50.0, 50.0, 32.0, 24.0))},
        images,
        points,
        np.zeros((50, 3), np.uint8),
    )


def test_orbit_from_converging_cameras() -> None:
    model = _ring_model()
    orbit = orbit_from_model(model)
    assert orbit.center_from == "camera_rays"  # the rays meet at the origin, not at the points
    np.testing.assert_allclose(orbit.center, np.zeros(3), atol=1e-9)
    np.testing.assert_allclose(orbit.up, [0.0, -1.0, 0.0], atol=1e-9)
    assert orbit.radius == pytest.approx(np.hypot(4.0, 1.0))
    assert orbit.elevation_deg == pytest.approx(np.degrees(np.arctan2(1.0, 4.0)))
    # The first orbit camera sits where the first capture camera was.
    viewmat, _ = orbit_cameras(
        orbit.center,
        orbit.radius,
        orbit.up,
        4,
        elevation_deg=orbit.elevation_deg,
        width=64,
        height=48,
        start=orbit.start,
    )[0]
    np.testing.assert_allclose(
        -viewmat[:3, :3].T @ viewmat[:3, 3], model.images[0].center, atol=1e-9
    )


def test_orbit_of_the_real_capture_is_inside_its_points() -> None:
    model = read_model(MAUPERTUIS / "sparse" / "0")  # 4 drone photos, axes about 35 deg apart
    orbit = orbit_from_model(model)
    assert orbit.center_from == "camera_rays"
    low, high = np.percentile(model.points, [5, 95], axis=0)
    assert np.all(low <= orbit.center) and np.all(orbit.center <= high)
    distances = [np.linalg.norm(i.center - orbit.center) for i in model.images]
    assert orbit.radius == pytest.approx(float(np.median(distances)))
    # Up agrees with every camera's own up (-y) to within a right angle.
    assert all(-i.rotation[1] @ orbit.up > 0 for i in model.images)


def test_orbit_of_parallel_cameras_uses_the_points() -> None:
    ring = _ring_model()
    rotation = ring.images[0].rotation
    images = [  # every camera looks the same way: their axes never meet
        PosedImage(i + 1, f"{i}.png", 1, rotation, -rotation @ np.array([i * 0.5, 0.0, -6.0]))
        for i in range(4)
    ]
    model = ColmapModel(ring.cameras, images, ring.points, ring.colours)
    orbit = orbit_from_model(model)
    assert orbit.center_from == "points"
    np.testing.assert_allclose(orbit.center, np.median(model.points, axis=0))


def _frames(n: int, height: int, width: int) -> list[np.ndarray]:
    frames = []
    for i in range(n):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[..., 0] = 255 * i // max(n - 1, 1)
        frame[: height // 2, :, 1] = 200
        frames.append(frame)
    return frames


def test_mp4_reads_back(tmp_path: Path) -> None:
    path = write_mp4(iter(_frames(10, 48, 64)), tmp_path / "orbit.mp4", fps=10)
    video = iio.imread(path)
    assert video.shape == (10, 48, 64, 3)
    # The encoded colours are close to the input (lossy, yuv420p).
    assert abs(int(video[0, 10, 10, 1]) - 200) < 12 and abs(int(video[-1, 40, 10, 0]) - 255) < 12
    assert [p.name for p in tmp_path.iterdir()] == ["orbit.mp4"]


def test_odd_size_is_padded_to_even(tmp_path: Path) -> None:
    video = iio.imread(write_mp4(_frames(3, 45, 63), tmp_path / "odd.mp4", fps=5))
    assert video.shape == (3, 46, 64, 3)


def test_bad_frames_leave_nothing(tmp_path: Path) -> None:
    frames = _frames(3, 48, 64)
    frames.append(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"frame 3: size \(32, 32, 3\) differs from \(48, 64, 3\)"):
        write_mp4(frames, tmp_path / "v.mp4")
    with pytest.raises(ValueError, match=r"frame 0: expected uint8 \[H, W, 3\], got float32"):
        write_mp4([np.zeros((8, 8, 3), np.float32)], tmp_path / "v.mp4")  # type: ignore[list-item]
    with pytest.raises(ValueError, match="no frames to write"):
        write_mp4([], tmp_path / "v.mp4")
    assert list(tmp_path.iterdir()) == []
