"""One measured job in a fresh process, for peak-memory benchmarks.

``python -m benchmarks._child check-raster|check-label|check-cd|check-nvs PATH OUT_DIR`` runs the
ingest check on one hostile file or folder (`benchmarks.adversarial`) and adds ``refused`` and
the ``problem`` it reported. ``python -m benchmarks._child tile SCENE_DIR OUT_DIR`` tiles a scene
with the default
`TilingConfig`. ``python -m benchmarks._child infer SCENE_DIR OUT_DIR --stats JSON`` predicts it
with a randomly initialised default-architecture U-Net, the default `InferenceConfig` and the band
statistics given (``[pre, post]``, each ``{"mean": [...], "std": [...]}``), computed by the parent
so that reading them leaves nothing behind in the measured process. Either prints
one JSON line: ``peak_mb`` (the peak resident set after the job), ``baseline_mb`` (the same after
the imports and set-up, before the job), ``ru_maxrss_mb`` and ``seconds``.

The peak is ``VmHWM`` from ``/proc/self/status`` where there is one. ``ru_maxrss`` is also
reported, but on Linux it cannot be trusted in a child: the kernel carries the parent's high-water
mark across ``vfork`` + ``exec`` (which `subprocess` uses), so a child started by a 1 GB parent
reports at least 1 GB whatever it does. ``VmHWM`` belongs to the child's own address space.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def _ru_maxrss_mb() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _peak_mb() -> float:
    """This address space's peak resident set (VmHWM), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return _ru_maxrss_mb()


def _tile(scene: Path, out: Path) -> dict[str, float | str | bool]:
    from benchmarks.tiling import package_tile
    from mlops_assets.core.cd.config import TilingConfig

    config = TilingConfig()
    baseline = _peak_mb()
    started = time.perf_counter()
    index = package_tile(scene, out, config)
    return {
        "baseline_mb": baseline,
        "peak_mb": _peak_mb(),
        "ru_maxrss_mb": _ru_maxrss_mb(),
        "seconds": time.perf_counter() - started,
        "tiles": len(index.tiles),
    }


def _infer(scene: Path, out: Path, stats_json: str) -> dict[str, float | str | bool]:
    from benchmarks.inference import package_predict, random_model
    from mlops_assets.core.cd.config import InferenceConfig, TrainConfig
    from mlops_assets.core.cd.tiles import BandStats

    model, multiple = random_model(TrainConfig())
    pre, post = json.loads(stats_json)
    stats = (BandStats(**pre), BandStats(**post))
    baseline = _peak_mb()
    started = time.perf_counter()
    package_predict(scene, model, multiple, stats, InferenceConfig(), out / "change.tif")
    return {
        "baseline_mb": baseline,
        "peak_mb": _peak_mb(),
        "ru_maxrss_mb": _ru_maxrss_mb(),
        "seconds": time.perf_counter() - started,
    }


_CHECKS = ("check-raster", "check-label", "check-cd", "check-nvs")


def _check(job: str, path: Path) -> dict[str, float | str | bool]:
    from mlops_assets.core.scenes.cd import inspect_raster, validate_local_cd
    from mlops_assets.core.scenes.nvs import validate_local_nvs
    from mlops_assets.core.store.base import RasterLocation

    baseline = _peak_mb()
    started = time.perf_counter()
    problems: list[str] = []
    if job in ("check-raster", "check-label"):
        try:
            inspect_raster(
                RasterLocation(str(path)),
                str(path),
                "",
                path.stat().st_size,
                label=job == "check-label",
            )
        except ValueError as exc:
            problems.append(str(exc))
    elif job == "check-cd":
        problems = validate_local_cd(path)
    else:
        problems = validate_local_nvs(path)
    return {
        "baseline_mb": baseline,
        "peak_mb": _peak_mb(),
        "ru_maxrss_mb": _ru_maxrss_mb(),
        "seconds": time.perf_counter() - started,
        "refused": bool(problems),
        "problem": "; ".join(problems)[:300],
    }


def main(argv: list[str] | None = None) -> None:
    """Run one job and print its JSON line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._child")
    parser.add_argument("job", choices=("tile", "infer", *_CHECKS))
    parser.add_argument("scene", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--stats", help="band statistics for infer, as JSON")
    args = parser.parse_args(argv)
    result: dict[str, float | str | bool]
    if args.job in _CHECKS:
        result = _check(args.job, args.scene)
    elif args.job == "tile":
        result = _tile(args.scene, args.out)
    elif args.stats is None:
        parser.error("infer needs --stats")
    else:
        result = _infer(args.scene, args.out, args.stats)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
