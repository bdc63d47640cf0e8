"""MLflow as the production stack runs it: ``mlflow server`` on PostgreSQL, artifacts in S3.

The backend store is a real PostgreSQL database, the artifacts go through the server
(``--serve-artifacts``) to a bucket of a real S3-compatible server (moto), and the pipeline's own
`Tracker` logs, registers, aliases and loads a model through it.
"""

from __future__ import annotations

import signal

import boto3
import psycopg2
import pytest

from mlops_assets.core.aliases import CHALLENGER, CHAMPION
from mlops_assets.core.tracking import Tracker, TrackingError
from mlops_assets_tests.docker.conftest import BUCKET, creds
from mlops_assets_tests.docker.servers import MlflowServer
from mlops_assets_tests.postgres import PostgresCluster

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_register_and_alias_a_model_on_postgres_with_s3_artifacts(
    mlflow_pg: MlflowServer, postgres: PostgresCluster, moto_endpoint: str
) -> None:
    import torch

    from mlops_assets.core.cd.config import TrainConfig, preset
    from mlops_assets.core.cd.model import build_unet, model_spec
    from mlops_assets.core.cd.registry import load_cd_model, log_cd_model
    from mlops_assets.core.cd.train import EpochMetrics, TrainResult

    tracker = Tracker(mlflow_pg.address, "cd-postgres")
    tracker.check_reachable()
    config = preset(TrainConfig, "tiny")
    torch.manual_seed(0)
    net = build_unet(8, config).eval()
    metrics = EpochMetrics(1, 0.7, 0.6, 0.5, 0.33, 0.5, 0.5, 1.0, 10.0)
    result = TrainResult(net, model_spec(8, config), [metrics], metrics, 9, 9, 0, "cpu")
    with tracker.run("cd-pg", {"git_sha": "abc"}) as run_id:
        tracker.log_metrics(run_id, {"val_f1": 0.5}, step=0)
        model_uri = log_cd_model(tracker, run_id, result, threshold=0.5)
    version = tracker.register("cd-pg-unet", model_uri, run_id, {"val_f1": "0.5"}, "gate ok")
    tracker.set_alias("cd-pg-unet", CHALLENGER, str(version.version))
    tracker.set_alias("cd-pg-unet", CHAMPION, str(version.version))

    loaded = load_cd_model(tracker, "cd-pg-unet", CHAMPION)
    assert (loaded.version, loaded.run_id) == ("1", run_id)
    for key, value in loaded.net.state_dict().items():
        assert torch.equal(value, net.state_dict()[key]), key
    # The version and its aliases are rows in PostgreSQL ...
    connection = psycopg2.connect(
        host=postgres.host, port=postgres.port, user=postgres.user, dbname="mlflow"
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT name, version, run_id FROM model_versions WHERE name = 'cd-pg-unet'"
            )
            assert cursor.fetchall() == [("cd-pg-unet", 1, run_id)]
            cursor.execute(
                "SELECT alias, version FROM registered_model_aliases "
                "WHERE name = 'cd-pg-unet' ORDER BY alias"
            )
            assert cursor.fetchall() == [(CHALLENGER, 1), (CHAMPION, 1)]
    finally:
        connection.close()
    # ... and the weights are objects in the bucket, not files on the server's disk.
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", **creds())
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert any(key.endswith("weights.pt") for key in keys), keys


def _log_model(tracker: Tracker, run_name: str) -> tuple[str, str]:
    """A tiny (untrained) CD model logged in a finished run: (run id, model URI)."""
    import torch

    from mlops_assets.core.cd.config import TrainConfig, preset
    from mlops_assets.core.cd.model import build_unet, model_spec
    from mlops_assets.core.cd.registry import log_cd_model
    from mlops_assets.core.cd.train import EpochMetrics, TrainResult

    config = preset(TrainConfig, "tiny")
    torch.manual_seed(0)
    net = build_unet(8, config).eval()
    metrics = EpochMetrics(1, 0.7, 0.6, 0.5, 0.33, 0.5, 0.5, 1.0, 10.0)
    result = TrainResult(net, model_spec(8, config), [metrics], metrics, 9, 9, 0, "cpu")
    with tracker.run(run_name, {"git_sha": "abc"}) as run_id:
        model_uri = log_cd_model(tracker, run_id, result, threshold=0.5)
    return run_id, model_uri


def _versions(address: str, name: str) -> list[tuple[str, str, list[str]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=address, registry_uri=address)
    found = client.search_model_versions(f"name = '{name}'")  # lists no aliases: get each
    versions = [client.get_model_version(name, str(v.version)) for v in found]
    return sorted((str(v.version), str(v.run_id), sorted(v.aliases)) for v in versions)


def test_a_registration_cut_by_a_server_kill_is_repaired_by_the_retry(
    mlflow_pg: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail now, not in two minutes
    tracker = Tracker(mlflow_pg.address, "cd-restart")
    run_id, model_uri = _log_model(tracker, "cd-restart")
    version = tracker.register("cd-restart-unet", model_uri, run_id, {}, "first try")
    mlflow_pg.stop(signal.SIGKILL)  # the server dies between the version and its aliases
    try:
        with pytest.raises(TrackingError, match=rf"{mlflow_pg.address}"):
            tracker.set_alias("cd-restart-unet", CHALLENGER, str(version.version))
    finally:
        mlflow_pg.start()
    # The step's retry: same run, same logged model -> the same version, now aliased.
    again = tracker.register("cd-restart-unet", model_uri, run_id, {}, "retry")
    assert str(again.version) == str(version.version)
    for alias in (CHALLENGER, CHAMPION):
        tracker.set_alias("cd-restart-unet", alias, str(again.version))
    assert _versions(mlflow_pg.address, "cd-restart-unet") == [
        ("1", run_id, [CHALLENGER, CHAMPION])
    ]


def test_a_server_gone_for_good_fails_cleanly_and_registers_nothing(
    mlflow_pg: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracker = Tracker(mlflow_pg.address, "cd-gone")
    run_id, model_uri = _log_model(tracker, "cd-gone")
    mlflow_pg.stop(signal.SIGKILL)
    try:
        with pytest.raises(TrackingError) as info:
            tracker.register("cd-gone-unet", model_uri, run_id, {}, "never")
        message = str(info.value)
        assert f"MLflow tracking server {mlflow_pg.address} is unreachable" in message
        assert "Traceback" not in message and len(message.splitlines()) == 1
    finally:
        mlflow_pg.start()
    assert _versions(mlflow_pg.address, "cd-gone-unet") == []
