"""The secret test: a materialisation with credential-laden URIs leaves no secret anywhere.

Userinfo tokens, passwords and query-string credentials in the MLflow tracking URI, the MLflow UI
URL and the Dagster URL must not reach the Dagster event log, the compute logs, asset metadata,
MLflow params and tags, or lakeFS commit metadata. Other work extends this test with its URIs.
Every secret the production stack hands the app (each secret-bearing variable named in
docker/.env.example or set in a compose file's environment, and each connection string there that
carries a password, such as ``MLOPS_OPTUNA_STORAGE``) is set to a unique value for the
materialisation too, and must not show up anywhere either.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from mlops_assets.assets.cd.evaluation import cd_evaluation
from mlops_assets.assets.cd.model import cd_model, cd_registered_model
from mlops_assets.assets.cd.scene import cd_scene
from mlops_assets.assets.cd.sweep import cd_sweep
from mlops_assets.assets.cd.tiles import cd_tiles
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.resources.sweeps import OptunaStorageResource
from mlops_assets_tests.assets.cd.test_chain import materialize
from mlops_assets_tests.conftest import commit_folder
from mlops_assets_tests.postgres import pg_bin_dir, postgres_cluster

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DOCKER = Path(__file__).parents[1] / "docker"
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")
#: Connection strings, whose value carries a password (``postgresql://user:password@host/db``).
_CONNECTION_NAME = re.compile(r"_STORAGE$|_URI$|_URL$|CONNECTION_STRING$|_DSN$")
_CREDENTIALS_IN_URI = re.compile(r"://[^/\s@]+:[^/\s@]+@")


def _deployment_variables() -> dict[str, set[str]]:
    """Every variable of docker/.env.example and of the compose environments, with its values."""
    found: dict[str, set[str]] = {}
    lines = re.findall(
        r"^#?\s*([A-Z][A-Z0-9_]+)=(.*)$", (DOCKER / ".env.example").read_text(), re.M
    )
    for path in DOCKER.glob("compose*.yaml"):
        lines += re.findall(r"^\s+([A-Z][A-Z0-9_]+):(.*)$", path.read_text(), re.M)
    for name, value in lines:
        found.setdefault(name, set()).add(value.strip())
    return found


def deployment_secret_names() -> set[str]:
    """Secret-bearing variables (passwords, keys, tokens) of the deployment files."""
    return {name for name in _deployment_variables() if _SECRET_NAME.search(name)}


def deployment_credential_uris() -> set[str]:
    """Variables whose value is a URI with credentials in it (a database's connection string)."""
    return {
        name
        for name, values in _deployment_variables().items()
        if _CONNECTION_NAME.search(name) and any(_CREDENTIALS_IN_URI.search(v) for v in values)
    }


def test_the_secret_names_cover_the_stack() -> None:
    assert {
        "DAGSTER_POSTGRES_PASSWORD",
        "LAKEFS_SECRET_ACCESS_KEY",
        "AWS_SECRET_ACCESS_KEY",
        "MINIO_APP_SECRET_KEY",
        "LAKEFS_AUTH_ENCRYPT_SECRET_KEY",
    } <= deployment_secret_names()
    assert {
        "MLOPS_OPTUNA_STORAGE",
        "MLFLOW_BACKEND_STORE_URI",
        "LAKEFS_DATABASE_POSTGRES_CONNECTION_STRING",
    } <= deployment_credential_uris()
    # A URL without credentials is not a secret.
    assert not {"MLOPS_DAGSTER_URL", "LAKEFS_ENDPOINT", "MLFLOW_TRACKING_URI"} & (
        deployment_credential_uris() | deployment_secret_names()
    )


def _files_holding(root: Path, secrets: list[str]) -> dict[str, list[str]]:
    """Every file under ``root`` whose bytes contain one of ``secrets``."""
    found: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits = [s for s in secrets if s.encode() in data]
            if hits:
                found[str(path)] = hits
    return found


def test_no_secret_reaches_logs_metadata_or_mlflow(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    mlflow_server: str,
    demo_cd_dir: Path,
    demo_cd_warped_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token, query_secret, password = (f"s3cr3t-{uuid.uuid4().hex[:12]}" for _ in range(3))
    deployment = {name: f"s3cr3t-{uuid.uuid4().hex[:12]}" for name in deployment_secret_names()}
    for name, value in deployment.items():
        monkeypatch.setenv(name, value)
    for name in deployment_credential_uris():  # a connection string: its password is the secret
        deployment[name] = f"s3cr3t-{uuid.uuid4().hex[:12]}"
        monkeypatch.setenv(name, f"postgresql://app:{deployment[name]}@db.example:5432/app")
    tracking = mlflow_server.replace("http://", f"http://{token}@")
    ui_url = f"{mlflow_server}/?access_token={query_secret}"
    dagster_url = f"http://admin:{password}@dagster.example:3000/?token={query_secret}"
    secrets = [token, query_secret, password, *deployment.values()]
    leaky = {
        **resources,
        "mlflow": MLflowResource(tracking_uri=tracking, ui_url=ui_url),
        "lineage": LineageResource(git_sha="0123abc", dagster_url=dagster_url),
    }
    commit_folder(store, demo_cd_dir, "cd/farm/")
    commit_folder(store, demo_cd_warped_dir, "cd/river/")
    for scene in ("farm", "river"):
        assert materialize([cd_scene, cd_tiles], instance, leaky, scene).success
    trained = materialize([cd_model, cd_evaluation, cd_registered_model], instance, leaky)
    assert trained.success

    # The URIs were used: redacted, not dropped.
    (model,) = trained.asset_materializations_for_node("cd__model")
    run_url = str(model.metadata["mlflow_run"].value)
    assert run_url.startswith(f"{mlflow_server}/?access_token=***")
    # Event log (metadata and messages), compute logs, run storage: everything Dagster keeps.
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id):
            text = str(entry)
            assert not [s for s in secrets if s in text], text[:500]
    assert _files_holding(Path(instance.root_directory), secrets) == {}
    # MLflow: the run's params and tags, and the server's own store.
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    run = client.get_run(str(model.metadata["mlflow_run_id"].value))
    logged = f"{run.data.params} {run.data.tags}"
    assert run.data.tags["dagster.run_url"].startswith("http://admin:***@dagster.example:3000")
    assert not [s for s in secrets if s in logged]
    # The lakeFS commits the pipeline wrote, and everything else under the test's folder.
    assert _files_holding(tmp_path, secrets) == {}


@pytest.mark.skipif(pg_bin_dir() is None, reason="initdb/pg_ctl not installed (.ci/run has them)")
def test_the_sweep_database_password_reaches_nothing(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    mlflow_server: str,
    demo_cd_dir: Path,
    demo_cd_warped_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``MLOPS_OPTUNA_STORAGE`` as production sets it: a PostgreSQL URL with the password in it.

    The throw-away cluster trusts loopback logins, so the URL works whatever its password says.
    """
    password = f"s3cr3t-{uuid.uuid4().hex[:12]}"
    with postgres_cluster() as cluster:
        url = cluster.create_database("optuna").replace("@", f":{password}@", 1)
        monkeypatch.setenv("MLOPS_OPTUNA_STORAGE", url)
        production = {
            **resources,
            "mlflow": MLflowResource(tracking_uri=mlflow_server, ui_url=mlflow_server),
            "optuna_storage": OptunaStorageResource(storage=dg.EnvVar("MLOPS_OPTUNA_STORAGE")),
        }
        commit_folder(store, demo_cd_dir, "cd/farm/")
        commit_folder(store, demo_cd_warped_dir, "cd/river/")
        for scene in ("farm", "river"):
            assert materialize([cd_scene, cd_tiles], instance, production, scene).success
        swept = dg.materialize(
            [cd_scene, cd_tiles, cd_sweep],
            selection=[cd_sweep],
            instance=instance,
            resources=production,
            run_config={
                "ops": {"cd__sweep": {"config": {"preset": "tiny", "n_trials": 1, "epochs": 1}}}
            },
            raise_on_error=False,
        )
    assert swept.success
    # The storage was used and shown: redacted, not dropped.
    (sweep,) = swept.asset_materializations_for_node("cd__sweep")
    assert str(sweep.metadata["storage"].value) == url.replace(password, "***")
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id):
            assert password not in str(entry), str(entry)[:500]
    assert _files_holding(Path(instance.root_directory), [password]) == {}
    client = MlflowClient(tracking_uri=mlflow_server)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    assert len(runs) >= 2  # the sweep's run and its trial
    assert not [r.info.run_id for r in runs if password in f"{r.data.params} {r.data.tags}"]
    assert _files_holding(tmp_path, [password]) == {}
