"""The GPU check's CPU-side parts: the refusal without CUDA, versions, the step runner, the report.

The GPU steps themselves need CUDA and run only through ``make gpu-check`` on such a machine.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gpu_check import (
    Step,
    StepOutcome,
    StepReport,
    check_steps,
    junit_counts,
    main,
    run_steps,
    versions,
    write_report,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA build of torch on a machine whose driver is missing (as on the CI machines)."""

    def init() -> None:
        raise RuntimeError("Found no NVIDIA driver on your system.\nPlease check that ...")

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "init", init)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_without_cuda_it_stops_at_once_with_one_line(
    no_gpu: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    started = time.perf_counter()
    assert main(["--out", str(out)]) == 2
    assert time.perf_counter() - started < 5
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"no CUDA device: torch {torch.__version__} (built for CUDA 13.0) finds no usable GPU: "
        "Found no NVIDIA driver on your system.\n"
    )
    assert not out.exists()  # no report that could be mistaken for a run


def test_the_refusal_names_a_cpu_only_torch_and_hidden_devices(
    no_gpu: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert main([]) == 2
    assert capsys.readouterr().err.endswith(
        "Found no NVIDIA driver on your system. (CUDA_VISIBLE_DEVICES='')\n"
    )
    monkeypatch.setattr(torch.version, "cuda", None)
    assert main([]) == 2
    assert capsys.readouterr().err == (
        f"no CUDA device: torch {torch.__version__} is a CPU-only build (torch.version.cuda is "
        "None); install a CUDA build of torch (README, 'GPU check')\n"
    )


def test_versions_record_torch_gsplat_the_driver_and_the_pin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\necho '550.54.15'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}:/usr/bin:/bin")
    found = versions()
    assert found["driver"] == "550.54.15"
    assert found["torch"] == torch.__version__ and found["torch_cuda"] == torch.version.cuda
    assert found["gsplat"] == importlib.metadata.version("gsplat")
    assert found["torchvision"] == importlib.metadata.version("torchvision")
    pinned = found["torch_pinned"]
    assert f'"torch=={pinned}"' in (REPO / "pyproject.toml").read_text()
    assert found["torch_is_pinned"] == (torch.__version__.split("+")[0] == pinned)
    assert found["python"] == ".".join(map(str, sys.version_info[:3]))
    if not torch.cuda.is_available():
        assert found["gpu"] is None and found["gpu_count"] == 0
    json.dumps(found)  # goes into report.json as it is

    # The machine's own torch, not the pinned one: recorded as such, not refused.
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu124")
    other = versions()
    assert other["torch"] == "2.5.1+cu124" and other["torch_is_pinned"] is False


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_the_runner_records_each_failure_and_runs_the_next_step(tmp_path: Path) -> None:
    def child(body: str) -> str:
        # A step process that uses the check's own child protocol.
        return f"""
            import sys
            from benchmarks.gpu_check import StepReport, StepContext, run_child_step
            from pathlib import Path
            def step(context):
                {body}
            run_child_step(step, StepContext(Path("."), Path("."), "default"), Path(sys.argv[1]))
        """

    steps = [
        Step("crash", "exits", 60, lambda r: _python("print('loading'); raise SystemExit('lost')")),
        Step(
            "hang",
            "sleeps",
            1,
            lambda r: _python("import time; print('started', flush=True)\ntime.sleep(60)"),
        ),
        Step(
            "raises",
            "raises",
            60,
            lambda r: [*_python(child("raise ValueError('bad\\nx')")), str(r)],
        ),
        Step(
            "fine",
            "passes",
            60,
            lambda r: [
                *_python(child("return StepReport('pass', 'all good', {'rate': 2.5}, ['a.png'])")),
                str(r),
            ],
        ),
    ]
    seen: list[tuple[int, str]] = []
    started = time.perf_counter()
    outcomes = run_steps(steps, tmp_path, lambda n, o: seen.append((n, o.name)))
    assert time.perf_counter() - started < 30  # the sleeper was stopped at its limit
    assert seen == [(1, "crash"), (2, "hang"), (3, "raises"), (4, "fine")]
    crash, hang, raises, fine = outcomes
    assert crash.verdict == "fail"
    assert crash.report.summary == (
        "exited with status 1 without a result; last output: loading | lost"
    )
    assert hang.verdict == "fail" and hang.report.summary == "timed out after 1 s; started"
    assert raises.verdict == "fail" and raises.report.summary == "ValueError: bad"
    assert "Traceback" in (tmp_path / raises.log).read_text()  # the whole story is in its log
    assert fine.verdict == "pass" and fine.report.summary == "all good"
    assert fine.report.figures == {"rate": 2.5} and fine.report.files == ["a.png"]
    assert [o.log for o in outcomes] == [f"logs/{s.name}.log" for s in steps]
    assert all((tmp_path / o.log).is_file() for o in outcomes)


