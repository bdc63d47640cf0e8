"""What every benchmark shares: result records, targets, the scene cache, timing, child processes.

Scenes are generated with `write_cd_scene` (deterministic, streamed window by window) and cached
under ``$MLOPS_BENCH_CACHE`` (default ``~/.cache/mlops-assets-bench``) keyed by scene and size,
because an 8192 px scene takes minutes to render. A cached scene is a directory with ``pre.tif``,
``post.tif`` and ``label.tif``; it is renamed into place only once complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import rasterio
import rasterio.io
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from mlops_assets.core.cd.raster import AlignedPair, open_aligned
from mlops_assets.core.demo.cd import (
    DEMO_CD_SCENES,
    GENERATOR_VERSION,
    CDSceneSpec,
    write_cd_scene,
)
from mlops_assets.core.store.base import RasterLocation

#: The scene the speed and memory benchmarks run on (same CRS for pre and post).
PERF_SCENE: CDSceneSpec = DEMO_CD_SCENES[0]


@dataclass(frozen=True)
class Target:
    """A pass/fail rule on a result's ``ratio`` or on its ``measured`` value."""

    on: Literal["ratio", "measured", "difference"]  # difference: measured - reference
    op: Literal[">=", "<="]
    value: float

    def check(
        self, measured: float | None, ratio: float | None, reference: float | None = None
    ) -> bool | None:
        """Whether the rule holds (None when the value it looks at is missing)."""
        if self.on == "difference":
            x = None if measured is None or reference is None else measured - reference
        else:
            x = ratio if self.on == "ratio" else measured
        if x is None:
            return None
        return x >= self.value if self.op == ">=" else x <= self.value

    def __str__(self) -> str:
        return f"{self.on} {self.op} {self.value:g}"


@dataclass(frozen=True)
class BenchResult:
    """One row of the table: what was measured, against what, and whether the target holds."""

    name: str
    unit: str
    measured: float | None
    reference: float | None
    target: Target
    ratio: float | None = None
    judged: bool = True  # False: shown for information (e.g. a --quick stand-in), not pass/fail
    note: str = ""
    details: dict[str, Any] = field(default_factory=lambda: dict[str, Any]())

    @property
    def passed(self) -> bool | None:
        """Pass, fail, or None when not judged."""
        if not self.judged:
            return None
        return self.target.check(self.measured, self.ratio, self.reference)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (with the verdict)."""
        return {
            "name": self.name,
            "unit": self.unit,
            "measured": self.measured,
            "reference": self.reference,
            "ratio": self.ratio,
            "target": str(self.target),
            "passed": self.passed,
            "judged": self.judged,
            "note": self.note,
            "details": self.details,
        }


def ratio(a: float, b: float) -> float | None:
    """``a / b``, or None when ``b`` is zero."""
    return a / b if b else None


# Scenes --------------------------------------------------------------------------------------


def cache_root() -> Path:
    """``$MLOPS_BENCH_CACHE``, else ``~/.cache/mlops-assets-bench``."""
    return Path(os.environ.get("MLOPS_BENCH_CACHE", "~/.cache/mlops-assets-bench")).expanduser()


def cached_scene(spec: CDSceneSpec, size: int, root: Path | None = None) -> Path:
    """The directory of ``spec`` rendered at ``size`` px, generated on first use."""
    base = (root or cache_root()) / "scenes"
    final = base / f"{spec.scene_id}-{size}-v{GENERATOR_VERSION}"
    if (final / "label.tif").exists():
        return final
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{spec.scene_id}-{size}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_cd_scene(spec, tmp, size=size)
    try:
        tmp.rename(final)
    except OSError:  # another process finished the same scene first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextlib.contextmanager
def open_scene(directory: Path, resampling: str = "bilinear") -> Generator[AlignedPair, None, None]:
    """A cached scene opened as the package opens it (post warped onto pre's grid)."""
    with open_aligned(
        RasterLocation(str(directory / "pre.tif")),
        RasterLocation(str(directory / "post.tif")),
        RasterLocation(str(directory / "label.tif")),
        resampling=resampling,
    ) as pair:
        yield pair


@contextlib.contextmanager
def open_plain(
    directory: Path, resampling: str = "bilinear"
) -> Generator[tuple[rasterio.io.DatasetReader, WarpedVRT], None, None]:
    """Pre, and post through the `WarpedVRT` onto pre's grid that `open_aligned` builds; no label.

    The references use this: the same warp, none of the package's checks or masks.
    """
    with (
        rasterio.open(directory / "pre.tif") as pre,
        rasterio.open(directory / "post.tif") as post,
        WarpedVRT(
            post,
            crs=pre.crs,
            transform=pre.transform,
            width=pre.width,
            height=pre.height,
            resampling=Resampling[resampling],
        ) as vrt,
    ):
        yield pre, vrt


# Timing and processes ------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def side_by_side(
    reference: Callable[[], object], candidate: Callable[[], object], repeats: int
) -> tuple[list[float], list[float]]:
    """Seconds of ``repeats`` calls of each, alternating (reference first) so load hits both."""
    ref_times: list[float] = []
    cand_times: list[float] = []
    for _ in range(repeats):
        ref_times.append(timed(reference))
        cand_times.append(timed(candidate))
    return ref_times, cand_times


def run_child(*args: str, timeout: float = 1800.0) -> dict[str, Any]:
    """Run ``python -m benchmarks._child ARGS`` in a fresh process; its last stdout line is JSON."""
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks._child", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"benchmark child {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}"
        )
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1])


# The machine ---------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's name elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> tuple[float, float, float]:
    """1, 5 and 15 minute load averages (zeros where unknown)."""
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import rasterio
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "gdal": rasterio.__gdal_version__,
        "python": platform.python_version(),
    }
