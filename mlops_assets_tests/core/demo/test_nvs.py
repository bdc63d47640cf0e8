from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mlops_assets.core.demo.nvs import BACKGROUND
from mlops_assets.core.scenes.colmap import read_model


def test_generated_capture(demo_nvs_dir: Path) -> None:
    model = read_model(demo_nvs_dir / "sparse" / "0")
    assert len(model.images) == 8
    assert model.cameras[1].model == "PINHOLE"
    assert (model.cameras[1].width, model.cameras[1].height) == (48, 48)
    assert len(model.points) > 100
    assert model.mean_reprojection_error is not None and model.mean_reprojection_error < 1e-3
    # Tracks come from a depth test: every point is observed, most by several of the 8 views.
    assert min(len(track) for track in model.observations) >= 1
    assert np.mean([len(track) >= 2 for track in model.observations]) > 0.75
    # Cameras look at the object: points project in front of every camera that sees them.
    for image in model.images:
        assert np.linalg.norm(image.center) > 2.5
    photo = np.asarray(Image.open(demo_nvs_dir / "images" / model.images[0].name))
    assert photo.shape == (48, 48, 3)
    background = np.all(photo == np.round(np.array(BACKGROUND) * 255), axis=-1)
    assert 0.2 < background.mean() < 0.9  # the object fills part of the view
