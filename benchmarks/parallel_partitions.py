"""CD scene partitions through the queued run coordinator and a real daemon: 1 vs 2 runs at once.

The production instance (docker/dagster.yaml: PostgreSQL storage, `QueuedRunCoordinator`, the
default run launcher) on a throw-away PostgreSQL cluster, with only ``max_concurrent_runs`` and the
local file locations changed. ``scenes`` demo CD scenes are committed to an embedded store, one
``cd_scene_tiles`` run per scene (``cd/scene`` + ``cd/tiles``, tiny preset) is submitted while no
daemon runs, so all wait in the queue; then ``dagster-daemon`` starts and the clock runs until the
last run has ended. Both limits run side by side in one call, each on a fresh database; the ratio
is serial wall time over parallel wall time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import BenchResult, Target

REPO = Path(__file__).resolve().parent.parent
LOCATION = REPO / "mlops_assets_tests" / "docker" / "location.py"
BIN = Path(sys.executable).parent


def _instance_yaml(home: Path, max_runs: int) -> str:
    config: dict[str, Any] = yaml.safe_load((REPO / "docker" / "dagster.yaml").read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = max_runs
    config["compute_logs"] = {
        "module": "dagster.core.storage.local_compute_log_manager",
        "class": "LocalComputeLogManager",
        "config": {"base_dir": str(home / "storage")},
    }
    config["local_artifact_storage"]["config"]["base_dir"] = str(home)
    return yaml.safe_dump(config)


def _one_limit(cluster: Any, root: Path, folders: list[Path], max_runs: int) -> float:
    import dagster as dg

    from mlops_assets.core.scenes.folders import plan_checked
    from mlops_assets.core.scenes.ingest import ingest_scene
    from mlops_assets.core.scenes.layout import SceneKind
    from mlops_assets.core.store.embedded import EmbeddedStore

    home, mlops_home = root / f"dagster-{max_runs}", root / f"mlops-{max_runs}"
    home.mkdir()
    (home / "dagster.yaml").write_text(_instance_yaml(home, max_runs))
    database = f"bench_parallel_{max_runs}"
    cluster.create_database(database)
    store = EmbeddedStore(mlops_home / "lakefs", "scenes")
    store.ensure_repository()
    scenes = [f"scene-{k}" for k in range(len(folders))]
    for scene, folder in zip(scenes, folders, strict=True):
        ingest_scene(store, "main", plan_checked(SceneKind.CD, folder, scene))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DAGSTER_HOME": str(home),
        "MLOPS_HOME": str(mlops_home),
        "DAGSTER_POSTGRES_HOST": cluster.host,
        "DAGSTER_POSTGRES_PORT": str(cluster.port),
        "DAGSTER_POSTGRES_DB": database,
        "DAGSTER_POSTGRES_USER": cluster.user,
        "DAGSTER_POSTGRES_PASSWORD": "unused-with-trust-auth",
    }
    saved = {k: os.environ.get(k) for k in env if k.startswith("DAGSTER_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("DAGSTER_")})
    try:
        with dg.DagsterInstance.get() as instance:
            instance.add_dynamic_partitions("cd_scenes", scenes)
            launch = [str(BIN / "dagster"), "job", "launch", "-f", str(LOCATION)]
            for scene in scenes:
                subprocess.run(
                    [
                        *launch,
                        "-j",
                        "cd_scene_tiles",
                        "--tags",
                        json.dumps({"dagster/partition": scene}),
                    ],
                    cwd=root,
                    env=env,
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
            log = (root / f"daemon-{max_runs}.log").open("wb")
            started = time.time()
            daemon = subprocess.Popen(
                [str(BIN / "dagster-daemon"), "run", "-f", str(LOCATION)],
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                deadline = time.monotonic() + 900
                while True:
                    records = instance.get_run_records()
                    if all(r.dagster_run.is_finished for r in records):
                        break
                    if time.monotonic() > deadline or daemon.poll() is not None:
                        raise RuntimeError(f"runs did not finish (max_concurrent_runs={max_runs})")
                    time.sleep(0.5)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(daemon.pid, signal.SIGTERM)
                daemon.wait(timeout=60)
                log.close()
            failed = [r for r in records if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS]
            if failed:
                raise RuntimeError(f"{len(failed)} run(s) failed (max_concurrent_runs={max_runs})")
            return max(float(r.end_time or 0.0) for r in records) - started
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def bench_parallel_partitions(scenes: int = 4, scene_px: int = 256) -> BenchResult:
    """Wall time of ``scenes`` queued scene runs at 1 and at 2 concurrent runs."""
    from mlops_assets.core.demo.cd import DEMO_CD_SCENES, write_cd_scene
    from mlops_assets_tests.postgres import postgres_cluster

    with (
        tempfile.TemporaryDirectory(prefix="mlops-parallel-bench-") as tmp,
        postgres_cluster() as pg,
    ):
        root = Path(tmp)
        folders = [
            write_cd_scene(DEMO_CD_SCENES[k % len(DEMO_CD_SCENES)], root / f"s{k}", size=scene_px)
            for k in range(scenes)
        ]
        serial = _one_limit(pg, root, folders, 1)
        parallel = _one_limit(pg, root, folders, 2)
    return BenchResult(
        name=f"{scenes} CD scene runs (cd/scene+cd/tiles), queue + daemon: 1 vs 2 at once",
        unit="s",
        measured=parallel,
        reference=serial,
        target=Target("ratio", ">=", 1.1),
        ratio=serial / parallel,
        note=f"serial {serial:.1f} s, 2 concurrent {parallel:.1f} s ({os.cpu_count()} cores)",
    )
