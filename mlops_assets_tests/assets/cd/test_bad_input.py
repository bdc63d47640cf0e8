"""Bad input to the change-detection chain: one clear failure, nothing half-written, others fine."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from mlops_assets.assets.cd.model import cd_model
from mlops_assets.assets.cd.scene import cd_scene
from mlops_assets.assets.cd.tiles import cd_tiles
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets_tests.assets.cd.test_chain import failure_message, materialize
from mlops_assets_tests.conftest import commit_folder


def _rewrite(path: Path, **changes: Any) -> None:
    """Rewrite a GeoTIFF in place with profile ``changes`` (and ``data=`` replacing its pixels)."""
    with rasterio.open(path) as src:
        profile = src.profile
        data = src.read()
    data = changes.pop("data", data)
    profile.update(changes, count=data.shape[0], height=data.shape[1], width=data.shape[2])
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _scene(demo_cd_dir: Path, tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(demo_cd_dir, folder)
    return folder


def _published(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "outputs").rglob("index.json"))


def test_non_overlapping_post_fails_and_spares_other_scenes(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    demo_cd_dir: Path,
    tmp_path: Path,
) -> None:
    bad = _scene(demo_cd_dir, tmp_path, "bad")
    with rasterio.open(bad / "post.tif") as src:
        t = src.transform
        shifted = Affine(t.a, t.b, t.c + 1e6, t.d, t.e, t.f)  # 1000 km east
    _rewrite(bad / "post.tif", transform=shifted)
    commit_folder(store, bad, "cd/bad/")
    commit_folder(store, demo_cd_dir, "cd/good/")
    result = materialize([cd_scene, cd_tiles], instance, resources, "bad")
    assert not result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    overlap = checks["footprints_overlap_and_bands_match"]
    assert not overlap.passed and "post" in (overlap.description or "")
    assert not result.asset_materializations_for_node("cd__tiles")  # blocked, never ran
    # Tiling it anyway (a person forcing the step) fails with the file names, publishes nothing.
    forced = materialize([cd_tiles], instance, resources, "bad")
    assert not forced.success
    message = failure_message(forced)
    assert "cd/bad" in message and "bad/post.tif does not overlap bad/pre.tif" in message
    assert _published(tmp_path) == []
    good = materialize([cd_scene, cd_tiles], instance, resources, "good")
    assert good.success and len(_published(tmp_path)) == 1


def test_label_on_the_wrong_grid_fails_naming_the_label(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    demo_cd_dir: Path,
    tmp_path: Path,
) -> None:
    bad = _scene(demo_cd_dir, tmp_path, "bad")
    with rasterio.open(bad / "label.tif") as src:
        half = src.read()[:, :64, :64]
    _rewrite(bad / "label.tif", data=half)
    commit_folder(store, bad, "cd/shape/")
    materialize([cd_scene], instance, resources, "shape")
    result = materialize([cd_tiles], instance, resources, "shape")
    assert not result.success
    message = failure_message(result)
    assert (
        "shape/label.tif is 64x64" in message
        and "the label must be on the pre image's grid" in (message)
    )
    assert _published(tmp_path) == []


def test_all_nodata_scene_fails_its_tile_check_and_publishes_nothing(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    demo_cd_dir: Path,
    tmp_path: Path,
) -> None:
    bad = _scene(demo_cd_dir, tmp_path, "bad")
    with rasterio.open(bad / "pre.tif") as src:
        empty = np.full((src.count, src.height, src.width), src.nodata, src.dtypes[0])
    _rewrite(bad / "pre.tif", data=empty)
    commit_folder(store, bad, "cd/empty/")
    result = materialize([cd_scene, cd_tiles], instance, resources, "empty")
    assert not result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    nonempty = checks["tiles_nonempty"]
    assert not nonempty.passed
    assert "empty: all 9 windows dropped (9 nodata); nothing was published" in (
        nonempty.description or ""
    )
    assert _published(tmp_path) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_unreachable_mlflow_fails_training_fast_and_registers_nothing(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    demo_cd_dir: Path,
) -> None:
    commit_folder(store, demo_cd_dir, "cd/farm/")
    assert materialize([cd_scene, cd_tiles], instance, resources, "farm").success
    address = f"http://user:s3cret@127.0.0.1:{_free_port()}"
    offline = {**resources, "mlflow": MLflowResource(tracking_uri=address)}
    result = materialize([cd_model], instance, offline)
    assert not result.success
    message = failure_message(result)
    assert f"MLflow tracking server http://user:***@127.0.0.1:{address.rsplit(':', 1)[1]}" in (
        message
    )
    assert "is unreachable" in message and "s3cret" not in message
    assert instance.get_latest_materialization_event(dg.AssetKey(["cd", "model"])) is None
