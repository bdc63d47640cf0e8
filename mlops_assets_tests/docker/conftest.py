"""One throw-away PostgreSQL cluster shared by every test under mlops_assets_tests/docker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mlops_assets_tests.postgres import PostgresCluster, pg_bin_dir, postgres_cluster


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A running cluster on a loopback port; skipped only where PostgreSQL is not installed."""
    if pg_bin_dir() is None:
        pytest.skip("initdb/pg_ctl not installed (.ci/run installs Debian's postgresql)")
    with postgres_cluster() as cluster:
        yield cluster
