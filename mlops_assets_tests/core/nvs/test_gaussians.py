from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlops_assets.core.nvs.gaussians import (
    SPLAT_KEYS,
    init_splats,
    knn_mean_distance,
    scene_frame,
    sh_to_rgb,
    to_numpy,
)


def grid_points() -> np.ndarray:
    axis = np.arange(4, dtype=np.float64) * 0.5
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def test_init_has_gsplat_keys_and_layouts() -> None:
    points = grid_points()
    colours = np.tile(np.array([[255, 128, 0]], np.uint8), (len(points), 1))
    splats = init_splats(points, colours, sh_degree=2, seed=3)
    n = len(points)
    assert set(splats.keys()) == set(SPLAT_KEYS)
    shapes = {k: tuple(v.shape) for k, v in splats.items()}
    assert shapes == {
        "means": (n, 3),
        "scales": (n, 3),
        "quats": (n, 4),
        "opacities": (n,),
        "sh0": (n, 1, 3),
        "shN": (n, 8, 3),
    }
    assert all(v.dtype == torch.float32 and v.requires_grad for v in splats.values())
    torch.testing.assert_close(splats["means"], torch.from_numpy(points).float())
    torch.testing.assert_close(sh_to_rgb(splats["sh0"][0, 0]), torch.tensor([1.0, 128 / 255, 0.0]))
    torch.testing.assert_close(torch.sigmoid(splats["opacities"]), torch.full((n,), 0.1))
    assert (splats["shN"] == 0).all()


def test_scales_are_log_mean_distance_to_three_neighbours() -> None:
    splats = init_splats(grid_points(), np.zeros((64, 3), np.uint8), sh_degree=0)
    # A corner of the 0.5-spaced grid has its three nearest neighbours at 0.5.
    assert math.exp(float(splats["scales"][0, 0].detach())) == pytest.approx(0.5)
    d = knn_mean_distance(torch.tensor([[0.0, 0, 0], [1, 0, 0], [3, 0, 0]]), k=1)
    torch.testing.assert_close(d, torch.tensor([1.0, 1.0, 2.0]))


def test_quaternions_are_seeded() -> None:
    a = init_splats(grid_points(), np.zeros((64, 3), np.uint8), 1, seed=5)["quats"]
    b = init_splats(grid_points(), np.zeros((64, 3), np.uint8), 1, seed=5)["quats"]
    c = init_splats(grid_points(), np.zeros((64, 3), np.uint8), 1, seed=6)["quats"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_numpy_export_for_the_ply_writer() -> None:
    splats = init_splats(grid_points(), np.zeros((64, 3), np.uint8), 1)
    arrays = to_numpy(splats)
    assert set(arrays) == set(SPLAT_KEYS)
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert arrays["shN"].shape == (64, 3, 3)


def test_no_points_is_refused() -> None:
    with pytest.raises(ValueError, match="the sparse model has no 3D points"):
        init_splats(np.zeros((0, 3)), np.zeros((0, 3), np.uint8), 0)


def test_scene_frame_is_simple_trainers_scale() -> None:
    centres = np.array([[1.0, 0, 0], [-1, 0, 0], [0, 2, 0], [0, -2, 0]])
    frame = scene_frame(centres)
    assert frame.scale == pytest.approx(2.2)
    np.testing.assert_allclose(frame.center, 0.0)
