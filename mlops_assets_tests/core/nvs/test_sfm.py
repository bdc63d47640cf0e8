from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlops_assets.core.nvs.sfm import SfMError, run_sfm
from mlops_assets.core.scenes.colmap import read_model
from mlops_assets_tests.conftest import DATA

#: Four real Flickr photos of Sacre-Coeur (see data/SOURCES.md), no poses.
SACRE_COEUR = DATA / "sacre_coeur"
# One thread: with two, Ceres and matching run in a varying order and whether a marginal photo
# registers changed between runs (measured: 4 of 4 alone, 2 of 4 in the full suite at 768 px).


def test_real_photos_are_posed(tmp_path: Path) -> None:
    result = run_sfm(SACRE_COEUR, tmp_path / "work", max_image_size=1024, num_threads=1)
    assert result.num_images == 4
    assert result.registered == 4 and result.unregistered == []
    model = result.model
    assert sorted(i.name for i in model.images) == sorted(p.name for p in SACRE_COEUR.iterdir())
    assert {c.model for c in model.cameras.values()} == {"SIMPLE_RADIAL"}
    assert len(model.points) > 100
    assert model.mean_reprojection_error is not None and model.mean_reprojection_error < 1.0
    assert model.colours.any()  # colours were extracted from the photos
    # The binary model on disk is the one returned.
    assert sorted(p.name for p in result.model_dir.iterdir()) == [
        "cameras.bin",
        "frames.bin",
        "images.bin",
        "points3D.bin",
        "rigs.bin",
    ]
    assert len(read_model(result.model_dir).points) == len(model.points)


def test_too_few_registered_names_the_count(tmp_path: Path) -> None:
    # At 512 px one of the four photos does not register.
    with pytest.raises(SfMError) as info:
        run_sfm(SACRE_COEUR, tmp_path / "work", min_registered=4, max_image_size=512, num_threads=1)
    assert str(info.value) == (
        f"SfM registered 3 of 4 images in {SACRE_COEUR}; at least 4 are needed"
    )
    assert not (tmp_path / "work" / "sparse").exists()


def test_unrelated_images_register_none(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = tmp_path / "noise"
    images.mkdir()
    for i in range(3):
        pixels = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
    with pytest.raises(SfMError, match=r"SfM registered 0 of 3 images in .*noise; at least 3"):
        run_sfm(images, tmp_path / "work", num_threads=1)


def test_no_photos(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SfMError, match=r"SfM found no \.png/\.jpg photos in .*empty"):
        run_sfm(tmp_path / "empty", tmp_path / "work")


def test_fewer_photos_than_needed(tmp_path: Path) -> None:
    images = tmp_path / "two"
    images.mkdir()
    for name in sorted(p.name for p in SACRE_COEUR.iterdir())[:2]:
        shutil.copy(SACRE_COEUR / name, images / name)
    with pytest.raises(SfMError, match=r"SfM needs at least 3 photos, .*two holds 2"):
        run_sfm(images, tmp_path / "work")


#: All ten photos of the sample, where the shared data folder is checked out beside the repository.
SHARED_SACRE_COEUR = (
    Path(__file__).parents[3].parent / "shared/data/hloc/datasets/sacre_coeur/mapping"
)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_SACRE_COEUR.is_dir(), reason="../shared/data is not present")
def test_all_ten_shared_photos_are_posed(tmp_path: Path) -> None:
    result = run_sfm(SHARED_SACRE_COEUR, tmp_path / "work", max_image_size=None, num_threads=2)
    assert (result.registered, result.num_images) == (10, 10)
    assert result.model.mean_reprojection_error is not None
    assert result.model.mean_reprojection_error < 1.0
