"""docker/dagster.yaml and docker/dagster.scale.yaml load as real instances (Dagster's own schema).

Each file is read by `DagsterInstance.from_config` with the [scale] extra installed, against the
shared throw-away PostgreSQL, with the environment compose gives the containers: the storage, the
coordinator, the run launcher (the default one, or dagster-docker's with the GPU device request)
and the S3 compute log manager are constructed, not just parsed. A missing setting fails with its
name.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets_tests.postgres import PostgresCluster

pytestmark = pytest.mark.integration

DOCKER = Path(__file__).parents[2] / "docker"
IMAGE = "mlops-assets-cuda:0.1.0"


@pytest.fixture
def environment(
    postgres: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    env = {
        "DAGSTER_POSTGRES_HOST": postgres.host,
        "DAGSTER_POSTGRES_PORT": str(postgres.port),
        "DAGSTER_POSTGRES_DB": "instances",
        "DAGSTER_POSTGRES_USER": postgres.user,
        "DAGSTER_POSTGRES_PASSWORD": "unused-with-trust-auth",
        "MLOPS_DAGSTER_BUCKET": "dagster",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "MLOPS_RUN_IMAGE": IMAGE,
    }
    postgres.create_database("instances")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env


def load(name: str, home: Path) -> dg.DagsterInstance:
    home.mkdir(exist_ok=True)
    shutil.copy(DOCKER / name, home / "dagster.yaml")
    text = (home / "dagster.yaml").read_text().replace("/opt/dagster/home", str(home))
    (home / "dagster.yaml").write_text(text.replace("/tmp/dagster-compute-logs", str(home / "l")))
    return dg.DagsterInstance.from_config(str(home))


def test_the_production_instance(environment: dict[str, str], tmp_path: Path) -> None:
    with load("dagster.yaml", tmp_path / "home") as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"
        from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

        logs = instance.compute_log_manager
        assert isinstance(logs, S3ComputeLogManager)
        assert logs.inst_data is not None
        assert logs.inst_data.config_dict["endpoint_url"] == {"env": "AWS_ENDPOINT_URL"}


def test_the_scale_instance_launches_runs_in_gpu_containers(
    environment: dict[str, str], tmp_path: Path
) -> None:
    from dagster_docker import DockerRunLauncher

    with load("dagster.scale.yaml", tmp_path / "home") as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, DockerRunLauncher)
        assert launcher.image == IMAGE
        assert launcher.networks == ["mlops-assets"]
        (request,) = launcher.container_kwargs["device_requests"]
        assert request == {"driver": "nvidia", "count": 1, "capabilities": [["gpu"]]}
        assert launcher.env_vars is not None
        assert "DAGSTER_POSTGRES_PASSWORD" in launcher.env_vars  # names only: values from env
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


@pytest.mark.parametrize(
    ("name", "unset"),
    [("dagster.scale.yaml", "MLOPS_RUN_IMAGE"), ("dagster.yaml", "DAGSTER_POSTGRES_PASSWORD")],
)
def test_a_missing_setting_is_named(
    name: str,
    unset: str,
    environment: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(unset)
    with (
        pytest.raises(dg.DagsterInvalidConfigError, match=unset),
        load(name, tmp_path / "home") as instance,
    ):
        assert instance.run_launcher is not None  # built on first use
