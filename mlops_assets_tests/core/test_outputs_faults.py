"""An S3 server that stops in the middle of a tile upload: no half artefact is ever published.

A real S3-compatible HTTP server (moto) is stopped after a few objects of an artefact went up;
the publish fails with the connection error, a reader finds no ``index.json`` (so the key is not
published and nothing half-written is served), and the retried publish after the server is back
publishes the whole artefact. moto keeps its buckets in the test process, so stopping and
restarting its server on the same port loses nothing, as a restarted MinIO would not either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError
from moto.server import ThreadedMotoServer

from mlops_assets.core.outputs import MARKER, S3OutputStore
from mlops_assets_tests.conftest import free_port

pytestmark = pytest.mark.integration


def _artefact(directory: Path, files: int = 6) -> Path:
    directory.mkdir(parents=True)
    for index in range(files):
        (directory / f"tile-{index:03d}.bin").write_bytes(bytes([index]) * 4096)
    (directory / MARKER).write_text(json.dumps({"tiles": files}))
    return directory


class _StopsTheServer:
    """A boto3 client that stops the S3 server once ``after`` objects went up."""

    def __init__(self, client: Any, server: ThreadedMotoServer, after: int) -> None:
        self._client = client
        self._server = server
        self.after = after
        self.uploaded: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def upload_file(self, filename: str, bucket: str, key: str) -> None:
        if len(self.uploaded) == self.after:
            self._server.stop()
        self._client.upload_file(filename, bucket, key)
        self.uploaded.append(key)


def test_a_stopped_s3_server_leaves_no_published_half_and_the_retry_publishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2),
    )
    client.create_bucket(Bucket="tiles-faults")
    local = _artefact(tmp_path / "tiles")
    stopping = _StopsTheServer(client, server, after=3)
    try:
        with pytest.raises(EndpointConnectionError):
            S3OutputStore(stopping, "tiles-faults", "runs").publish(local, "cd/farm/abc")
        assert len(stopping.uploaded) == 3 and not any(
            k.endswith(MARKER) for k in stopping.uploaded
        )
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        store = S3OutputStore(client, "tiles-faults", "runs")
        # The three tiles that went up are there, the marker is not: nothing is published.
        listed = client.list_objects_v2(Bucket="tiles-faults", Prefix="runs/cd/farm/abc/")
        keys = sorted(o["Key"] for o in listed.get("Contents", []))
        assert len(keys) == 3 and f"runs/cd/farm/abc/{MARKER}" not in keys
        assert not store.is_published("cd/farm/abc")
        with pytest.raises(FileNotFoundError, match="no published artefact"):
            store.fetch("cd/farm/abc", tmp_path / "cache")
        # The step's retry publishes the whole artefact, the marker last.
        store.publish(local, "cd/farm/abc")
        assert store.is_published("cd/farm/abc")
        fetched = store.fetch("cd/farm/abc", tmp_path / "cache")
        assert sorted(p.name for p in fetched.iterdir()) == sorted(p.name for p in local.iterdir())
    finally:
        server.stop()
