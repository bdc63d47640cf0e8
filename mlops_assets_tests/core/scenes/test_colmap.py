from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlops_assets.core.scenes.colmap import (
    Camera,
    ColmapModel,
    PosedImage,
    model_format,
    read_model,
    write_model,
)
from mlops_assets_tests.conftest import DATA

MAUPERTUIS = DATA / "kapture" / "maupertuis"


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _model() -> ColmapModel:
    rng = np.random.default_rng(0)
    camera = Camera(1, "PINHOLE", 64, 48, (50.0, 52.0, 31.5, 23.5))
    images = [
        PosedImage(i + 1, f"im{i}.png", 1, _rotation(0.1 * i), np.array([0.1 * i, 0.0, 4.0]))
        for i in range(3)
    ]
    points = rng.uniform(-0.5, 0.5, (20, 3))
    colours = rng.integers(0, 255, (20, 3), dtype=np.uint8)
    observations: list[list[tuple[int, float, float]]] = []
    intrinsics = camera.calibration_matrix()
    for xyz in points:
        track = []
        for image in images:
            uvw = intrinsics @ (image.rotation @ xyz + image.translation)
            track.append((image.image_id, float(uvw[0] / uvw[2]), float(uvw[1] / uvw[2])))
        observations.append(track)
    return ColmapModel({1: camera}, images, points, colours, observations)


@pytest.mark.parametrize("fmt", ["bin", "txt"])
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    model = _model()
    write_model(model, tmp_path / "sparse", fmt)  # type: ignore[arg-type]
    names = [p.name for p in (tmp_path / "sparse").iterdir()]
    assert model_format(names) == fmt
    back = read_model(tmp_path / "sparse")
    assert back.cameras == model.cameras
    assert [i.name for i in back.images] == ["im0.png", "im1.png", "im2.png"]
    for a, b in zip(back.images, model.images, strict=True):
        np.testing.assert_allclose(a.world_to_camera(), b.world_to_camera(), atol=1e-9)
    np.testing.assert_allclose(np.sort(back.points, axis=0), np.sort(model.points, axis=0))
    assert back.num_observations == 60
    assert back.mean_reprojection_error is not None and back.mean_reprojection_error < 1e-6


def test_real_maupertuis_model() -> None:
    model = read_model(MAUPERTUIS / "sparse" / "0")
    assert len(model.images) == 4
    assert len(model.points) == 1039
    assert model.num_observations == 3355
    camera = model.cameras[1]
    assert camera.model == "SIMPLE_PINHOLE"
    assert (camera.width, camera.height) == (1919, 1079)
    assert camera.focal[0] == pytest.approx(1847.53, abs=0.01)
    assert model.mean_reprojection_error == pytest.approx(0.34, abs=0.01)
    assert sorted(i.name for i in model.images) == ["00.jpg", "01.jpg", "02.jpg", "03.jpg"]


@pytest.mark.parametrize(
    ("model", "params", "focal", "pp", "dist"),
    [
        ("SIMPLE_PINHOLE", (100.0, 32.0, 24.0), (100.0, 100.0), (32.0, 24.0), ()),
        ("PINHOLE", (100.0, 110.0, 32.0, 24.0), (100.0, 110.0), (32.0, 24.0), ()),
        ("SIMPLE_RADIAL", (100.0, 32.0, 24.0, 0.1), (100.0, 100.0), (32.0, 24.0), (0.1,)),
        ("RADIAL", (100.0, 32.0, 24.0, 0.1, -0.02), (100.0, 100.0), (32.0, 24.0), (0.1, -0.02)),
    ],
)
def test_intrinsics_by_model(
    model: str,
    params: tuple[float, ...],
    focal: tuple[float, float],
    pp: tuple[float, float],
    dist: tuple[float, ...],
) -> None:
    camera = Camera(1, model, 64, 48, params)
    assert camera.focal == focal
    assert camera.principal_point == pp
    assert camera.distortion == dist
    np.testing.assert_allclose(camera.calibration_matrix()[0], [focal[0], 0, pp[0]])


def test_incomplete_model_is_named(tmp_path: Path) -> None:
    (tmp_path / "cameras.txt").write_text("")
    with pytest.raises(ValueError, match="no complete COLMAP model") as info:
        read_model(tmp_path)
    assert str(info.value).endswith("; found cameras.txt")  # the names, not a template


def test_a_half_points3d_bin_is_refused_by_its_size(tmp_path: Path) -> None:
    write_model(_model(), tmp_path, "bin")
    points = tmp_path / "points3D.bin"
    data = points.read_bytes()
    points.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"points3D\.bin: truncated or corrupt binary COLMAP"):
        read_model(tmp_path)
    points.write_bytes(data + b"\0")
    with pytest.raises(ValueError, match="1 bytes follow the last record"):
        read_model(tmp_path)


def test_binary_tracks_are_read_as_pycolmap_reads_them(tmp_path: Path) -> None:
    # read_model gathers a binary model's points and tracks with numpy; a text model goes
    # through pycolmap's objects: both must give the written model, point for point
    model = _model()
    model.observations[3] = model.observations[3][:1]  # tracks of different lengths
    model.observations[7] = model.observations[7][::-1]
    write_model(model, tmp_path / "bin", "bin")
    write_model(model, tmp_path / "txt", "txt")
    binary, text = read_model(tmp_path / "bin"), read_model(tmp_path / "txt")
    np.testing.assert_allclose(binary.points, model.points)
    np.testing.assert_array_equal(binary.colours, model.colours)
    np.testing.assert_allclose(
        [xy for track in binary.observations for _, *xy in track],
        [xy for track in model.observations for _, *xy in track],
    )
    assert [[i for i, _, _ in t] for t in binary.observations] == [
        [i for i, _, _ in t] for t in model.observations
    ]
    assert binary.observations == text.observations
    np.testing.assert_array_equal(binary.points, text.points)
    np.testing.assert_array_equal(binary.colours, text.colours)

    # records need not be in id order: the points come back sorted by id all the same
    path = tmp_path / "bin" / "points3D.bin"
    data = path.read_bytes()
    records, offset = [], 8
    while offset < len(data):
        length = int.from_bytes(data[offset + 43 : offset + 51], "little")
        records.append(data[offset : offset + 51 + 8 * length])
        offset += 51 + 8 * length
    path.write_bytes(data[:8] + b"".join(reversed(records)))
    shuffled = read_model(tmp_path / "bin")
    assert shuffled.observations == binary.observations
    np.testing.assert_array_equal(shuffled.points, binary.points)
    np.testing.assert_array_equal(shuffled.colours, binary.colours)
