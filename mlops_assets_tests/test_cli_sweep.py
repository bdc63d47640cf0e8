"""``mlops-assets sweep``: the cd_sweep job launched in-process, its options as run config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import dagster as dg
import pytest
from click.testing import CliRunner

from mlops_assets.cli import main


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    return tmp_path / "home"


def test_sweep_runs_the_job_with_its_options_and_reports_failure(home: Path) -> None:
    args = ["sweep", "--preset", "tiny", "--trials", "3", "--timeout", "60", "--workers", "2"]
    result = CliRunner().invoke(main, [*args, "--study", "s-1"])
    assert result.exit_code == 1
    assert "error: cd_sweep run " in result.output  # nothing to sweep on yet
    assert "no labelled, published tiles: materialise cd/tiles first" in result.output
    with dg.DagsterInstance.get() as instance:  # DAGSTER_HOME from the fixture
        (record,) = instance.get_run_records(dg.RunsFilter(job_name="cd_sweep"))
    run = record.dagster_run
    assert run.tags["mlops/trigger"] == "cli" and run.run_id in result.output
    ops = cast(dict[str, Any], run.run_config["ops"])
    assert ops["cd__sweep"]["config"] == {
        "preset": "tiny",
        "n_trials": 3,
        "timeout_s": 60.0,
        "n_workers": 2,
        "study_name": "s-1",
    }
    assert not (home / "optuna").exists()  # no study was created


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "Invalid value for '--workers'"),
        (["--trials", "0"], "Invalid value for '--trials'"),
        (["--timeout", "0"], "Invalid value for '--timeout'"),
        (["--preset", "huge"], "Invalid value for '--preset'"),
    ],
)
def test_bad_options_are_one_line(home: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["sweep", *args])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ") and message in line
