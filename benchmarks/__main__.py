"""``python -m benchmarks``: run the benchmarks and print one table.

Options: ``--only NAME`` (repeatable) runs a subset, ``--quick`` uses small sizes (and a short
training run for the F1 benchmark, shown but not judged), ``--out PATH`` writes the results as
JSON, ``--strict`` exits 1 when a target is missed. A benchmark that raises is shown as ERROR and
makes the exit status 2; nothing is hidden behind a zero.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import BenchResult, cache_root, load_average, machine


@dataclass(frozen=True)
class Bench:
    """A benchmark: what it checks and how to run it at full and at quick size."""

    name: str
    about: str
    full: Callable[[], BenchResult | list[BenchResult]]  # a list: several rows from one run
    quick: Callable[[], BenchResult | list[BenchResult]]


def _benches() -> list[Bench]:
    # Imported here so `--help` and `--list` stay fast.
    from benchmarks.adversarial import bench_adversarial_rss, bench_adversarial_time
    from benchmarks.alignment import bench_alignment
    from benchmarks.cd_vs_torchgeo import bench_cd_vs_torchgeo
    from benchmarks.inference import bench_inference_rss, bench_inference_throughput
    from benchmarks.ingest import bench_ingest_throughput
    from benchmarks.nvs import bench_nvs_gpu, bench_nvs_psnr
    from benchmarks.parallel_partitions import bench_parallel_partitions
    from benchmarks.retry_cost import bench_retry_cost
    from benchmarks.sensor_latency import bench_sensor_latency
    from benchmarks.serving import bench_serving, bench_serving_rss
    from benchmarks.sweep import bench_sweep, bench_sweep_workers
    from benchmarks.tiling import bench_tiling_rss, bench_tiling_throughput
    from benchmarks.training import bench_heldout_f1, bench_training_throughput

    return [
        Bench(
            "tiling",
            "tile_scene vs a rasterio windowed copy (2048 px; quick 512)",
            lambda: bench_tiling_throughput(2048),
            lambda: bench_tiling_throughput(512),
        ),
        Bench(
            "tiling-rss",
            "peak RSS tiling 8192 px vs 1024 px (quick 1024 vs 256)",
            lambda: bench_tiling_rss(1024, 8192),
            lambda: bench_tiling_rss(256, 1024),
        ),
        Bench(
            "training",
            "train_change_model vs a bare PyTorch loop (2 scenes, 512 px; quick 256)",
            lambda: bench_training_throughput(512),
            lambda: bench_training_throughput(256, epochs=2, rounds=1),
        ),
        Bench(
            "inference",
            "predict_scene vs a bare forward over the same windows (2048 px; quick 512)",
            lambda: bench_inference_throughput(2048),
            lambda: bench_inference_throughput(512, repeats=2),
        ),
        Bench(
            "inference-rss",
            "peak RSS of predict_scene 4096 px vs 1024 px (quick 1024 vs 256)",
            lambda: bench_inference_rss(1024, 4096),
            lambda: bench_inference_rss(256, 1024),
        ),
        Bench(
            "parallel-partitions",
            "4 CD scene runs through the queued coordinator + daemon, 1 vs 2 at once (quick: 2)",
            lambda: bench_parallel_partitions(scenes=4),
            lambda: bench_parallel_partitions(scenes=2, scene_px=128),
        ),
        Bench(
            "retry-cost",
            "MLflow killed mid-registration: restart + the retried step (3 rounds; quick 1)",
            lambda: bench_retry_cost(rounds=3),
            lambda: bench_retry_cost(rounds=1),
        ),
        Bench(
            "sensor-latency",
            "commit -> run of lakefs_commit_sensor under dagster-daemon (30 s interval; quick 5 s)",
            lambda: bench_sensor_latency(interval_s=30, rounds=4),
            lambda: bench_sensor_latency(interval_s=5, rounds=3),
        ),
        Bench(
            "nvs-psnr",
            "held-out PSNR of the tiny NVS preset on CPU, demo scene globe (quick: 150 steps)",
            lambda: bench_nvs_psnr(),
            lambda: bench_nvs_psnr(steps=150),
        ),
        Bench(
            "nvs-gpu",
            "train_splats vs a bare gsplat loop on CUDA, default preset, each twice (quick: 500 "
            "steps; not run without CUDA)",
            lambda: bench_nvs_gpu("default"),
            lambda: bench_nvs_gpu("default", steps=500),
        ),
        Bench(
            "ingest",
            "isolated, verified ingest_scene vs a put per file + one commit (4096 px; quick 1024)",
            lambda: bench_ingest_throughput(4096),
            lambda: bench_ingest_throughput(1024, repeats=3),
        ),
        Bench(
            "adversarial-rss",
            "peak RSS of the ingest checks on hostile files, fresh process each (<= 512 MB)",
            lambda: bench_adversarial_rss(),
            lambda: bench_adversarial_rss(quick=True),
        ),
        Bench(
            "adversarial-time",
            "wall time of the ingest checks on hostile files, fresh process each (<= 10 s)",
            lambda: bench_adversarial_time(),
            lambda: bench_adversarial_time(quick=True),
        ),
        Bench(
            "alignment",
            "alignment estimate vs the true shift on real Landsat and Sentinel-2 pairs",
            bench_alignment,
            bench_alignment,
        ),
        Bench(
            "cd-vs-torchgeo",
            "the chain vs TorchGeo's ChangeDetectionTask (unet): same tiles, steps, encoder "
            "and loss, 160 steps, 5 seeds, 2 held-out scenes (quick: 1 seed, 6 steps)",
            lambda: bench_cd_vs_torchgeo(),
            lambda: bench_cd_vs_torchgeo(seeds=1, epochs=2, size=256),
        ),
        Bench(
            "serving",
            "mlflow models serve /invocations vs in-process predict_scene on the same windows "
            "(1024 px; quick 512), JSON share, p50/p95 latency of a 256 px pair at 1 and 4 "
            "concurrent clients",
            lambda: bench_serving(1024),
            lambda: bench_serving(512, repeats=1, requests_each=4),
        ),
        Bench(
            "serving-rss",
            "peak RSS of cd-serving (python -m mlops_assets.serving, default bounds) for a full "
            "1 Mpx request and the worst 64 MiB body from 2 clients (<= 3 GiB; quick: the same)",
            bench_serving_rss,
            bench_serving_rss,
        ),
        Bench(
            "f1",
            "held-out F1, default preset, demo scenes at 768 px (quick: 3 epochs)",
            lambda: bench_heldout_f1(),
            lambda: bench_heldout_f1(epochs=3),
        ),
        Bench(
            "sweep",
            "Optuna study on the demo scenes: held-out F1 best vs trial 0 (20 min study), "
            "cd/model time / trial time, trials/hour 2 workers vs 1 (quick: 256 px, minutes)",
            lambda: bench_sweep(),
            lambda: bench_sweep(
                size=256,
                epochs=2,
                minutes=2,
                overhead_rounds=1,
                scaling_epochs=1,
                scaling_minutes=1,
            ),
        ),
        Bench(
            "sweep-workers",
            "the sweep's last row alone: trials/hour of one study with 2 worker processes vs 1, "
            "6 min each (quick: 256 px, 1 min each)",
            lambda: bench_sweep_workers(),
            lambda: bench_sweep_workers(size=256, epochs=1, minutes=1),
        ),
    ]


# The table -----------------------------------------------------------------------------------


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{text} {unit}".rstrip()


def _verdict(result: BenchResult) -> str:
    if not result.judged:
        return "info"
    return {True: "PASS", False: "FAIL", None: "-"}[result.passed]


def table_rows(results: list[BenchResult], errors: dict[str, str]) -> list[list[str]]:
    """Header and one row per result (and per error)."""
    rows = [["name", "measured", "reference", "ratio", "target", "pass/fail"]]
    for r in results:
        rows.append(
            [
                r.name,
                _number(r.measured, r.unit),
                _number(r.reference, r.unit),
                "-" if r.ratio is None else f"{r.ratio:.2f}",
                str(r.target),
                _verdict(r),
            ]
        )
    rows += [[name, "-", "-", "-", "-", "ERROR"] for name in errors]
    return rows


def render_table(rows: list[list[str]]) -> str:
    """A Markdown table, padded so it also reads as plain text."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    lines = [line(rows[0]), rule, *(line(row) for row in rows[1:])]
    return "\n".join(lines)


