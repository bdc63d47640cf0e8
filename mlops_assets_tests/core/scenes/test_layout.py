from __future__ import annotations

import pytest

from mlops_assets.core.scenes.layout import (
    CDPaths,
    NVSPaths,
    SceneError,
    SceneKind,
    scene_of_path,
    split_listing,
    validate_scene_id,
    write_marker,
)


@pytest.mark.parametrize("scene_id", ["a", "0", "farmland-north", "scene_01", "x" * 63])
def test_valid_scene_ids(scene_id: str) -> None:
    assert validate_scene_id(scene_id) == scene_id


@pytest.mark.parametrize(
    ("scene_id", "reason"),
    [
        ("", "empty"),
        ("../etc", "'..'"),
        ("a..b", "'..'"),
        ("cd/x", "path separator"),
        ("Farmland", "upper-case"),
        ("-leading", "must start"),
        ("has space", "must start with a-z or 0-9 and contain only"),
        ("x" * 64, "64 characters"),
        ("nl\n", "must start with a-z or 0-9 and contain only"),  # ``$`` matched before it
    ],
)
def test_invalid_scene_ids_say_why(scene_id: str, reason: str) -> None:
    with pytest.raises(SceneError, match="invalid scene id") as info:
        validate_scene_id(scene_id)
    assert reason in str(info.value)


def test_paths() -> None:
    assert CDPaths("s1").pre == "cd/s1/pre.tif"
    assert CDPaths("s1").label == "cd/s1/label.tif"
    assert NVSPaths("n1").images == "nvs/n1/images/"
    assert NVSPaths("n1").sparse == "nvs/n1/sparse/0/"
    with pytest.raises(SceneError):
        _ = CDPaths("../x").pre


def test_scene_of_path() -> None:
    assert scene_of_path("cd/s1/pre.tif") == (SceneKind.CD, "s1")
    assert scene_of_path("nvs/n1/sparse/0/cameras.bin") == (SceneKind.NVS, "n1")
    assert scene_of_path("cd/s1") is None
    assert scene_of_path("outputs/s1/x.tif") is None
    assert scene_of_path("cd/Bad Name/pre.tif") is None


def test_split_listing_keeps_invalid_names_with_reasons() -> None:
    listing = split_listing(["cd/b/", "cd/a/", "cd/Bad/"], SceneKind.CD)
    assert listing.valid == ["a", "b"]
    assert listing.invalid == {"Bad": "it contains upper-case letters"}


def test_the_writer_marker_lies_outside_every_scene() -> None:
    marker = write_marker(SceneKind.NVS, "globe")
    assert marker == "_writes/nvs/globe.json"
    assert not marker.startswith(NVSPaths("globe").prefix)
    assert scene_of_path(marker) is None  # the commit sensor counts it among ignored paths
    with pytest.raises(SceneError, match="invalid scene id"):
        write_marker(SceneKind.CD, "../escape")