def test_the_report_says_what_passed_failed_and_missed(tmp_path: Path) -> None:
    (tmp_path / "frame.png").write_bytes(b"")
    outcomes = [
        StepOutcome(
            "kernels", "load kernels", 12.3, StepReport("pass", "loaded from a | cache"), "l/k"
        ),
        StepOutcome(
            "nvs",
            "nvs-gpu",
            80.0,
            StepReport(
                "missed",
                "0.91x, target ratio >= 0.95",
                {"ratio": 0.912345, "runs": [{"psnr": 30.1}]},
                ["frame.png"],
            ),
            "logs/nvs.log",
        ),
        StepOutcome("oom", "forced OOM", 3.0, StepReport("fail", "no error under the cap"), "l/o"),
    ]
    machine = versions()
    started = dt.datetime(2026, 12, 6, 10, 30, tzinfo=dt.UTC)
    path = write_report(tmp_path, machine, outcomes, started, 95.6)
    assert path == tmp_path / "report.md"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is False and report["seconds"] == 95.6
    assert report["date"] == "2026-12-06T10:30:00+00:00"
    assert report["versions"]["torch"] == torch.__version__
    assert [(s["name"], s["verdict"]) for s in report["steps"]] == [
        ("kernels", "pass"),
        ("nvs", "missed"),
        ("oom", "fail"),
    ]
    assert report["steps"][1]["figures"]["runs"] == [{"psnr": 30.1}]
    text = path.read_text()
    assert text.startswith("# GPU check, 2026-12-06 10:30 UTC\n\n**Not all steps passed** on ")
    assert "| kernels | PASS | 12 s | loaded from a \\| cache |" in text
    assert "| nvs | TARGET MISSED | 80 s | 0.91x, target ratio >= 0.95 |" in text
    assert "| oom | FAIL | 3 s | no error under the cap |" in text
    assert "| ratio | 0.9123 |" in text and '| runs | `[{"psnr": 30.1}]` |' in text
    assert "![NVS held-out view, truth | render](frame.png)" in text
    assert f"| torch | {torch.__version__} |" in text

    write_report(tmp_path, machine, outcomes[:1], started, 12.3)
    assert json.loads((tmp_path / "report.json").read_text())["passed"] is True
    assert "**All steps passed**" in (tmp_path / "report.md").read_text()


def test_junit_counts_reads_a_real_pytest_run(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(
        textwrap.dedent(
            """
            import pytest

            def test_ok():
                pass

            def test_bad():
                assert False

            @pytest.mark.skip(reason="no")
            def test_skipped():
                pass
            """
        )
    )
    xml = tmp_path / "out.xml"
    subprocess.run(
        # hydra's plugin cannot load beside the antlr4 runtime Dagster needs (pyproject addopts).
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:hydra_pytest",
            f"--junitxml={xml}",
        ],
        cwd=tmp_path,
        capture_output=True,
        check=False,
        timeout=120,
    )
    counts = junit_counts(xml)
    assert counts == {
        "passed": ["test_sample::test_ok"],
        "failed": ["test_sample::test_bad"],
        "errors": [],
        "skipped": ["test_sample::test_skipped"],
    }


def test_every_step_runs_as_a_child_of_the_check(tmp_path: Path) -> None:
    steps = check_steps(tmp_path, "default")
    assert [s.name for s in steps] == [
        "kernels",
        "pytest-gpu",
        "nvs",
        "cd-train",
        "cd-infer",
        "oom",
    ]
    argv = steps[2].argv(tmp_path / "nvs.json")
    assert argv[:5] == [sys.executable, "-m", "benchmarks.gpu_check", "--child", "nvs"]
    assert argv[5:] == [
        "--result",
        str(tmp_path / "nvs.json"),
        "--out",
        str(tmp_path),
        "--nvs-preset",
        "default",
    ]
    assert [s.name for s in check_steps(tmp_path, "default", ["oom", "nvs"])] == ["nvs", "oom"]
    assert set(gpu_check.STEPS) == {s.name for s in steps}
