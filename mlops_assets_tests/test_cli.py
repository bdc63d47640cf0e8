from __future__ import annotations

import datetime as dt
import errno
import io
import multiprocessing
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner, Result
from PIL import Image
from rasterio.crs import CRS

from mlops_assets.cli import main
from mlops_assets.core.scenes.evaluation import read_evaluation_set, write_evaluation_set
from mlops_assets.core.scenes.ingest import plan_upload
from mlops_assets.core.scenes.layout import SceneKind
from mlops_assets.core.store import embedded as embedded_module
from mlops_assets.core.store.branches import PUBLISH_PREFIX, WRITE_PREFIX, work_branch_name
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.core.wap import ingest_branch_name, write_audit_publish
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
    for command in ("demo-data", "ingest", "scenes", "log", "partitions", "retrain", "gc", "fsck"):
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


def test_max_pixels_comes_from_the_setting_the_pipeline_reads(
    home: Path, demo_cd_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_MAX_PIXELS", "1000")  # the demo scene is 128 x 128 px
    runner = CliRunner()
    refused = runner.invoke(main, ["ingest", "cd", str(demo_cd_dir), "--scene", "farm"])
    assert refused.exit_code == 1
    assert "16,384 pixels, over the budget of 1,000" in refused.output
    assert list(_store(home).list("main", "cd/")) == []
    flag = ["ingest", "cd", str(demo_cd_dir), "--scene", "farm", "--max-pixels", "20000"]
    assert runner.invoke(main, flag).exit_code == 0  # the flag overrides the setting


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
    assert "committed 8 demo scenes to 'main'" in first.output
    store = _store(home)
    head = store.get_commit("main")  # the evaluation set, merged after the scenes' one merge
    assert head.message.startswith("Merge eval/scenes.json from write-eval-")
    scenes = store.get_commit(head.parents[0])
    assert scenes.metadata["merge_source"].startswith("write-scenes-")
    assert store.get_commit(scenes.parents[0]).message == "Repository created"
    assert read_evaluation_set(store, SceneKind.CD).scene_ids == ("valley-eval",)
    second = runner.invoke(main, ["demo-data", "--size", "64", "--image-size", "24"])
    assert "demo scenes already up to date" in second.output
    assert store.resolve("main") == head.id
    assert set(store.list_branches()) == {"main"}

    synced = runner.invoke(main, ["partitions", "sync"])
    assert synced.exit_code == 0, synced.output
    assert "cd: 5 scene partition(s), 5 new" in synced.output
    assert "nvs: 3 scene partition(s), 3 new" in synced.output
    again = runner.invoke(main, ["partitions", "sync"])
    assert "cd: 5 scene partition(s), 0 new: -" in again.output


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


# Isolated writes, gc, reset, fsck --------------------------------------------------------


def _one_error_line(result: Result) -> str:
    """The single line a failed command printed (never a traceback)."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_a_dirty_main_left_by_an_older_version_is_reset_then_ingest_works(
    home: Path, demo_cd_dir: Path
) -> None:
    store = _store(home)
    store.ensure_repository()
    store.put("main", "cd/farm/pre.tif", demo_cd_dir / "pre.tif")  # a killed old-style ingest
    runner = CliRunner()
    refused = runner.invoke(main, ["ingest", "cd", str(demo_cd_dir), "--scene", "other"])
    assert "`mlops-assets reset main`" in _one_error_line(refused)

    kept = runner.invoke(main, ["reset", "main"], input="n\n")
    assert kept.exit_code == 1 and "added    cd/farm/pre.tif" in kept.output
    assert "Drop these 1 uncommitted change(s) on 'main'?" in kept.output
    assert len(store.uncommitted("main")) == 1
    dropped = runner.invoke(main, ["reset", "main", "--yes"])
    assert dropped.exit_code == 0 and "dropped 1 uncommitted change(s) on 'main'" in dropped.output
    assert store.uncommitted("main") == []
    again = runner.invoke(main, ["reset", "main", "--yes"])
    assert "nothing to reset" in again.output

    result = runner.invoke(main, ["ingest", "cd", str(demo_cd_dir), "--scene", "other"])
    assert result.exit_code == 0, result.output
    assert set(store.list_branches()) == {"main"}


def test_gc_removes_abandoned_writer_branches_and_keeps_failed_audits(
    home: Path, demo_cd_dir: Path, tmp_path: Path
) -> None:
    store = _store(home)
    store.ensure_repository()
    long_ago = dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    now = dt.datetime.now(dt.UTC)
    killed_ingest = work_branch_name(WRITE_PREFIX, "farm", long_ago)
    killed_publish = work_branch_name(PUBLISH_PREFIX, "cd-farm", long_ago)
    running = work_branch_name(WRITE_PREFIX, "farm", now)
    killed_audit = ingest_branch_name("half", long_ago)
    for name in (killed_ingest, killed_publish, running, killed_audit):
        store.create_branch(name, "main")
    store.put(killed_ingest, "cd/farm/pre.tif", io.BytesIO(b"half an upload"))
    folder = tmp_path / "bad"
    shutil.copytree(demo_cd_dir, folder)
    shutil.copy(DATA / "rasterio" / "corrupt.tif", folder / "post.tif")
    failed = write_audit_publish(
        store, "main", plan_upload(SceneKind.CD, folder, "bad", None), when=long_ago
    )
    for file in (home / "lakefs" / "objects").rglob("*"):
        os.utime(file, (0, 0))  # everything written "long ago"
    runner = CliRunner()

    preview = runner.invoke(main, ["gc", "--dry-run"])
    assert preview.exit_code == 0, preview.output
    assert f"would remove branch {killed_ingest}: abandoned" in preview.output
    assert f"kept branch {running}: 0.0 h old, within the grace period" in preview.output
    assert len(store.list_branches()) == 6

    result = runner.invoke(main, ["gc"])
    assert result.exit_code == 0, result.output
    assert f"kept branch {failed.branch}: kept for inspection: checks-failed" in result.output
    assert "branches: removed 3, kept 2" in result.output
    assert "objects: removed 1 unreferenced (14 B) and 0 partial upload(s)" in result.output
    assert set(store.list_branches()) == {"main", running, failed.branch}
    assert store.exists(failed.branch, "cd/bad/post.tif")
    assert runner.invoke(main, ["fsck"]).exit_code == 0


def _flip(file: Path) -> None:
    file.chmod(0o644)
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def test_fsck_and_export_catch_flipped_bytes(home: Path, demo_cd_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", "cd", str(demo_cd_dir), "--scene", "farm"]).exit_code == 0
    clean = runner.invoke(main, ["fsck"])
    assert clean.exit_code == 0 and "all intact" in clean.output
    assert "4 object(s)" in clean.output  # the scene's 3 files and its writer marker
    store = _store(home)
    commit = store.resolve("main")
    _flip(store.physical_path("main", "cd/farm/post.tif"))

    damaged = runner.invoke(main, ["fsck"])
    assert damaged.exit_code == 1
    lines = damaged.output.strip().splitlines()
    assert lines[0].startswith(f"damaged: cd/farm/post.tif at commit {commit[:12]}: expected")
    assert lines[1].startswith("error: 1 of 4 object(s) in 'scenes' are damaged")

    out = tmp_path / "out"
    export = runner.invoke(main, ["export", str(out), "--ref", "main", "--prefix", "cd/farm/"])
    line = _one_error_line(export)
    assert f"cd/farm/post.tif at commit {commit[:12]} is corrupt: expected SHA-256" in line
    assert list(out.iterdir()) == []  # nothing, not the objects that were fine

    # Ingesting the original files again repairs the object (it is not deduplicated away).
    again = runner.invoke(main, ["ingest", "cd", str(demo_cd_dir), "--scene", "farm"])
    assert "no changes" in _one_error_line(again)  # the same content: nothing to commit
    assert runner.invoke(main, ["fsck"]).exit_code == 0


def test_file_system_errors_are_one_line(
    home: Path, demo_cd_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", "cd", str(demo_cd_dir), "--scene", "farm"]).exit_code == 0
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    export = runner.invoke(main, ["export", str(blocker / "out"), "--ref", "main"])
    assert f"({blocker} is a file, not a directory)" in _one_error_line(export)

    monkeypatch.setenv("MLOPS_HOME", str(blocker))
    home_is_a_file = runner.invoke(main, ["scenes"])
    assert f"({blocker} is a file, not a directory)" in _one_error_line(home_is_a_file)
    monkeypatch.setenv("MLOPS_HOME", str(home))

    real_fdopen = os.fdopen

    class FullDisk(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device", str(home / "lakefs" / "tmp"))

    def full_disk(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode:
            os.close(fd)
            return FullDisk()
        return real_fdopen(fd, mode, *args, **kwargs)

    monkeypatch.setattr(embedded_module.os, "fdopen", full_disk)
    full = runner.invoke(main, ["ingest", "cd", str(demo_cd_dir), "--scene", "second"])
    line = _one_error_line(full)
    assert "No space left on device (the disk is full" in line
    monkeypatch.undo()

    def denied(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(demo_cd_dir / "post.tif"))

    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setattr(EmbeddedStore, "put", denied)
    publish = runner.invoke(main, ["ingest", "cd", str(demo_cd_dir), "--scene", "p", "--publish"])
    assert f"{demo_cd_dir / 'post.tif'}: Permission denied" in _one_error_line(publish)
    assert set(_store(home).list_branches()) == {"main"}  # the ingest branch went too


def test_an_engineering_crs_and_gdal_warnings_end_in_one_line(
    home: Path, demo_cd_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "local"
    shutil.copytree(demo_cd_dir, folder)
    with rasterio.open(demo_cd_dir / "post.tif") as src:
        profile, data = src.profile, src.read()
    profile["crs"] = CRS.from_wkt(
        'LOCAL_CS["Site grid",UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]'
    )
    with rasterio.open(folder / "post.tif", "w", **profile) as dst:
        dst.write(data)
    runner = CliRunner()
    plain = runner.invoke(main, ["ingest", "cd", str(folder), "--scene", "site"])
    assert "post.tif: its CRS is an engineering (local) CRS ('Site grid')" in _one_error_line(plain)
    published = runner.invoke(main, ["ingest", "cd", str(folder), "--scene", "site", "--publish"])
    assert published.exit_code == 3 and published.exception is not None
    assert "its CRS is an engineering (local) CRS" in published.output
    assert "Traceback" not in published.output

    # A plain TIFF: rasterio warns that it has no geotransform, on every open.
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "post.tif")
    warned = runner.invoke(main, ["ingest", "cd", str(folder), "--scene", "site"])
    line = _one_error_line(warned)
    assert "has no coordinate reference system" in line
    assert "(GDAL/rasterio said: NotGeoreferencedWarning" in line


def _terminated_ingest(home: str, folder: str, log: str) -> None:
    os.environ["MLOPS_HOME"] = home
    slow_put = EmbeddedStore.put

    def put(self: EmbeddedStore, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)
        return slow_put(self, *args, **kwargs)

    EmbeddedStore.put = put  # type: ignore[method-assign]
    with open(log, "w") as err:  # noqa: PTH123 (a file object for sys.stderr)
        sys.stderr = err
        main(["ingest", "cd", folder, "--scene", "farm"])


def test_sigterm_cleans_up_like_ctrl_c(home: Path, demo_cd_dir: Path, tmp_path: Path) -> None:
    store = _store(home)
    store.ensure_repository()
    before = store.resolve("main")
    log = tmp_path / "stderr.txt"
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_terminated_ingest, args=(str(home), str(demo_cd_dir), str(log)))
    child.start()
    deadline = time.monotonic() + 60
    while not any(b.startswith("write-") for b in store.list_branches()):
        assert time.monotonic() < deadline and child.is_alive()
        time.sleep(0.05)
    os.kill(child.pid or 0, signal.SIGTERM)
    child.join(timeout=60)
    assert child.exitcode == 143
    assert log.read_text().strip().splitlines() == [
        "error: interrupted (SIGTERM); what this command had not merged or committed was dropped"
    ]
    assert store.resolve("main") == before and store.uncommitted("main") == []
    assert set(store.list_branches()) == {"main"}  # its branch was deleted, as on Ctrl-C


def test_usage_errors_are_one_line_too(home: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["ingest", "cd", str(tmp_path / "missing"), "--scene", "a"])
    line = _one_error_line(result)
    assert "Directory" in line and "does not exist" in line and "--help)" in line
    assert "Usage:" not in result.output


def test_demo_data_adds_its_evaluation_scene_to_a_users_own(home: Path) -> None:
    store = _store(home)
    store.ensure_repository()
    write_evaluation_set(store, SceneKind.CD, ["my-held-out"])
    result = CliRunner().invoke(main, ["demo-data", "--size", "64", "--image-size", "24"])
    assert result.exit_code == 0, result.output
    assert read_evaluation_set(store, SceneKind.CD, check=False).scene_ids == (
        "my-held-out",
        "valley-eval",
    )
