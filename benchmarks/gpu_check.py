"""``python -m benchmarks.gpu_check`` (``make gpu-check``): every GPU path, on this machine's GPU.

One command for a machine with an NVIDIA GPU. Each step runs in a fresh process with its own time
limit, so a crashed CUDA context, a memory cap or a hung kernel stays inside that step:

1. ``kernels``: load gsplat's CUDA kernels (a prebuilt wheel, a JIT build cached by an earlier
   run, or a JIT build now, timed), then render and back-propagate once with them.
2. ``pytest-gpu``: ``pytest -m gpu`` (the CPU rasteriser against gsplat's; a real CUDA
   out-of-memory failure of the ``nvs/splats`` asset).
3. ``nvs``: the ``nvs-gpu`` benchmark at the ``default`` preset: `train_splats` against a bare
   gsplat loop (same scene, steps, strategy and learning rates), each twice, alternating:
   steps/s, held-out PSNR against the bare loop's own spread, peak GPU memory, final Gaussian
   count. The package's held-out render (truth | render) is saved as ``frame.png``.
4. ``cd-train``: change-detection training for 2 epochs on CUDA against the ``training``
   benchmark's bare loop (samples/s), then one change map from the trained model
   (``change_map.png``).
5. ``cd-infer``: the ``inference`` benchmark on CUDA (Mpx/s against the bare forward, 2048 px).
6. ``oom``: densification forced to outgrow a 512 MiB memory cap; the error must name the step
   and the Gaussian count, the last checkpoint must load, and the memory must be released.

Versions (Python, torch and its CUDA, cuDNN, the driver, gsplat, nvcc, the GPU, whether torch is
the pinned one) are recorded first. A failed step is recorded and the next one still runs. The
report goes to ``--out`` (default ``$MLOPS_HOME/gpu-check/<UTC time>``, ``MLOPS_HOME`` defaulting
to ``.mlops``): ``report.md``, ``report.json``, the PNGs and one log per step. Its folder is the
last line printed.

Exit status: 0 when every step passed (targets included), 1 when any failed or missed its target,
2 when there is no usable CUDA device (one line says why; nothing is run or written). Without a
prebuilt gsplat the first run builds its kernels (minutes, timed in the report); after that the
check takes about 6 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from xml.etree import ElementTree

import torch

from benchmarks.common import BenchResult

REPO = Path(__file__).resolve().parent.parent
Verdict = Literal["pass", "fail", "missed"]
#: The memory cap of the ``oom`` step, above what the process holds when it starts.
OOM_CAP_MIB = 512


@dataclass(frozen=True)
class StepReport:
    """What a step found: a verdict, one line, its figures, and the files it left in the report."""

    verdict: Verdict  # "missed": it ran, but a target was not met
    summary: str
    figures: dict[str, Any] = field(default_factory=lambda: dict[str, Any]())
    files: list[str] = field(default_factory=lambda: list[str]())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> StepReport:
        """Inverse of `to_dict`."""
        return cls(
            verdict=value["verdict"],
            summary=value["summary"],
            figures=dict(value.get("figures") or {}),
            files=list(value.get("files") or []),
        )


@dataclass(frozen=True)
class StepOutcome:
    """A step as the report shows it: what it is, how long it took, and its `StepReport`."""

    name: str
    about: str
    seconds: float
    report: StepReport
    log: str  # the step's output, relative to the report folder

    @property
    def verdict(self) -> Verdict:
        """The step's verdict."""
        return self.report.verdict

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "name": self.name,
            "about": self.about,
            "seconds": self.seconds,
            "log": self.log,
            **self.report.to_dict(),
        }


@dataclass(frozen=True)
class Step:
    """A step of the check: its name, what it does, its time limit and its command.

    ``argv(result)`` is the command line; the command writes its `StepReport` as JSON to
    ``result``. Everything it prints goes to the step's log.
    """

    name: str
    about: str
    timeout_s: float
    argv: Callable[[Path], list[str]]