# Running -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks, print the table, and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", action="append", metavar="NAME", help="run only NAME")
    parser.add_argument("--quick", action="store_true", help="small sizes, short training")
    parser.add_argument("--out", type=Path, metavar="PATH", help="write the results as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)

    benches = _benches()
    known = {b.name for b in benches}
    if args.list:
        for b in benches:
            print(f"{b.name:14} {b.about}")
        return 0
    unknown = sorted(set(args.only or ()) - known)
    if unknown:
        names = ", ".join(b.name for b in benches)
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {names}")
    selected = [b for b in benches if not args.only or b.name in args.only]

    host = machine()
    started_at = dt.datetime.now(dt.UTC)
    load_before = load_average()
    mode = " (quick)" if args.quick else ""
    print(f"mlops-assets benchmarks, {started_at:%Y-%m-%d %H:%M} UTC{mode}")
    print(
        f"CPU: {host['cpu']}, {host['cores']} cores (torch threads {host['torch_threads']}); "
        f"GPU: {host['gpu'] or 'none'}; torch {host['torch']}; GDAL {host['gdal']}; "
        f"Python {host['python']}"
    )
    print(f"scene cache: {cache_root()}; load average before: {_load(load_before)}")

    results: list[BenchResult] = []
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for bench in selected:
        print(f"... {bench.name}: {bench.about}", flush=True)
        t0 = time.perf_counter()
        try:
            outcome = bench.quick() if args.quick else bench.full()
            results += outcome if isinstance(outcome, list) else [outcome]
        except Exception:  # shown as ERROR with its traceback, and fails the run
            errors[bench.name] = traceback.format_exc()
            print(errors[bench.name], file=sys.stderr)
        seconds[bench.name] = time.perf_counter() - t0
    load_after = load_average()

    print()
    print(render_table(table_rows(results, errors)))
    print()
    for r in results:
        if r.note:
            print(f"- {r.name}: {r.note}")
    print(f"load average after: {_load(load_after)}; took {sum(seconds.values()) / 60:.1f} min")

    if args.out:
        report: dict[str, Any] = {
            "date": started_at.isoformat(timespec="seconds"),
            "quick": args.quick,
            "machine": host,
            "load_before": load_before,
            "load_after": load_after,
            "seconds": seconds,
            "results": [r.to_dict() for r in results],
            "errors": errors,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    if errors:
        return 2
    if args.strict and any(r.passed is False for r in results):
        return 1
    return 0


def _load(values: tuple[float, float, float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
