"""The end of `make demo`: figures marked against the quality bars, and each run's steps timed.

Read back from a real (temporary) Dagster instance: materialisations reported as the demo's
assets report them, and a real run of two small assets and a check for the step timings.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from scripts import demo_summary
from scripts.demo_summary import DEMO_BARS, Verdicts, cd_lines, nvs_lines, timing_lines


def report(
    instance: dg.DagsterInstance,
    key: list[str],
    metadata: Mapping[str, Any],
    partition: str | None = None,
) -> None:
    """Record a materialisation as the demo's asset would, with these metadata values."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=key, partition=partition, metadata=dict(metadata))
    )


@pytest.fixture
def demo_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    """An instance in DAGSTER_HOME holding what a demo made: one map and one capture below bar."""
    home = tmp_path / "dagster"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("cd_scenes", ["farmland", "suburb", "unlabelled"])
        instance.add_dynamic_partitions("nvs_scenes", ["globe", "ring"])
        model = {"val_f1": 0.962, "best_epoch": 23, "epochs_run": 28}
        report(instance, ["cd", "model"], model | {"train_tiles": 300, "val_tiles": 60})
        report(instance, ["cd", "registered_model"], {"version": "1"})
        maps = {"farmland": 0.962, "suburb": 0.921, "unlabelled": None}
        for scene, f1 in maps.items():
            meta = {"f1_vs_label": f1, "changed_percent": 3.2, "model": "unet/1"}
            report(instance, ["cd", "change_map"], meta, scene)
        for scene, psnr in {"globe": 34.3, "ring": 29.1}.items():
            meta = {"psnr": psnr, "ssim": 0.95, "num_gaussians": 5000}
            report(instance, ["nvs", "splats"], meta, scene)
        yield instance


def line_with(lines: list[str], text: str) -> str:
    (found,) = [line for line in lines if text in line]
    return found


def test_default_preset_figures_are_marked_against_their_bars(
    demo_home: dg.DagsterInstance,
) -> None:
    verdicts = Verdicts(DEMO_BARS)
    lines = cd_lines(demo_home, verdicts) + nvs_lines(demo_home, verdicts)

    assert "validation F1 0.962 (bar 0.95) ok (best epoch 23 of 28 run)" in lines[1]
    assert "0.962 (bar 0.93) ok" in line_with(lines, "farmland")
    assert "0.921 (bar 0.93) BELOW BAR" in line_with(lines, "suburb")
    assert "bar" not in line_with(lines, "unlabelled")  # no label: nothing to judge
    assert "34.30 (bar 30) ok" in line_with(lines, "globe")
    assert "29.10 (bar 30) BELOW BAR" in line_with(lines, "ring")
    assert verdicts.lines("") == [
        "Quality bars (CD validation F1 >= 0.95, change-map F1 >= 0.93, held-out PSNR >= 30 dB):"
        " 2 of 5 BELOW BAR or missing",
        "  cd/change_map suburb F1 0.921 < 0.93",
        "  nvs/splats ring PSNR 29.10 < 30",
    ]


def test_all_figures_held_and_a_missing_one_is_not(demo_home: dg.DagsterInstance) -> None:
    report(demo_home, ["cd", "change_map"], {"f1_vs_label": 0.95}, "suburb")
    report(demo_home, ["nvs", "splats"], {"psnr": 30.0}, "ring")
    verdicts = Verdicts(DEMO_BARS)
    cd_lines(demo_home, verdicts)
    nvs_lines(demo_home, verdicts)
    assert verdicts.lines("")[0].endswith(": all 5 figures held")

    demo_home.add_dynamic_partitions("nvs_scenes", ["toy-blocks"])  # its run failed: no splats
    verdicts = Verdicts(DEMO_BARS)
    lines = nvs_lines(demo_home, verdicts)
    assert "- (bar 30) MISSING (not trained)" in line_with(lines, "toy-blocks")
    verdict = verdicts.lines("")
    assert verdict[0].endswith(": 1 of 3 BELOW BAR or missing")
    assert verdict[1:] == ["  nvs/splats toy-blocks PSNR: no figure"]


