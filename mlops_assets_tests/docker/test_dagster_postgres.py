"""The production Dagster instance (docker/dagster.yaml) on a real PostgreSQL, with a real daemon.

One CD scene partition goes end to end the way the production stack runs it: submitted to the
instance (``dagster job launch``), queued by the `QueuedRunCoordinator`, dequeued by a real
``dagster-daemon`` process and launched by the instance's run launcher, its events and
materialisations stored in PostgreSQL, its step logs uploaded to S3 (moto). Only the instance's
local directories are moved into the test's directory; storage, coordinator, launcher, compute
logs, concurrency and run monitoring are the file's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
import yaml

from mlops_assets.core.outputs import MARKER
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets_tests.conftest import commit_folder
from mlops_assets_tests.postgres import PostgresCluster
from mlops_assets_tests.processes import stop_group

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
LOCATION = Path(__file__).with_name("location.py")
PASSWORD = "pg-test-password"
LOG_BUCKET = "dagster-logs"  # trust auth ignores it; the instance still reads it from the env


def instance_yaml(home: Path) -> dict[str, Any]:
    """docker/dagster.yaml with its local file locations under ``home``."""
    config = yaml.safe_load((REPO / "docker" / "dagster.yaml").read_text())
    config["compute_logs"]["config"]["local_dir"] = str(home / "compute-logs-staging")
    config["local_artifact_storage"]["config"]["base_dir"] = str(home)
    return config


@pytest.fixture(scope="module")
def stack(
    postgres: PostgresCluster, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """DAGSTER_HOME on PostgreSQL and S3, MLOPS_HOME with an embedded store, a running daemon."""
    root = tmp_path_factory.mktemp("pg-dagster")
    home, mlops_home = root / "dagster", root / "mlops"
    home.mkdir()
    database = f"dagster_{os.getpid()}"
    postgres.create_database(database)
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml(home)))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DAGSTER_HOME": str(home),
        "MLOPS_HOME": str(mlops_home),
        "DAGSTER_POSTGRES_HOST": postgres.host,
        "DAGSTER_POSTGRES_PORT": str(postgres.port),
        "DAGSTER_POSTGRES_DB": database,
        "DAGSTER_POSTGRES_USER": postgres.user,
        "DAGSTER_POSTGRES_PASSWORD": PASSWORD,
        "MLOPS_DAGSTER_BUCKET": LOG_BUCKET,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    _s3(env).create_bucket(Bucket=LOG_BUCKET)
    log = (root / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-f", str(LOCATION)],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the finaliser stops it and everything it started
    )
    try:
        yield env
    finally:
        stop_group(daemon, timeout_s=30)
        log.close()


def _s3(env: dict[str, str]) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


@contextlib.contextmanager
def instance_of(env: dict[str, str]) -> Generator[dg.DagsterInstance]:
    """The instance the daemon uses, opened in this process with the same environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if name.startswith(("DAGSTER_", "MLOPS_", "AWS_")):
                patch.setenv(name, value)
        with dg.DagsterInstance.get() as instance:
            yield instance


def wait_for_run(instance: dg.DagsterInstance, run_id: str, timeout_s: float) -> dg.DagsterRun:
    """Poll until the run ends (or fail with its status after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = instance.get_run_by_id(run_id)
        assert run is not None
        if run.is_finished or time.monotonic() > deadline:
            return run
        time.sleep(1)


def test_a_scene_partition_runs_through_the_queue_and_the_daemon_on_postgres(
    stack: dict[str, str], demo_cd_dir: Path, tmp_path: Path
) -> None:
    store = EmbeddedStore(Path(stack["MLOPS_HOME"]) / "lakefs", "scenes")
    store.ensure_repository()
    commit = commit_folder(store, demo_cd_dir, "cd/farm/")
    with instance_of(stack) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        instance.add_dynamic_partitions("cd_scenes", ["farm"])
        launched = subprocess.run(
            [
                str(BIN / "dagster"),
                "job",
                "launch",
                "-f",
                str(LOCATION),
                "-j",
                "cd_scene_tiles",
                "--tags",
                json.dumps({"dagster/partition": "farm"}),
            ],
            cwd=tmp_path,
            env=stack,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert launched.returncode == 0, launched.stdout + launched.stderr
        (run,) = instance.get_runs()
        run = wait_for_run(instance, run.run_id, timeout_s=300)
        events = [e.dagster_event_type for e in instance.all_logs(run.run_id) if e.dagster_event]
        assert run.status == dg.DagsterRunStatus.SUCCESS, [
            e.message for e in instance.all_logs(run.run_id) if e.is_dagster_event
        ][-5:]
        # Queued by the coordinator, then started: only the daemon's queue loop launches a
        # queued run, and it reported its heartbeat to this PostgreSQL instance.
        order = [t for t in events if t in _ORDERED]
        assert order == list(_ORDERED)
        assert "QUEUED_RUN_COORDINATOR" in instance.get_daemon_heartbeats()
        # The materialisations are in PostgreSQL, with what a user looks for.
        scene = instance.get_latest_materialization_event(dg.AssetKey(["cd", "scene"]))
        tiles = instance.get_latest_materialization_event(dg.AssetKey(["cd", "tiles"]))
        assert scene is not None and tiles is not None
        assert scene.run_id == tiles.run_id == run.run_id
        scene_materialization = scene.asset_materialization
        assert scene_materialization is not None
        assert scene_materialization.partition == "farm"
        assert scene_materialization.metadata["lakefs_commit"].value == commit
        # The step logs are in the bucket, not on the worker's disk.
        keys = [o["Key"] for o in _s3(stack).list_objects_v2(Bucket=LOG_BUCKET)["Contents"]]
        assert any(k.startswith(f"compute-logs/storage/{run.run_id}/") for k in keys), keys
    # The tile set was published (its marker last) under MLOPS_HOME.
    markers = list((Path(stack["MLOPS_HOME"]) / "outputs").rglob(MARKER))
    assert len(markers) == 1


_ORDERED = (
    dg.DagsterEventType.RUN_ENQUEUED,
    dg.DagsterEventType.RUN_STARTING,
    dg.DagsterEventType.RUN_START,
    dg.DagsterEventType.RUN_SUCCESS,
)
