"""LakeFSStore behaviour beyond the shared contract: faults, credentials, the S3 gateway."""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from mlops_assets.core.store.lakefs import LakeFSStore
from mlops_assets.core.store.types import (
    ProtectedBranchError,
    StoreError,
    StoreUnavailableError,
)
from mlops_assets_tests.core.store.conftest import DOUBLE_KEY, DOUBLE_SECRET
from mlops_assets_tests.core.store.lakefs_double import LakeFSDouble


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_is_reported_as_unavailable() -> None:
    store = LakeFSStore(f"http://127.0.0.1:{_free_port()}", "k", "s", "scenes", timeout_s=2)
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        store.resolve("main")
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        store.put("main", "a.txt", io.BytesIO(b"x"))


def test_bad_credentials_name_the_variables_and_never_the_secret(
    lakefs_double: LakeFSDouble,
) -> None:
    store = LakeFSStore(lakefs_double.endpoint, DOUBLE_KEY, "wrong-secret-value", "scenes")
    with pytest.raises(StoreError) as info:
        store.ensure_repository()
    assert "LAKEFS_SECRET_ACCESS_KEY" in str(info.value)
    assert "wrong-secret-value" not in str(info.value)
    assert "wrong-secret-value" not in repr(store)


def test_endpoint_forms_are_normalised(lakefs_double: LakeFSDouble) -> None:
    for endpoint in (lakefs_double.endpoint, f"{lakefs_double.endpoint}/api/v1/"):
        store = LakeFSStore(endpoint, DOUBLE_KEY, DOUBLE_SECRET, "scenes")
        store.ensure_repository()
        assert store.default_branch() == "main"


def test_uploads_go_out_as_one_streamed_request(lakefs_double: LakeFSDouble) -> None:
    store = LakeFSStore(lakefs_double.endpoint, DOUBLE_KEY, DOUBLE_SECRET, "scenes")
    store.ensure_repository()
    lakefs_double.requests.clear()
    store.put("main", "cd/s1/pre.tif", io.BytesIO(b"x" * (3 << 20)))
    assert lakefs_double.requests == ["POST /api/v1/repositories/scenes/branches/main/objects"]


def test_rasters_read_through_the_s3_gateway_with_gdal(
    lakefs_double: LakeFSDouble, tmp_path: Path
) -> None:
    path = tmp_path / "post.tif"
    pixels = (np.arange(128 * 96) % 251).astype(np.uint8).reshape(1, 96, 128)
    profile = {
        "driver": "GTiff",
        "width": 128,
        "height": 96,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(500000, 4500000, 10, 10),
        "tiled": True,
        "blockxsize": 32,
        "blockysize": 32,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    store = LakeFSStore(
        lakefs_double.endpoint, DOUBLE_KEY, DOUBLE_SECRET, "scenes", raster_access="s3_gateway"
    )
    store.ensure_repository()
    store.put("main", "cd/s1/post.tif", path, "image/tiff")
    commit = store.commit("main", "raster").id

    location = store.raster_location("main", "cd/s1/post.tif")
    assert location.path == f"/vsis3/scenes/{commit}/cd/s1/post.tif"
    assert DOUBLE_SECRET not in repr(location)
    lakefs_double.requests.clear()
    with location.open() as src:
        block = src.read(1, window=Window.from_slices(rows=(32, 64), cols=(64, 96)))
    np.testing.assert_array_equal(block, pixels[0, 32:64, 64:96])
    # GDAL read through the gateway (ranged GETs), not the REST API.
    assert lakefs_double.requests
    assert all(r.startswith(("GET /scenes/", "HEAD /scenes/")) for r in lakefs_double.requests)


# Faults: throttling and restarts are retried with backoff; a protected branch is not. ----------


def _store_on(double: LakeFSDouble, **kwargs: Any) -> LakeFSStore:
    store = LakeFSStore(double.endpoint, DOUBLE_KEY, DOUBLE_SECRET, "scenes", **kwargs)
    store.ensure_repository()
    return store


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_a_read_is_retried_after_throttling_or_a_server_error(
    lakefs_double: LakeFSDouble, status: int
) -> None:
    store = _store_on(lakefs_double)
    lakefs_double.fail_next("GET", r"/scenes/branches$", status, times=2)
    assert "main" in store.list_branches()  # answered on the third attempt
    tries = [r for r in lakefs_double.requests if r == "GET /api/v1/repositories/scenes/branches"]
    assert len(tries) == 3


@pytest.mark.parametrize(("status", "retried"), [(429, True), (503, True), (500, False)])
def test_a_commit_is_retried_only_when_the_server_did_not_process_it(
    lakefs_double: LakeFSDouble, status: int, retried: bool
) -> None:
    store = _store_on(lakefs_double)
    store.put("main", "a.txt", io.BytesIO(b"x"))
    lakefs_double.fail_next("POST", r"/branches/main/commits$", status)
    if retried:
        assert store.commit("main", "one").message == "one"
    else:
        with pytest.raises(StoreError, match=rf"HTTP {status}"):
            store.commit("main", "one")
    commits = [r for r in lakefs_double.requests if r.endswith("/branches/main/commits")]
    assert len(commits) == (2 if retried else 1)


def test_retries_give_up_with_the_last_answer(lakefs_double: LakeFSDouble) -> None:
    store = _store_on(lakefs_double, retry_attempts=2)
    lakefs_double.fail_next("GET", r"/scenes/branches$", 503, times=10)
    with pytest.raises(StoreError, match=r"HTTP 503"):
        store.list_branches()
    tries = [r for r in lakefs_double.requests if r == "GET /api/v1/repositories/scenes/branches"]
    assert len(tries) == 3


def test_an_upload_body_is_never_sent_twice(lakefs_double: LakeFSDouble) -> None:
    store = _store_on(lakefs_double)
    lakefs_double.fail_next("POST", r"/branches/main/objects$", 503)
    with pytest.raises(StoreError, match=r"HTTP 503"):
        store.put("main", "a.txt", io.BytesIO(b"payload"))
    assert not store.exists("main", "a.txt")  # no half (or empty) object
    store.put("main", "a.txt", io.BytesIO(b"payload"))  # the step's retry writes it whole
    assert store.read_bytes("main", "a.txt") == b"payload"


def test_a_protected_branch_is_a_distinct_clear_error(lakefs_double: LakeFSDouble) -> None:
    store = _store_on(lakefs_double)
    store.create_branch("work", "main")
    lakefs_double.protected.add("main")
    with pytest.raises(ProtectedBranchError, match=r"protected .*merge it"):
        store.put("main", "a.txt", io.BytesIO(b"x"))
    tries = [r for r in lakefs_double.requests if r.endswith("/branches/main/objects")]
    assert len(tries) == 1  # not retried: retrying cannot help
    # Writers that go through a branch and merge are unaffected.
    store.put("work", "a.txt", io.BytesIO(b"x"))
    commit = store.commit("work", "on a branch")
    store.merge(commit.id, "main", message="merge")
    assert store.read_bytes("main", "a.txt") == b"x"