def test_tiny_preset_is_not_judged(
    demo_home: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["demo_summary.py", "--not-judged", "PRESET=tiny: a quick run"]
    monkeypatch.setattr(sys, "argv", argv)
    demo_summary.main()
    out = capsys.readouterr().out
    assert "validation F1 0.962 (best epoch" in out and "29.10" in out
    assert "bar" not in out.replace("Quality bars", "")
    assert "Quality bars: not judged (PRESET=tiny: a quick run)" in out


@dg.asset(key=["toy", "first"], partitions_def=dg.StaticPartitionsDefinition(["p1", "p2"]))
def first() -> int:
    time.sleep(0.3)
    return 1


@dg.asset(key=["toy", "second"], partitions_def=dg.StaticPartitionsDefinition(["p1", "p2"]))
def second(first: int) -> int:
    time.sleep(0.6)
    return first + 1


@dg.asset_check(asset=["toy", "first"])
def first_is_one() -> dg.AssetCheckResult:  # (loading its input would load every partition)
    return dg.AssetCheckResult(passed=True)


def test_each_run_is_broken_down_into_its_steps(tmp_path: Path) -> None:
    # As `dagster asset materialize --select ... --partition ...` runs them: the asset job with an
    # asset selection and a partition (the check comes with its asset).
    job = dg.Definitions(
        assets=[first, second], asset_checks=[first_is_one]
    ).resolve_implicit_global_asset_job_def()
    chain = [dg.AssetKey(["toy", "first"]), dg.AssetKey(["toy", "second"])]
    with dg.instance_for_test() as instance:
        for _ in range(2):  # the newest run of a selection and partition counts
            result = job.execute_in_process(
                instance=instance, partition_key="p2", asset_selection=chain
            )
            assert result.success
        other = job.execute_in_process(
            instance=instance, partition_key="p1", asset_selection=chain[:1]
        )
        timings = tmp_path / "timings.tsv"
        timings.write_text(
            "demo-data\t4.0\t3.5\t1.2\t-\t-\n"
            "toy/first..toy/second p2\t3.0\t2.9\t1.5\ttoy/first,toy/second\tp2\n"
            "toy/first p1\t2.0\t1.9\t1.6\ttoy/first\tp1\n"
            "partitions sync\t1.0\t0.9\t1.6\n"  # a row as older demo scripts wrote it
        )
        lines = timing_lines(timings, 10, instance)

        assert lines[3].split() == ["demo-data", "4.0", "3.5", "1.2"]
        steps = lines[5:9]  # under the chain's row, each step (asset or check) as it ran
        walls = {line.split()[0]: float(line.split()[-1]) for line in steps}
        names = list(walls)
        assert names[0] == "toy/first" and names[-1] == "outside"
        assert set(walls) == {"toy/first", "toy/first_first_is_one", "toy/second", "outside"}
        assert 0.3 <= walls["toy/first"] < 3.0 and 0.6 <= walls["toy/second"] < 3.0
        in_steps = sum(wall for name, wall in walls.items() if name != "outside")
        assert walls["outside"] == pytest.approx(3.0 - in_steps, abs=0.11)
        newest = instance.get_run_records(limit=2)[1].dagster_run.run_id  # the last p2 run
        stats = {s.step_key: s for s in instance.get_run_step_stats(newest)}
        second_stats = stats["toy__second"]
        assert second_stats.start_time is not None and second_stats.end_time is not None
        assert walls["toy/second"] == round(second_stats.end_time - second_stats.start_time, 1)
        # The single-asset run is found by its own selection, not the chain's.
        assert other.success and [line.split()[0] for line in lines[10:13]] == [
            "toy/first",
            "toy/first_first_is_one",
            "outside",
        ]
        assert lines[13].split()[:2] == ["partitions", "sync"] and len(lines) == 16
