"""``mlops-assets import`` and ``ingest --pixel-grid`` through the real CLI entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from mlops_assets.cli import main
from mlops_assets.core.scenes.cd import check_cd_scene, read_cd_scene
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets_tests.core.importers import make_levircd, make_oscd
from mlops_assets_tests.core.scenes.test_pixel_grid import pixel_scene


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    return tmp_path / "home"


def _store(home: Path) -> EmbeddedStore:
    return EmbeddedStore(home / "lakefs", "scenes")


def test_import_commits_every_scene_once_and_summarises(home: Path, tmp_path: Path) -> None:
    root = make_levircd(tmp_path / "LEVIR-CD")
    runner = CliRunner()
    result = runner.invoke(main, ["import", "levir-cd", str(root), "--split", "train"])
    assert result.exit_code == 0, result.output
    store = _store(home)
    head = store.resolve("main")
    lines = result.output.strip().splitlines()
    assert lines[0] == f"imported into 'main' as {head}:"
    assert lines[1] == "2 levir-cd scenes (train 2): levircd-train-1 .. levircd-train-2"
    assert lines[2] == "  sizes 64x64 (2); bands 3 x uint8; grid pixel"
    commit = store.get_commit(head)
    assert commit.message == "Import 2 levir-cd scenes (train)"
    assert commit.metadata["source"] == "mlops-assets import levir-cd"
    assert commit.metadata["import_scene_count"] == "2"
    scenes = runner.invoke(main, ["scenes", "--ids"])
    assert scenes.output.split() == ["levircd-train-1", "levircd-train-2"]
    again = runner.invoke(main, ["import", "levir-cd", str(root), "--split", "train"])
    assert again.exit_code == 0 and again.output.startswith("nothing to commit: the 2 levir-cd")
    assert store.resolve("main") == head


def test_import_oscd_with_a_prefix(home: Path, tmp_path: Path) -> None:
    root = make_oscd(tmp_path / "oscd", cities={"paris": "test"})
    result = CliRunner().invoke(main, ["import", "oscd", str(root), "--prefix", "s2-"])
    assert result.exit_code == 0, result.output
    assert "1 oscd scenes (test 1): s2-test-paris .. s2-test-paris" in result.output
    assert "bands 13 x uint16; grid pixel" in result.output
    scene = read_cd_scene(_store(home), "main", "s2-test-paris")
    assert scene.manifest is not None and scene.manifest.reflectance_scale == 1e-4
    assert all(o.passed for o in check_cd_scene(scene))


def test_a_bad_file_stops_the_import_with_one_line_and_commits_nothing(
    home: Path, tmp_path: Path
) -> None:
    root = make_levircd(tmp_path / "LEVIR-CD")
    bad = root / "val" / "label" / "val_2.png"
    Image.new("L", (64, 64), 7).save(bad)
    result = CliRunner().invoke(main, ["import", "levir-cd", str(root)])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line == f"error: {bad}: label values 7; expected 0/1 or 0/255 (0 = no change)"
    store = _store(home)
    assert [c.message for c in store.log("main")] == ["Repository created"]
    assert store.uncommitted("main") == []


def test_ingest_pixel_grid_stores_a_manifest_and_undeclared_is_refused(
    home: Path, tmp_path: Path
) -> None:
    folder = pixel_scene(tmp_path / "crop")
    runner = CliRunner()
    refused = runner.invoke(main, ["ingest", "cd", str(folder), "--scene", "crop"])
    assert refused.exit_code == 1
    assert "pre.tif: has no coordinate reference system (not georeferenced)" in refused.output
    result = runner.invoke(main, ["ingest", "cd", str(folder), "--scene", "crop", "--pixel-grid"])
    assert result.exit_code == 0, result.output
    store = _store(home)
    scene = read_cd_scene(store, "main", "crop")
    assert scene.grid == "pixel" and all(o.passed for o in check_cd_scene(scene))
    assert not (folder / "scene.json").exists()
    nvs = runner.invoke(main, ["ingest", "nvs", str(folder), "--scene", "x", "--pixel-grid"])
    assert nvs.exit_code == 1 and "--pixel-grid applies to cd scenes, not nvs" in nvs.output


def test_ingest_pixel_grid_with_publish_passes_the_checks_on_its_branch(
    home: Path, tmp_path: Path
) -> None:
    folder = pixel_scene(tmp_path / "crop")
    result = CliRunner().invoke(
        main, ["ingest", "cd", str(folder), "--scene", "crop", "--pixel-grid", "--publish"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("published cd/crop: 2 check(s) passed")
    assert read_cd_scene(_store(home), "main", "crop").grid == "pixel"


def test_import_checks_with_the_pixel_budget_of_mlops_max_pixels_or_the_option(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_levircd(tmp_path / "LEVIR-CD")  # 64 x 64 px crops
    runner = CliRunner()
    monkeypatch.setenv("MLOPS_MAX_PIXELS", "4000")
    refused = runner.invoke(main, ["import", "levir-cd", str(root), "--split", "train"])
    assert refused.exit_code == 1
    (line,) = refused.output.strip().splitlines()
    assert line.startswith(f"error: {root / 'train' / 'A' / 'train_1.png'}: ")
    assert "pre.tif: 64 x 64 px is 4,096 pixels, over the budget of 4,000" in line
    assert [c.message for c in _store(home).log("main")] == ["Repository created"]
    option = ["import", "levir-cd", str(root), "--split", "train", "--max-pixels", "4096"]
    accepted = runner.invoke(main, option)
    assert accepted.exit_code == 0, accepted.output
    store = _store(home)
    assert store.get_commit(store.resolve("main")).message == "Import 2 levir-cd scenes (train)"
