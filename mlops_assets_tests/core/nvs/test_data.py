"""Training views from COLMAP models: the real kapture sample and generated bad cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlops_assets.core.nvs.config import nvs_preset
from mlops_assets.core.nvs.data import NVSDataError, dataset_from_config, load_dataset
from mlops_assets.core.scenes.colmap import Camera, ColmapModel, PosedImage, read_model

KAPTURE = Path(__file__).resolve().parents[2] / "data" / "kapture" / "maupertuis"


def make_model(tmp_path: Path, camera: Camera, names: list[str], write: list[str]) -> ColmapModel:
    """A model whose cameras sit on a circle looking at the origin; ``write`` images exist."""
    rng = np.random.default_rng(0)
    images: list[PosedImage] = []
    for i, name in enumerate(names):
        angle = 2 * np.pi * i / max(len(names), 1)
        c, s = np.cos(angle), np.sin(angle)
        rotation = np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
        images.append(PosedImage(i + 1, name, camera.camera_id, rotation, np.array([0, 0, 3.0])))
    (tmp_path / "images").mkdir(parents=True, exist_ok=True)
    for name in write:
        pixels = rng.integers(0, 255, (camera.height, camera.width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / name)
    points = rng.normal(size=(50, 3))
    colours = rng.integers(0, 255, (50, 3), dtype=np.uint8)
    return ColmapModel({camera.camera_id: camera}, images, points, colours)


def test_real_kapture_model_loads() -> None:
    model = read_model(KAPTURE / "sparse" / "0")
    config = nvs_preset("tiny")
    dataset = dataset_from_config(model, KAPTURE / "images", config)
    assert [v.name for v in dataset.test] == [
        "00.jpg"
    ]  # every 8th by name, starting with the first
    assert [v.name for v in dataset.train] == ["01.jpg", "02.jpg", "03.jpg"]
    view = dataset.train[0]
    assert (view.width, view.height) == (64, 36)  # 1919 x 1079 fitted into 64 px
    assert view.image.shape == (36, 64, 3) and view.image.dtype == torch.float32
    assert float(view.image.min()) >= 0.0 and float(view.image.max()) <= 1.0
    f = 1847.53
    torch.testing.assert_close(
        view.K,
        torch.tensor(
            [
                [f * 64 / 1919, 0, 959.5 * 64 / 1919],
                [0, f * 36 / 1079, 539.5 * 36 / 1079],
                [0, 0, 1],
            ]
        ),
    )
    posed = next(i for i in model.images if i.name == "01.jpg")
    torch.testing.assert_close(view.viewmat, torch.from_numpy(posed.world_to_camera()).float())
    assert len(dataset.points) == len(model.points) > 100
    assert dataset.scene_scale > 0 and dataset.notes == []


def test_downscale_factor_scales_intrinsics(tmp_path: Path) -> None:
    camera = Camera(1, "PINHOLE", 40, 32, (50.0, 52.0, 20.0, 16.0))
    model = make_model(tmp_path, camera, ["a.png", "b.png"], ["a.png", "b.png"])
    dataset = load_dataset(model, tmp_path / "images", downscale=2)
    view = dataset.train[0]
    assert (view.width, view.height) == (20, 16)
    torch.testing.assert_close(view.K, torch.tensor([[25.0, 0, 10.0], [0, 26.0, 8.0], [0, 0, 1]]))


def test_simple_radial_is_undistorted_to_pinhole(tmp_path: Path) -> None:
    camera = Camera(1, "SIMPLE_RADIAL", 48, 40, (50.0, 24.0, 20.0, 0.08))
    names = [f"{i:02d}.png" for i in range(3)]
    model = make_model(tmp_path, camera, names, names)
    dataset = load_dataset(model, tmp_path / "images")
    assert dataset.undistorted_cameras == [1]
    view = dataset.train[0]
    k = view.K
    assert k[0, 1] == 0 and k[2, 2] == 1 and k[0, 0] > 0
    # COLMAP's undistorter picks the pinhole image size: close to, not necessarily, 48 x 40
    assert abs(view.width - 48) <= 8 and abs(view.height - 40) <= 8
    assert view.image.shape == (view.height, view.width, 3)


def test_radial_is_undistorted_too(tmp_path: Path) -> None:
    camera = Camera(1, "RADIAL", 48, 40, (50.0, 24.0, 20.0, 0.05, -0.01))
    model = make_model(tmp_path, camera, ["a.png", "b.png"], ["a.png", "b.png"])
    assert load_dataset(model, tmp_path / "images").undistorted_cameras == [1]


def test_unsupported_camera_model_is_refused(tmp_path: Path) -> None:
    camera = Camera(3, "OPENCV_FISHEYE", 48, 40, (50.0, 50.0, 24.0, 20.0, 0.1, 0.0, 0.0, 0.0))
    model = make_model(tmp_path, camera, ["a.png"], ["a.png"])
    with pytest.raises(NVSDataError) as caught:
        load_dataset(model, tmp_path / "images")
    assert str(caught.value) == (
        "camera 3 uses the unsupported camera model OPENCV_FISHEYE; supported: SIMPLE_PINHOLE, "
        "PINHOLE, SIMPLE_RADIAL, RADIAL (radial ones are undistorted to pinhole)"
    )


def test_missing_images_are_named_in_one_error(tmp_path: Path) -> None:
    camera = Camera(1, "PINHOLE", 16, 16, (20.0, 20.0, 8.0, 8.0))
    names = ["a.png", "b.png", "c.png", "d.png"]
    model = make_model(tmp_path, camera, names, ["b.png", "c.png"])
    with pytest.raises(NVSDataError) as caught:
        load_dataset(model, tmp_path / "images")
    assert str(caught.value) == (
        "2 of 4 image(s) referenced by the COLMAP model are missing from "
        f"{tmp_path / 'images'}: a.png, d.png"
    )


def test_zero_registered_images_is_refused(tmp_path: Path) -> None:
    camera = Camera(1, "PINHOLE", 16, 16, (20.0, 20.0, 8.0, 8.0))
    model = make_model(tmp_path, camera, [], [])
    with pytest.raises(NVSDataError) as caught:
        load_dataset(model, tmp_path / "images")
    assert str(caught.value) == ("the COLMAP model has zero registered images: nothing to train on")


def test_a_single_image_is_not_held_out_and_says_so(tmp_path: Path) -> None:
    camera = Camera(1, "SIMPLE_PINHOLE", 16, 16, (20.0, 8.0, 8.0))
    model = make_model(tmp_path, camera, ["only.png"], ["only.png"])
    dataset = load_dataset(model, tmp_path / "images")
    assert [v.name for v in dataset.train] == ["only.png"] and dataset.test == []
    assert dataset.notes == [
        "only 1 registered image: nothing is held out, so held-out PSNR/SSIM cannot be computed"
    ]


def test_every_eighth_image_by_name_is_held_out(tmp_path: Path) -> None:
    camera = Camera(1, "PINHOLE", 16, 16, (20.0, 20.0, 8.0, 8.0))
    names = [f"img{i:02d}.png" for i in reversed(range(17))]  # the model's order is not the key
    model = make_model(tmp_path, camera, names, names)
    dataset = load_dataset(model, tmp_path / "images")
    assert [v.name for v in dataset.test] == ["img00.png", "img08.png", "img16.png"]
    assert len(dataset.train) == 14


def test_auto_background_is_a_plain_border_else_black(tmp_path: Path) -> None:
    camera = Camera(1, "PINHOLE", 16, 16, (20.0, 20.0, 8.0, 8.0))
    model = make_model(tmp_path, camera, ["a.png", "b.png", "c.png"], [])
    for name in ("a.png", "b.png", "c.png"):
        pixels = np.full((16, 16, 3), 255, np.uint8)
        pixels[4:12, 4:12] = 30
        Image.fromarray(pixels).save(tmp_path / "images" / name)
    assert load_dataset(model, tmp_path / "images").background == (1.0, 1.0, 1.0)
    noisy = make_model(tmp_path / "n", camera, ["a.png", "b.png"], ["a.png", "b.png"])
    assert load_dataset(noisy, tmp_path / "n" / "images").background == (0.0, 0.0, 0.0)
    assert load_dataset(model, tmp_path / "images", background=(0.5, 0.5, 0.5)).background == (
        0.5,
        0.5,
        0.5,
    )
