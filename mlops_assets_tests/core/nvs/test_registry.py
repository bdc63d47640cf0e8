"""Splats in MLflow: the logged pyfunc renders what the package renders; loading by alias."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from mlops_assets.core.nvs import raster_cpu
from mlops_assets.core.nvs.registry import load_splat_model, log_splat_model, scene_alias
from mlops_assets.core.nvs.render import render_orbit
from mlops_assets.core.scenes.colmap import Camera, ColmapModel, PosedImage
from mlops_assets.core.tracking import AliasNotFoundError, Tracker, _fluent_uris


def _splats(n: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "means": rng.normal(0.0, 0.5, (n, 3)).astype(np.float32),
        "scales": np.full((n, 3), np.log(0.08), np.float32),
        "quats": rng.normal(size=(n, 4)).astype(np.float32),
        "opacities": np.full((n,), 1.5, np.float32),
        "sh0": rng.normal(0.0, 0.5, (n, 1, 3)).astype(np.float32),
        "shN": rng.normal(0.0, 0.1, (n, 3, 3)).astype(np.float32),
    }


def _camera() -> tuple[np.ndarray, np.ndarray]:
    viewmat = np.eye(4, dtype=np.float32)
    viewmat[2, 3] = 3.0  # the origin 3 units in front of the camera
    intrinsics = np.array([[40.0, 0.0, 16.0], [0.0, 40.0, 16.0], [0.0, 0.0, 1.0]], np.float32)
    return viewmat, intrinsics


def test_pyfunc_renders_like_the_package_and_loads_by_scene_alias(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "nvs", tmp_path / "artifacts")
    splats = _splats()
    spec = {"sh_degree": 1, "background": [1.0, 1.0, 1.0], "width": 32, "height": 32}
    with tracker.run("splats", {}) as run_id:
        uri = log_splat_model(tracker, run_id, splats, spec)
    assert [a.path for a in tracker.client.list_artifacts(run_id, "splats")] == [
        "splats/splats.ply"
    ]
    version = tracker.register("gaussian-splats", uri, run_id, {"scene_id": "globe"}, "test")
    tracker.set_alias("gaussian-splats", scene_alias("champion", "globe"), str(version.version))

    viewmat, intrinsics = _camera()
    with _fluent_uris(tracker.tracking_uri):
        served = mlflow.pyfunc.load_model(uri)
        images = served.predict(
            {"viewmats": viewmat[None], "Ks": intrinsics[None]}, params={"width": 32, "height": 32}
        )
    expected, _, _ = raster_cpu.render(
        {k: torch.from_numpy(v) for k, v in splats.items()},
        torch.from_numpy(viewmat),
        torch.from_numpy(intrinsics),
        32,
        32,
        1,
        torch.ones(3),
    )
    assert images.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(images[0], expected.clamp(0, 1).numpy(), atol=1e-5)
    assert float(np.std(images)) > 0.01  # the Gaussians are in view

    loaded = load_splat_model(tracker, "gaussian-splats", "champion-globe", "nvs/registered_splats")
    assert loaded.version == str(version.version) and loaded.sh_degree == 1
    np.testing.assert_array_equal(loaded.splats["means"].numpy(), splats["means"])
    with pytest.raises(AliasNotFoundError, match=r"champion-ring.*champion-globe->v1"):
        load_splat_model(tracker, "gaussian-splats", "champion-ring", "nvs/registered_splats")


def test_orbit_video_frames_the_capture(tmp_path: Path) -> None:
    splats = {k: torch.from_numpy(v) for k, v in _splats().items()}
    camera = Camera(1, "PINHOLE", 32, 32, (40.0, 40.0, 16.0, 16.0))
    images = []
    for i, angle in enumerate(np.linspace(0, 2 * np.pi, 6, endpoint=False)):
        eye = 3.0 * np.array([np.cos(angle), 0.0, np.sin(angle)])
        forward = -eye / np.linalg.norm(eye)
        right = np.cross(forward, [0.0, -1.0, 0.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        rotation = np.stack([right, down, forward])
        images.append(PosedImage(i + 1, f"{i}.png", 1, rotation, -rotation @ eye))
    model = ColmapModel({1: camera}, images, np.zeros((1, 3)), np.zeros((1, 3), np.uint8), [[]])
    out = render_orbit(
        splats,
        model,
        tmp_path / "orbit.mp4",
        sh_degree=1,
        background=(1, 1, 1),
        width=32,
        height=32,
        frames=5,
        fps=5,
    )
    assert out.frames == 5 and out.path.stat().st_size > 0
    assert out.describe["center_from"] == "camera_rays"
    np.testing.assert_allclose(out.describe["center"], [0.0, 0.0, 0.0], atol=1e-6)
    assert out.describe["radius"] == pytest.approx(3.0)
    assert float(np.std(out.preview)) > 1.0  # the splats at the centre are in the frame
