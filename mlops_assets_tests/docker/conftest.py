"""A throw-away PostgreSQL cluster and an MLflow server on it, shared by the docker/ tests."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from mlops_assets_tests.docker.servers import MlflowServer
from mlops_assets_tests.postgres import PostgresCluster, pg_bin_dir, postgres_cluster

#: The bucket of the MLflow server's artifacts (``--artifacts-destination``).
BUCKET = "mlflow"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A running cluster on a loopback port; skipped only where PostgreSQL is not installed."""
    if pg_bin_dir() is None:
        pytest.skip("initdb/pg_ctl not installed (.ci/run installs Debian's postgresql)")
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def mlflow_pg(
    postgres: PostgresCluster, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """One ``mlflow server`` on a fresh PostgreSQL database with artifacts in ``s3://mlflow``."""
    boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1", **creds()
    ).create_bucket(Bucket=BUCKET)
    server = MlflowServer(
        postgres.create_database("mlflow"),
        f"s3://{BUCKET}/",
        tmp_path_factory.mktemp("mlflow-pg") / "server.log",
        {**S3_ENV, "MLFLOW_S3_ENDPOINT_URL": moto_endpoint, "AWS_DEFAULT_REGION": "us-east-1"},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def creds() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
    }
