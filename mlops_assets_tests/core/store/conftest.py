"""Store fixtures: the same contract suite runs against every implementation.

* ``embedded``: `EmbeddedStore` under ``tmp_path``;
* ``lakefs-double``: `LakeFSStore` (the real lakefs_sdk client) against `LakeFSDouble`;
* ``lakefs``: `LakeFSStore` against a real server, when ``LAKEFS_ENDPOINT`` is set (``-m lakefs``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lakefs_sdk.api.repositories_api import RepositoriesApi
from lakefs_sdk.api_client import ApiClient
from lakefs_sdk.configuration import Configuration

from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.core.store.lakefs import LakeFSStore
from mlops_assets_tests.core.store.lakefs_double import LakeFSDouble

DOUBLE_KEY = "AKIAIOSFODNN7EXAMPLE"
DOUBLE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture
def lakefs_double(tmp_path: Path) -> Iterator[LakeFSDouble]:
    double = LakeFSDouble(tmp_path / "lakefs-server", DOUBLE_KEY, DOUBLE_SECRET).start()
    yield double
    double.stop()


def _real_lakefs(env: dict[str, str], tmp_path: Path) -> Iterator[VersionedStore]:
    endpoint = env.get("LAKEFS_ENDPOINT")
    if not endpoint:
        pytest.skip("LAKEFS_ENDPOINT is not set: no real lakeFS to test against")
    name = f"contract-{uuid.uuid4().hex[:10]}"
    namespace = env.get("LAKEFS_TEST_NAMESPACE_PREFIX", "local://contract-tests")
    store = LakeFSStore(
        endpoint,
        env["LAKEFS_ACCESS_KEY_ID"],
        env["LAKEFS_SECRET_ACCESS_KEY"],
        name,
        storage_namespace=f"{namespace.rstrip('/')}/{name}",
        cache_dir=tmp_path / "cache",
    )
    store.ensure_repository()
    yield store
    config = Configuration(
        host=f"{store.endpoint}/api/v1",
        username=env["LAKEFS_ACCESS_KEY_ID"],
        password=env["LAKEFS_SECRET_ACCESS_KEY"],
    )
    RepositoriesApi(ApiClient(config)).delete_repository(name)


@pytest.fixture(
    params=["embedded", "lakefs-double", pytest.param("lakefs", marks=pytest.mark.lakefs)]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VersionedStore]:
    """A fresh, empty repository (with ``main``) in each store implementation."""
    if request.param == "embedded":
        embedded = EmbeddedStore(tmp_path / "store", "contract")
        embedded.ensure_repository()
        yield embedded
    elif request.param == "lakefs-double":
        double: LakeFSDouble = request.getfixturevalue("lakefs_double")
        client = LakeFSStore(
            double.endpoint, DOUBLE_KEY, DOUBLE_SECRET, "contract", cache_dir=tmp_path / "cache"
        )
        client.ensure_repository()
        yield client
    else:
        yield from _real_lakefs(request.getfixturevalue("real_lakefs_env"), tmp_path)
