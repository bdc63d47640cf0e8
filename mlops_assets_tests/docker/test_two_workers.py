"""Two workers that share no directory: one materialises ``cd/tiles``, the other ``cd/model``.

Each worker has its own working directory, MLOPS_HOME and DAGSTER_HOME (the same instance file),
and runs the real ``dagster`` CLI. What they share is what a cluster shares: the Dagster instance
in PostgreSQL, the scene store over HTTP (the lakeFS double on loopback), one MLflow server (on
PostgreSQL, artifacts in S3) and one S3 server (moto) holding the asset values, the tile sets and
the step logs. The model worker never saw the tiles worker's disk, so everything it needed came
through those services.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
import yaml

from mlops_assets.core.store.lakefs import LakeFSStore
from mlops_assets_tests.conftest import commit_folder
from mlops_assets_tests.core.store.conftest import DOUBLE_KEY, DOUBLE_SECRET
from mlops_assets_tests.core.store.lakefs_double import LakeFSDouble
from mlops_assets_tests.docker.servers import MlflowServer
from mlops_assets_tests.docker.test_dagster_postgres import instance_of, instance_yaml
from mlops_assets_tests.postgres import PostgresCluster

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
LOCATION = Path(__file__).with_name("location.py")
OUTPUTS = "tiles-two-workers"
LOGS = "logs-two-workers"


@pytest.fixture
def lakefs(tmp_path: Path) -> Iterator[LakeFSDouble]:
    double = LakeFSDouble(tmp_path / "lakefs-server", DOUBLE_KEY, DOUBLE_SECRET).start()
    yield double
    double.stop()


def _worker(root: Path, name: str, shared: dict[str, str]) -> dict[str, str]:
    """A worker's own directories (and the shared services' addresses)."""
    home = root / name
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml(home / "dagster")))
    (home / "cwd").mkdir()
    return {
        **shared,
        "MLOPS_HOME": str(home / "mlops"),
        "DAGSTER_HOME": str(home / "dagster"),
        "CWD": str(home / "cwd"),
    }


def _materialise(env: dict[str, str], select: str, op: str, partition: str | None) -> None:
    command = [str(BIN / "dagster"), "asset", "materialize", "-f", str(LOCATION)]
    command += ["--select", select]
    command += ["--config-json", json.dumps({"ops": {op: {"config": {"preset": "tiny"}}}})]
    if partition is not None:
        command += ["--partition", partition]
    done = subprocess.run(
        command,
        cwd=env["CWD"],
        env={k: v for k, v in env.items() if k != "CWD"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def _s3(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_tiles_on_one_worker_and_the_model_on_another(
    postgres: PostgresCluster,
    mlflow_pg: MlflowServer,
    moto_endpoint: str,
    lakefs: LakeFSDouble,
    demo_cd_dir: Path,
    demo_cd_warped_dir: Path,
    tmp_path: Path,
) -> None:
    s3 = _s3(moto_endpoint)
    for bucket in (OUTPUTS, LOGS):
        s3.create_bucket(Bucket=bucket)
    store = LakeFSStore(lakefs.endpoint, DOUBLE_KEY, DOUBLE_SECRET, "scenes")
    store.ensure_repository()
    commit_folder(store, demo_cd_dir, "cd/farm/")  # pyright: ignore[reportArgumentType]
    commit_folder(store, demo_cd_warped_dir, "cd/river/")  # pyright: ignore[reportArgumentType]
    database = "two_workers"
    postgres.create_database(database)
    shared = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "DAGSTER_"))},
        "PYTHONPATH": str(REPO),
        "DAGSTER_POSTGRES_HOST": postgres.host,
        "DAGSTER_POSTGRES_PORT": str(postgres.port),
        "DAGSTER_POSTGRES_DB": database,
        "DAGSTER_POSTGRES_USER": postgres.user,
        "DAGSTER_POSTGRES_PASSWORD": "unused-with-trust-auth",
        "MLOPS_DAGSTER_BUCKET": LOGS,
        "LAKEFS_ENDPOINT": lakefs.endpoint,
        "LAKEFS_ACCESS_KEY_ID": DOUBLE_KEY,
        "LAKEFS_SECRET_ACCESS_KEY": DOUBLE_SECRET,
        "MLFLOW_TRACKING_URI": mlflow_pg.address,
        "MLOPS_OUTPUT_BUCKET": OUTPUTS,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    tiles_worker = _worker(tmp_path, "tiles-worker", shared)
    model_worker = _worker(tmp_path, "model-worker", shared)
    with instance_of(tiles_worker) as instance:
        instance.add_dynamic_partitions("cd_scenes", ["farm", "river"])
    for scene in ("farm", "river"):
        _materialise(tiles_worker, "cd/scene,cd/tiles", "cd__tiles", scene)
    _materialise(model_worker, "cd/model", "cd__model", None)

    with instance_of(model_worker) as instance:
        tiles = instance.get_latest_materialization_event(dg.AssetKey(["cd", "tiles"]))
        model = instance.get_latest_materialization_event(dg.AssetKey(["cd", "model"]))
        assert tiles is not None and model is not None
        assert tiles.run_id != model.run_id
        materialization = model.asset_materialization
        assert materialization is not None
        run_id = str(materialization.metadata["mlflow_run_id"].value)
    run = mlflow_pg_client(mlflow_pg).get_run(run_id)
    assert run.info.status == "FINISHED"
    # The values, tile sets and step logs are in S3 ...
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=OUTPUTS)["Contents"]]
    assert {"assets/cd/tiles/farm.json", "assets/cd/tiles/river.json", "assets/cd/model.json"} <= (
        set(keys)
    )
    assert any(k.endswith("/index.json") and not k.startswith("assets/") for k in keys)
    assert s3.list_objects_v2(Bucket=LOGS).get("KeyCount", 0) > 0
    # ... and no worker kept a value on its disk (MLOPS_HOME holds caches only).
    for worker in (tiles_worker, model_worker):
        assert not (Path(worker["MLOPS_HOME"]) / "assets").exists()
        assert not (Path(worker["MLOPS_HOME"]) / "outputs").exists()


def mlflow_pg_client(server: MlflowServer) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server.address, registry_uri=server.address)
