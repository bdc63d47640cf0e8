"""``mlops-assets predict``: a registered model over a pair on disk, through the real CLI."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from PIL import Image
from rasterio.transform import from_origin

from mlops_assets.cli import main
from mlops_assets.core.cd.config import InferenceConfig, TilingConfig, preset
from mlops_assets.core.cd.infer import predict_scene
from mlops_assets.core.cd.predict import ModelRef, ModelRefError, load_model, open_pair
from mlops_assets.core.tracking import CHAMPION, Tracker
from mlops_assets_tests.core.cd import (
    mlflow_uri,
    read_raster,
    register_tiny_model,
    tile_folder,
    write_raster,
)

NAME = "change-detection-unet"


@pytest.fixture(scope="module")
def registered_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLOPS_HOME whose MLflow registry holds a tiny 4-band model as champion (v1)."""
    home = tmp_path_factory.mktemp("home")
    tracker = Tracker(mlflow_uri(tmp_path_factory, home), "change-detection", home / "mlartifacts")
    _, _, version = register_tiny_model(tracker, NAME)
    tracker.set_alias(NAME, CHAMPION, version)
    return home


@pytest.fixture
def home(registered_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPS_HOME", str(registered_home))
    return registered_home


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["predict", *args])
    return result.exit_code, result.stdout, result.stderr


def test_map_and_overlay_match_what_the_change_map_asset_predicts(
    home: Path, demo_cd_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "maps" / "change.tif"
    code, stdout, stderr = run(
        str(demo_cd_dir / "pre.tif"), str(demo_cd_dir / "post.tif"), "-o", str(out),
        "--tile-size", "64", "--overlap", "16",
    )  # fmt: skip
    assert code == 0, stderr
    assert stdout.startswith(f"{out}: 128x128, ")
    assert f"by {NAME} v1 from sqlite:///" in stdout and "overlay " in stdout
    got, profile = read_raster(out)
    with rasterio.open(demo_cd_dir / "pre.tif") as pre:
        assert profile["crs"] == pre.crs and profile["transform"] == pre.transform
    assert got.shape == (2, 128, 128)
    assert Image.open(out.with_suffix(".png")).size == (128, 128)
    assert sorted(p.name for p in out.parent.iterdir()) == ["change.png", "change.tif"]

    # cd/change_map: the statistics of the scene's tiles, the same windows and threshold.
    index = tile_folder(demo_cd_dir, tmp_path / "tiles", preset(TilingConfig, "tiny"))
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", "change-detection")
    model = load_model(tracker, ModelRef(NAME, CHAMPION))
    expected = tmp_path / "expected.tif"
    with open_pair(demo_cd_dir / "pre.tif", demo_cd_dir / "post.tif") as pair:
        predict_scene(
            pair,
            model.net,
            index.pre_stats,
            index.post_stats,
            InferenceConfig(tile_size=64, overlap=16, threshold=0.5),
            expected,
            torch.device("cpu"),
            model.size_multiple,
        )
    want, _ = read_raster(expected)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got[1] == 1).any() or (got[1] == 0).any()


def test_model_refs_parse_or_say_what_is_expected() -> None:
    assert ModelRef.parse("m") == ModelRef("m", "champion")
    assert ModelRef.parse("m@challenger") == ModelRef("m", "challenger")
    assert ModelRef.parse("m/3") == ModelRef("m", None, "3")
    with pytest.raises(ModelRefError, match="expected NAME@ALIAS"):
        ModelRef.parse("m@")


@pytest.mark.usefixtures("home")
def test_a_post_image_in_another_crs_is_warped_onto_pre(
    demo_cd_warped_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "warped.tif"
    code, _, stderr = run(
        str(demo_cd_warped_dir / "pre.tif"), str(demo_cd_warped_dir / "post.tif"), "-o", str(out)
    )
    assert code == 0, stderr
    with rasterio.open(out) as dst, rasterio.open(demo_cd_warped_dir / "pre.tif") as pre:
        assert dst.crs == pre.crs and (dst.width, dst.height) == (pre.width, pre.height)


def _shifted(folder: Path, out: Path, dx: float = 0.0, bands: int | None = None) -> Path:
    data, profile = read_raster(folder / "post.tif")
    t = profile["transform"]
    return write_raster(
        out,
        data[:bands] if bands else data,
        crs=profile["crs"].to_string(),
        transform=from_origin(t.c + dx, t.f, t.a, -t.e),
        nodata=profile["nodata"],
    )


@pytest.mark.usefixtures("home")
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("far", r"post\.tif does not overlap .*pre\.tif: nothing to compare"),
        ("bands", r"pre3\.tif has 3 bands but change-detection-unet v1 takes 4 per image"),
        ("alias", r"--model change-detection-unet@nobody: .*has no version under alias 'nobody' "
         r"\(aliases: champion->v1\)"),
        ("name", r"--model other@champion: registered model 'other' does not exist"),
        ("ref", r"--model 'a b': expected NAME@ALIAS"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(
    case: str, message: str, demo_cd_dir: Path, tmp_path: Path
) -> None:
    pre, post = demo_cd_dir / "pre.tif", demo_cd_dir / "post.tif"
    model = f"{NAME}@champion"
    if case == "far":
        post = _shifted(demo_cd_dir, tmp_path / "in" / "post.tif", dx=1e5)
    elif case == "bands":
        data, profile = read_raster(pre)
        pre = write_raster(
            tmp_path / "in" / "pre3.tif", data[:3], crs=profile["crs"].to_string(),
            transform=profile["transform"], nodata=profile["nodata"],
        )  # fmt: skip
        post = _shifted(demo_cd_dir, tmp_path / "in" / "post3.tif", bands=3)
    else:
        model = {"alias": f"{NAME}@nobody", "name": "other@champion", "ref": "a b"}[case]
    out = tmp_path / "out" / "change.tif"
    code, stdout, stderr = run(str(pre), str(post), "-o", str(out), "--model", model)
    assert code == 1 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in stderr
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_progress_counts_every_window_once(home: Path, demo_cd_dir: Path, tmp_path: Path) -> None:
    from mlops_assets.core.cd.predict import predict_pair

    model = load_model(Tracker(f"sqlite:///{home / 'mlflow.db'}", "x"), ModelRef(NAME, CHAMPION))
    seen: list[tuple[int, int]] = []
    config = InferenceConfig(tile_size=64, overlap=16)
    out = tmp_path / "m.tif"
    predict_pair(
        demo_cd_dir / "pre.tif",
        demo_cd_dir / "post.tif",
        out,
        model,
        config,
        torch.device("cpu"),
        lambda done, total: seen.append((done, total)),
    )
    # 128 px, 64 px windows every 48 px: rows and columns at 0, 48, 64.
    assert seen == [(3, 9), (6, 9), (9, 9)]
    assert out.exists() and out.with_suffix(".png").exists()