@dataclass(frozen=True)
class StepContext:
    """What a step's process is given: the report folder, scratch space and the NVS preset."""

    out: Path
    work: Path
    preset: str


# The machine ---------------------------------------------------------------------------------


def cuda_problem() -> str | None:
    """Why this process cannot use a CUDA device, or None when it can."""
    build = torch.version.cuda
    if build is None:
        return (
            f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None); "
            "install a CUDA build of torch (README, 'GPU check')"
        )
    if torch.cuda.is_available():
        return None
    detail = "torch.cuda.is_available() is False"
    try:
        torch.cuda.init()
    except Exception as exc:  # the driver's own reason, e.g. "Found no NVIDIA driver"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        detail += f" (CUDA_VISIBLE_DEVICES={visible!r})"
    return f"torch {torch.__version__} (built for CUDA {build}) finds no usable GPU: {detail}"


def _run_text(argv: Sequence[str], timeout: float = 20.0) -> str | None:
    """A command's stdout, or None when it is missing, fails or hangs."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def driver_version() -> str | None:
    """The NVIDIA driver's version: nvidia-smi, else /proc/driver/nvidia/version."""
    text = _run_text(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    if text and text.strip():
        return text.strip().splitlines()[0].strip()
    with contextlib.suppress(OSError):
        found = re.search(r"Kernel Module\s+(\S+)", Path("/proc/driver/nvidia/version").read_text())
        if found:
            return found.group(1)
    return None


def nvcc_version() -> tuple[str | None, str | None]:
    """(nvcc's release, CUDA_HOME) as torch's extension builder finds them, for a JIT build."""
    from torch.utils.cpp_extension import CUDA_HOME

    candidates = [str(Path(CUDA_HOME) / "bin" / "nvcc")] if CUDA_HOME else []
    candidates.append("nvcc")
    for nvcc in candidates:
        text = _run_text([nvcc, "--version"])
        found = re.search(r"release ([\d.]+)", text or "")
        if found:
            return found.group(1), CUDA_HOME
    return None, CUDA_HOME


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def pinned_torch() -> str | None:
    """The torch version pyproject.toml pins (``torch==X``)."""
    with contextlib.suppress(OSError, tomllib.TOMLDecodeError):
        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        for requirement in project.get("dependencies", []):
            found = re.fullmatch(r"torch\s*==\s*([^\s;]+)", requirement.strip())
            if found:
                return found.group(1)
    return None


def versions() -> dict[str, Any]:
    """What the check runs on: interpreter, torch and its CUDA, driver, gsplat, nvcc, the GPU."""
    pinned = pinned_torch()
    nvcc, cuda_home = nvcc_version()
    cuda = torch.cuda.is_available()
    props = torch.cuda.get_device_properties(0) if cuda else None
    git = _run_text(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"])
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_pinned": pinned,
        "torch_is_pinned": pinned is not None and torch.__version__.split("+")[0] == pinned,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "torchvision": _package_version("torchvision"),
        "gsplat": _package_version("gsplat"),
        "numpy": _package_version("numpy"),
        "dagster": _package_version("dagster"),
        "driver": driver_version(),
        "nvcc": nvcc,
        "cuda_home": cuda_home,
        "gpu": None if props is None else props.name,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "gpu_capability": None if props is None else f"{props.major}.{props.minor}",
        "gpu_memory_mib": None if props is None else round(props.total_memory / 2**20),
        "git_sha": git.strip() if git else None,
    }


# Running steps -------------------------------------------------------------------------------


def _log_tail(path: Path, lines: int = 3) -> str:
    with contextlib.suppress(OSError):
        text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        return " | ".join(line.strip() for line in text[-lines:])
    return ""


def run_step(step: Step, out: Path) -> StepOutcome:
    """Run ``step`` in its own process group under its time limit; a crash is a failed step."""
    result = out / "steps" / f"{step.name}.json"
    log = out / "logs" / f"{step.name}.log"
    result.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    started = time.perf_counter()
    code: int | None
    with log.open("wb") as sink:
        process = subprocess.Popen(
            step.argv(result),
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own group: a timeout stops it and all it started
        )
        try:
            code = process.wait(timeout=step.timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
    seconds = time.perf_counter() - started
    if code is None:
        report = StepReport("fail", f"timed out after {step.timeout_s:.0f} s; {_log_tail(log)}")
    elif result.is_file():
        try:
            report = StepReport.from_dict(json.loads(result.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            report = StepReport("fail", f"unreadable result {result.name}: {exc}")
    else:
        report = StepReport(
            "fail", f"exited with status {code} without a result; last output: {_log_tail(log)}"
        )
    return StepOutcome(step.name, step.about, seconds, report, log.relative_to(out).as_posix())


def run_steps(
    steps: Sequence[Step], out: Path, on_done: Callable[[int, StepOutcome], None] | None = None
) -> list[StepOutcome]:
    """Every step in order, whatever the ones before did."""
    outcomes: list[StepOutcome] = []
    for number, step in enumerate(steps, 1):
        outcomes.append(run_step(step, out))
        if on_done is not None:
            on_done(number, outcomes[-1])
    return outcomes


def run_child_step(
    fn: Callable[[StepContext], StepReport], context: StepContext, result: Path
) -> None:
    """Run one step function and write its report; an exception is a failed step, not a crash."""
    try:
        report = fn(context)
    except Exception as exc:
        traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        report = StepReport("fail", f"{type(exc).__name__}: {first}".rstrip(": "))
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=1, default=str))
    tmp.replace(result)


# The report ----------------------------------------------------------------------------------

_LABELS = {"pass": "PASS", "fail": "FAIL", "missed": "TARGET MISSED"}
_IMAGES = {"frame.png": "NVS held-out view, truth | render", "change_map.png": "change map"}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return f"`{json.dumps(value, default=str)}`"
    return str(value).replace("|", "\\|")


def write_report(
    out: Path,
    machine: Mapping[str, Any],
    outcomes: Sequence[StepOutcome],
    started_at: dt.datetime,
    seconds: float,
) -> Path:
    """Write ``report.json`` and ``report.md`` into ``out``; return the Markdown file."""
    passed = bool(outcomes) and all(o.verdict == "pass" for o in outcomes)
    payload = {
        "date": started_at.isoformat(timespec="seconds"),
        "seconds": seconds,
        "passed": passed,
        "versions": dict(machine),
        "steps": [o.to_dict() for o in outcomes],
    }
    (out / "report.json").write_text(json.dumps(payload, indent=1, default=str))

    gpu = machine.get("gpu") or "no GPU"
    lines = [
        f"# GPU check, {started_at:%Y-%m-%d %H:%M} UTC",
        "",
        f"**{'All steps passed' if passed else 'Not all steps passed'}** on {gpu}, "
        f"in {seconds / 60:.1f} min.",
        "",
        "| step | result | time | summary |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {o.name} | {_LABELS[o.verdict]} | {o.seconds:.0f} s | {_cell(o.report.summary)} |"
        for o in outcomes
    ]
    lines += ["", "## Versions", "", "| what | version |", "|---|---|"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in machine.items()]
    for o in outcomes:
        lines += ["", f"## {o.name}: {_LABELS[o.verdict]}", "", o.about, "", o.report.summary, ""]
        if o.report.figures:
            lines += ["| figure | value |", "|---|---|"]
            lines += [f"| {k} | {_cell(v)} |" for k, v in o.report.figures.items()]
            lines.append("")
        lines += [f"![{_IMAGES.get(name, name)}]({name})" for name in o.report.files]
        lines.append(f"Log: [{o.log}]({o.log})")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# The steps (each runs in its own process) ----------------------------------------------------


def _row_report(row: BenchResult, extra_ok: bool = True, files: Sequence[str] = ()) -> StepReport:
    """A benchmark row as a step report: 'missed' when its target (or ``extra_ok``) fails."""
    verdict: Verdict = "pass" if row.passed is not False and extra_ok else "missed"
    ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
    summary = (
        f"{_cell(row.measured)} vs {_cell(row.reference)} {row.unit} ({ratio}; target "
        f"{row.target}); {row.note}"
    )
    return StepReport(verdict, summary, row.to_dict(), list(files))


def step_kernels(context: StepContext) -> StepReport:
    """Load gsplat's CUDA kernels (prebuilt, cached JIT build, or a JIT build now) and use them."""
    import importlib
    import importlib.util

    from torch.utils import cpp_extension

    prebuilt = importlib.util.find_spec("gsplat.csrc") is not None
    # Where gsplat's JIT build goes: gsplat asks torch the same way (gsplat/cuda/_backend.py).
    build_dir = Path(cpp_extension._get_build_directory("gsplat_cuda", verbose=False))
    cached = (build_dir / "gsplat_cuda.so").is_file()
    started = time.perf_counter()
    backend = importlib.import_module("gsplat.cuda._backend")  # builds the kernels if need be
    seconds = time.perf_counter() - started
    nvcc, cuda_home = nvcc_version()
    figures: dict[str, Any] = {
        "seconds": round(seconds, 1),
        "prebuilt": prebuilt,
        "build_dir": str(build_dir),
        "nvcc": nvcc,
        "cuda_home": cuda_home,
        "torch_cuda": torch.version.cuda,
    }
    if getattr(backend, "_C", None) is None:
        return StepReport(
            "fail",
            f"gsplat's CUDA kernels are unavailable: no prebuilt gsplat.csrc and no CUDA toolkit "
            f"(nvcc) for a JIT build (CUDA_HOME={cuda_home}); install the toolkit for torch's "
            f"CUDA {torch.version.cuda} or a prebuilt gsplat wheel",
            figures,
        )
    if prebuilt:
        mode = f"prebuilt kernels (gsplat.csrc) loaded in {seconds:.1f} s"
    elif cached:
        mode = f"JIT build loaded from {build_dir} in {seconds:.1f} s"
    else:
        mode = f"JIT-built with nvcc {nvcc} in {seconds:.0f} s into {build_dir}"
    figures["mode"] = mode

    from gsplat import rasterization

    generator = torch.Generator().manual_seed(0)
    n, width, height = 2000, 64, 48
    means = (torch.randn(n, 3, generator=generator) * 0.5).cuda().requires_grad_(True)
    quats = torch.randn(n, 4, generator=generator).cuda()
    scales = (torch.rand(n, 3, generator=generator) * 0.05 + 0.01).cuda()
    opacities = torch.full((n,), 0.5).cuda()
    colours = torch.rand(n, 3, generator=generator).cuda()
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0
    k = torch.tensor([[60.0, 0, width / 2], [0, 60.0, height / 2], [0, 0, 1]])
    image, _, _ = rasterization(
        means,
        quats,
        scales,
        opacities,
        colours,
        viewmat[None].cuda(),
        k[None].cuda(),
        width,
        height,
    )
    image.sum().backward()
    torch.cuda.synchronize()
    grad = means.grad
    if grad is None or not bool(torch.isfinite(grad).all()) or float(image.max()) <= 0.0:
        return StepReport(
            "fail", f"{mode}, but a {width}x{height} render was empty or NaN", figures
        )
    return StepReport("pass", f"{mode}; a {width}x{height} render and its backward ran", figures)


def junit_counts(path: Path) -> dict[str, Any]:
    """Passed, failed, errored and skipped test ids from a pytest JUnit XML file."""
    counts: dict[str, Any] = {"passed": [], "failed": [], "errors": [], "skipped": []}
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            counts["failed"].append(test_id)
        elif case.find("error") is not None:
            counts["errors"].append(test_id)
        elif case.find("skipped") is not None:
            counts["skipped"].append(test_id)
        else:
            counts["passed"].append(test_id)
    return counts


def step_pytest(context: StepContext) -> StepReport:
    """``pytest -m gpu``; a skipped GPU test fails the step (CUDA was not seen where it runs)."""
    xml = context.out / "logs" / "pytest-gpu.xml"  # kept beside the step's log
    argv = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-rA"]
    sys.stdout.flush()
    done = subprocess.run([*argv, f"--junitxml={xml}", "mlops_assets_tests"], cwd=REPO, check=False)
    if not xml.is_file():
        return StepReport("fail", f"pytest exited with status {done.returncode} and no results")
    counts = junit_counts(xml)
    sizes = {k: len(v) for k, v in counts.items()}
    summary = ", ".join(f"{v} {k}" for k, v in sizes.items())
    bad = counts["failed"] + counts["errors"] + counts["skipped"]
    ok = done.returncode == 0 and not bad and sizes["passed"] > 0
    tail = "" if ok else f"; not passed: {', '.join(bad) or 'no GPU test ran'}"
    return StepReport("pass" if ok else "fail", summary + tail, {**counts, "exit": done.returncode})


def step_nvs(context: StepContext) -> StepReport:
    """The nvs-gpu benchmark, and the package's held-out render as frame.png."""
    from PIL import Image

    from benchmarks.nvs import compare_nvs_gpu

    row, result = compare_nvs_gpu(context.preset, repeats=2)
    files: list[str] = []
    if result is not None and result.renders:
        Image.fromarray(result.renders[0][1]).save(context.out / "frame.png")
        files.append("frame.png")
    return _row_report(row, bool(row.details.get("psnr_within_spread")), files)


def step_cd_train(context: StepContext) -> StepReport:
    """CD training for 2 epochs on CUDA against the bare loop, then one change map with it."""
    from benchmarks.common import cached_scene, open_scene
    from benchmarks.training import compare_training, tile_demo_scenes
    from mlops_assets.core.cd.config import InferenceConfig, TilingConfig, TrainConfig
    from mlops_assets.core.cd.infer import change_overlay, predict_scene
    from mlops_assets.core.demo.cd import DEMO_CD_SCENES

    size, specs = 512, DEMO_CD_SCENES[:2]
    config = dataclasses.replace(TrainConfig(), epochs=2, overlay_images=0, device="cuda")
    refs = tile_demo_scenes(specs, size, TilingConfig(), context.work / "tiles")
    name = f"CD training on CUDA ({len(specs)} scenes, {size} px, 2 epochs)"
    row, result = compare_training(refs, config, rounds=1, name=name)
    index = next(r.index for r in refs if r.index.scene_id == specs[0].scene_id)
    change = context.work / "change.tif"
    with open_scene(cached_scene(specs[0], size)) as pair:
        started = time.perf_counter()
        summary = predict_scene(
            pair,
            result.model,
            index.pre_stats,
            index.post_stats,
            InferenceConfig(device="cuda"),
            change,
            torch.device("cuda"),
            2**config.encoder_depth,
        )
        seconds = time.perf_counter() - started
        change_overlay(pair, change).save(context.out / "change_map.png")
    report = _row_report(row, files=["change_map.png"])
    figures = {
        **report.figures,
        "change_map": {
            "scene": f"{specs[0].scene_id}-{size}",
            "seconds": seconds,
            "f1": summary.f1,
            "precision": summary.precision,
            "recall": summary.recall,
            "changed_percent": summary.changed_percent,
        },
    }
    f1 = "-" if summary.f1 is None else f"{summary.f1:.3f}"
    return dataclasses.replace(
        report,
        summary=f"{report.summary}; change map of {specs[0].scene_id} in {seconds:.1f} s "
        f"(F1 {f1} after 2 epochs, not judged)",
        figures=figures,
    )


def step_cd_infer(context: StepContext) -> StepReport:
    """The inference benchmark on CUDA: predict_scene against the bare forward, 2048 px."""
    from benchmarks.inference import bench_inference_throughput

    return _row_report(bench_inference_throughput(2048, repeats=2, device="cuda"))


def step_oom(context: StepContext) -> StepReport:
    """A real CUDA out-of-memory error while densifying, under a memory cap."""
    from benchmarks.nvs import load_scene
    from mlops_assets.core.nvs.config import nvs_preset
    from mlops_assets.core.nvs.train import SplatsOutOfMemoryError, load_checkpoint, train_splats

    never = 10**9
    # Every visible Gaussian is cloned or split every 5 steps and none is pruned: the count
    # doubles until the cap stops it.
    config = nvs_preset(
        "default",
        device="cuda",
        steps=3_000,
        grow_grad2d=0.0,
        prune_opa=0.0,
        refine_start_iter=5,
        refine_every=5,
        refine_stop_iter=never,
        checkpoint_every=10,
        eval_every=never,
        log_every=never,
    )
    dataset = load_scene(config)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = min(1.0, (before + OOM_CAP_MIB * 2**20) / total)
    torch.cuda.set_per_process_memory_fraction(fraction)
    error: SplatsOutOfMemoryError | None = None
    try:
        train_splats(dataset, config, checkpoint_dir=context.work / "checkpoints")
    except SplatsOutOfMemoryError as exc:
        error = exc
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    if error is None:
        return StepReport("fail", f"{config.steps} steps ran under a {OOM_CAP_MIB} MiB cap")
    after = torch.cuda.memory_allocated()
    message = str(error)
    figures: dict[str, Any] = {
        "message": message,
        "cap_mib": OOM_CAP_MIB,
        "memory_fraction": fraction,
        "initial_gaussians": len(dataset.points),
        "step": error.step,
        "phase": error.phase,
        "num_gaussians": error.num_gaussians,
        "checkpoint_step": error.checkpoint_step,
        "allocated_before_mib": before / 2**20,
        "allocated_after_mib": after / 2**20,
    }
    problems: list[str] = []
    if not message.startswith("CUDA out of memory at step "):
        problems.append("the message does not start 'CUDA out of memory at step'")
    if f"with {error.num_gaussians:,} Gaussians" not in message:
        problems.append("the message does not name the Gaussian count")
    if error.num_gaussians <= len(dataset.points):
        problems.append("it ran out before densifying")
    if error.checkpoint is None or not error.checkpoint.is_file():
        problems.append("no checkpoint was kept")
    else:
        splats, step = load_checkpoint(error.checkpoint)
        figures |= {
            "checkpoint_gaussians": len(splats["means"]),
            "checkpoint_mb": error.checkpoint.stat().st_size / 1e6,
        }
        if step != error.checkpoint_step or not all(
            bool(torch.isfinite(v).all()) for v in splats.values()
        ):
            problems.append(f"the checkpoint is from step {step} or not finite")
        elif f"last good checkpoint (step {step}): {error.checkpoint}" not in message:
            problems.append("the message does not name the checkpoint")
    if after > before + 64 * 2**20:
        problems.append(f"{(after - before) / 2**20:.0f} MiB still allocated after the error")
    if problems:
        return StepReport("fail", "; ".join(problems) + f" (message: {message})", figures)
    return StepReport(
        "pass",
        f"stopped at step {error.step} ({error.phase}) with {error.num_gaussians:,} Gaussians "
        f"under a {OOM_CAP_MIB} MiB cap; checkpoint of step {error.checkpoint_step} loads; "
        f"{after / 2**20:.0f} MiB left allocated",
        figures,
    )


#: name -> (what it does, time limit in seconds, the function its process runs)
STEPS: dict[str, tuple[str, float, Callable[[StepContext], StepReport]]] = {
    "kernels": (
        "gsplat's CUDA kernels: prebuilt, a cached JIT build, or a JIT build now (timed); one "
        "render and backward",
        45 * 60,
        step_kernels,
    ),
    "pytest-gpu": ("pytest -m gpu", 10 * 60, step_pytest),
    "nvs": (
        "nvs-gpu benchmark: train_splats vs a bare gsplat loop, same scene, steps, strategy and "
        "learning rates, each twice, alternating",
        10 * 60,
        step_nvs,
    ),
    "cd-train": (
        "CD training, 2 epochs on CUDA vs the training benchmark's bare loop; one change map "
        "from the trained model",
        10 * 60,
        step_cd_train,
    ),
    "cd-infer": (
        "inference benchmark on CUDA: predict_scene vs a bare forward, 2048 px",
        10 * 60,
        step_cd_infer,
    ),
    "oom": (
        f"densification outgrows a {OOM_CAP_MIB} MiB cap: error message, checkpoint, memory freed",
        5 * 60,
        step_oom,
    ),
}


def check_steps(out: Path, preset: str, only: Sequence[str] = ()) -> list[Step]:
    """The steps to run, each as ``python -m benchmarks.gpu_check --child NAME ...``."""

    def command(name: str) -> Callable[[Path], list[str]]:
        def argv(result: Path) -> list[str]:
            return [
                sys.executable,
                "-m",
                "benchmarks.gpu_check",
                "--child",
                name,
                "--result",
                str(result),
                "--out",
                str(out),
                "--nvs-preset",
                preset,
            ]

        return argv

    return [
        Step(name, about, timeout, command(name))
        for name, (about, timeout, _) in STEPS.items()
        if not only or name in only
    ]


# The command ---------------------------------------------------------------------------------


def default_out(now: dt.datetime) -> Path:
    """``$MLOPS_HOME/gpu-check/<UTC time>`` (``MLOPS_HOME`` defaults to ``.mlops``)."""
    home = Path(os.environ.get("MLOPS_HOME") or REPO / ".mlops")
    return home / "gpu-check" / f"{now:%Y%m%d-%H%M%S}"


def _machine_line(machine: Mapping[str, Any]) -> str:
    pinned = (
        "the pinned version"
        if machine["torch_is_pinned"]
        else f"not the pinned {machine['torch_pinned']}"
    )
    return (
        f"GPU: {machine['gpu']} (compute {machine['gpu_capability']}, "
        f"{machine['gpu_memory_mib']} MiB), driver {machine['driver'] or 'unknown'}; torch "
        f"{machine['torch']} for CUDA {machine['torch_cuda']} ({pinned}); gsplat "
        f"{machine['gsplat']}; nvcc {machine['nvcc'] or 'not found'}; Python {machine['python']}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the check (or, with ``--child``, one of its steps) and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    parser.add_argument("--out", type=Path, metavar="DIR", help="the report folder")
    parser.add_argument("--only", action="append", metavar="STEP", choices=list(STEPS))
    parser.add_argument("--nvs-preset", default="default", choices=["tiny", "default", "quality"])
    parser.add_argument("--list", action="store_true", help="list the steps and exit")
    parser.add_argument("--child", choices=list(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.list:
        for name, (about, timeout, _) in STEPS.items():
            print(f"{name:11} {about} (limit {timeout / 60:.0f} min)")
        return 0
    if args.child:
        if args.result is None or args.out is None:
            parser.error("--child needs --result and --out")
        with tempfile.TemporaryDirectory(prefix=f"gpu-check-{args.child}-") as work:
            context = StepContext(args.out, Path(work), args.nvs_preset)
            run_child_step(STEPS[args.child][2], context, args.result)
        return 0

    problem = cuda_problem()
    if problem is not None:
        print(f"no CUDA device: {problem}", file=sys.stderr)
        return 2
    started_at = dt.datetime.now(dt.UTC)
    out = (args.out or default_out(started_at)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    machine = versions()
    steps = check_steps(out, args.nvs_preset, args.only or ())
    print(f"mlops-assets GPU check, {started_at:%Y-%m-%d %H:%M} UTC", flush=True)
    print(_machine_line(machine), flush=True)

    def done(number: int, outcome: StepOutcome) -> None:
        label = _LABELS[outcome.verdict]
        print(f"[{number}/{len(steps)}] {outcome.name}: {label} in {outcome.seconds:.0f} s")
        print(f"      {outcome.report.summary}", flush=True)

    started = time.perf_counter()
    outcomes = run_steps(steps, out, done)
    write_report(out, machine, outcomes, started_at, time.perf_counter() - started)
    passed = all(o.verdict == "pass" for o in outcomes)
    failed = [o.name for o in outcomes if o.verdict != "pass"]
    print("all steps passed" if passed else f"not passed: {', '.join(failed)}")
    print(f"report: {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
