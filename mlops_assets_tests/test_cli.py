from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from mlops_assets.cli import main
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets_tests.conftest import DATA


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    return tmp_path / "home"


def _store(home: Path) -> EmbeddedStore:
    return EmbeddedStore(home / "lakefs", "scenes")


def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("demo-data", "ingest", "scenes", "log", "partitions", "retrain"):
        assert command in result.output


def test_ingest_scenes_and_log(home: Path, demo_cd_dir: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        main, ["ingest", "cd", str(demo_cd_dir), "--scene", "farm", "--message", "first farm"]
    )
    assert result.exit_code == 0, result.output
    head = _store(home).resolve("main")
    assert f"committed cd/farm to 'main' as {head}" in result.output
    result = runner.invoke(
        main, ["ingest", "nvs", str(DATA / "kapture" / "maupertuis"), "--scene", "maup"]
    )
    assert result.exit_code == 0, result.output

    scenes = runner.invoke(main, ["scenes"])
    assert scenes.output.split() == ["cd/farm", "nvs/maup"]
    ids = runner.invoke(main, ["scenes", "--kind", "cd", "--ids"])
    assert ids.output.split() == ["farm"]
    log = runner.invoke(main, ["log", "--prefix", "cd/"])
    assert "first farm" in log.output and "scenes: cd/farm" in log.output
    assert "Ingest nvs scene maup" not in log.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scene", "../up"], "error: invalid scene id '../up': it contains '..'"),
        (["--scene", "farm", "--branch", "nope"], "error: branch 'nope' not found"),
    ],
)
def test_errors_are_one_line(home: Path, demo_cd_dir: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["ingest", "cd", str(demo_cd_dir), *args])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message)
    assert _store(home).uncommitted("main") == []


def test_corrupt_geotiff_is_refused_and_nothing_committed(
    home: Path, demo_cd_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(demo_cd_dir, folder)
    shutil.copy(DATA / "rasterio" / "corrupt.tif", folder / "pre.tif")
    result = CliRunner().invoke(main, ["ingest", "cd", str(folder), "--scene", "bad"])
    assert result.exit_code == 1
    assert f"{folder / 'pre.tif'}: not a readable GeoTIFF" in result.output
    assert [c.message for c in _store(home).log("main")] == ["Repository created"]


def test_unknown_ref(home: Path) -> None:
    result = CliRunner().invoke(main, ["scenes", "--ref", "no-such-ref"])
    assert result.exit_code == 1
    assert "error: ref 'no-such-ref' not found" in result.output


def test_demo_data_is_idempotent_and_partitions_sync(home: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["demo-data", "--size", "64", "--image-size", "24"])
    assert first.exit_code == 0, first.output
    assert "committed 7 demo scenes to 'main'" in first.output
    store = _store(home)
    head = store.get_commit("main")  # one merge from the writer's own branch
    assert head.metadata["merge_source"].startswith("write-scenes-")
    assert store.get_commit(head.parents[0]).message == "Repository created"
    second = runner.invoke(main, ["demo-data", "--size", "64", "--image-size", "24"])
    assert "demo scenes already up to date" in second.output
    assert store.resolve("main") == head.id
    assert set(store.list_branches()) == {"main"}

    synced = runner.invoke(main, ["partitions", "sync"])
    assert synced.exit_code == 0, synced.output
    assert "cd: 4 scene partition(s), 4 new" in synced.output
    assert "nvs: 3 scene partition(s), 3 new" in synced.output
    again = runner.invoke(main, ["partitions", "sync"])
    assert "cd: 4 scene partition(s), 0 new: -" in again.output


def test_ingest_publish_merges_a_scene_that_passes_its_checks(
    home: Path, demo_cd_dir: Path
) -> None:
    result = CliRunner().invoke(
        main, ["ingest", "cd", str(demo_cd_dir), "--scene", "farm", "--publish"]
    )
    assert result.exit_code == 0, result.output
    store = _store(home)
    merge = store.get_commit("main")
    assert f"merged into 'main' as {merge.id}" in result.output
    assert "published cd/farm: 2 check(s) passed on 'ingest-farm-" in result.output
    assert merge.metadata["merge_source"].startswith("ingest-farm-")
    assert store.get_commit(merge.parents[1]).metadata["ingested_by"] == (
        "mlops-assets ingest --publish"
    )
    assert store.exists("main", "cd/farm/post.tif")


def test_ingest_publish_refuses_a_failing_scene_and_keeps_its_branch(
    home: Path, demo_cd_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(demo_cd_dir, folder)
    shutil.copy(DATA / "rasterio" / "corrupt.tif", folder / "post.tif")
    store = _store(home)
    store.ensure_repository()
    before = store.resolve("main")

    result = CliRunner().invoke(main, ["ingest", "cd", str(folder), "--scene", "bad", "--publish"])

    assert result.exit_code == 3
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("error: cd/bad failed 2 of 2 check(s) on branch 'ingest-bad-")
    assert f"'main' unchanged at {before}; the branch is kept for inspection" in lines[0]
    assert lines[1].startswith("  files_present_and_readable: cd/bad/post.tif: not a readable")
    assert lines[2].startswith("  footprints_overlap_and_bands_match: ")
    assert store.resolve("main") == before
    (branch,) = [b for b in store.list_branches() if b != "main"]
    assert branch.startswith("ingest-bad-") and store.exists(branch, "cd/bad/post.tif")


def test_retrain_runs_the_job_on_the_instance_and_reports_failure(home: Path) -> None:
    result = CliRunner().invoke(main, ["retrain", "--preset", "tiny"])
    assert result.exit_code == 1
    assert "error: cd_retrain run " in result.output  # nothing to train on yet
    assert "no labelled, published tiles" in result.output
    with dg.DagsterInstance.get() as instance:  # DAGSTER_HOME from the fixture
        (record,) = instance.get_run_records(dg.RunsFilter(job_name="cd_retrain"))
    run = record.dagster_run
    assert run.tags["mlops/trigger"] == "cli"
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert run.run_id in result.output
