"""An S3 server killed in the middle of a tile upload: nothing half is published, the retry is.

A real S3-compatible server process (``moto_server`` on loopback) receives ``cd/tiles``' upload
through the asset's own S3 output store; after a few objects it is killed (SIGKILL), so the next
upload fails against a dead server, and it is started again. A reader then finds the objects that
went up but no ``index.json``: the key is not published and nothing half-written is served. The
step's `RetryPolicy` (`mlops_assets.retries.EXTERNAL_RETRY`) runs it again, and the retry publishes
the whole set, once.

moto keeps its objects in memory; like a restarted MinIO, which keeps them on disk, the restarted
server here has what the killed one held: it records every request to a file and replays the file
when it starts (moto's recorder).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
import requests

from mlops_assets.assets.cd.scene import cd_scene
from mlops_assets.assets.cd.tiles import cd_tiles
from mlops_assets.core.outputs import MARKER, S3OutputStore
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.resources.outputs import S3OutputStoreResource
from mlops_assets_tests.assets.cd.test_chain import materialize
from mlops_assets_tests.conftest import commit_folder, free_port

pytestmark = pytest.mark.integration

BUCKET = "tiles"
PREFIX = "prod"


class MotoServer:
    """``moto_server`` in its own process group; what it held survives a kill and a restart."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.recording = directory / "requests.jsonl"
        self.log = directory / "moto.log"
        self.port = free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> None:
        """Start, wait until it answers, and replay what the previous process was sent."""
        replay = self.recording.is_file() and self.recording.stat().st_size > 0
        command = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*command, "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={
                    **os.environ,
                    "MOTO_ENABLE_RECORDING": "true",
                    "MOTO_RECORDER_FILEPATH": str(self.recording),
                },
            )
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.address}/moto-api/", timeout=2).ok:
                    break
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto_server did not come up: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        if replay:
            url = f"{self.address}/moto-api/recorder/replay-recording"
            requests.post(url, timeout=timeout_s).raise_for_status()

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Kill the server (SIGKILL: as if its machine went away)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        self.process.wait(timeout=20)
        self.process = None


class _KillsTheServer:
    """A boto3 client whose ``after``-th upload meets a killed server, started again after it."""

    def __init__(self, client: Any, server: MotoServer, after: int, seen: dict[str, Any]) -> None:
        self._client = client
        self._server = server
        self._after = after
        self._seen = seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def upload_file(self, filename: str, bucket: str, key: str) -> None:
        uploaded: list[str] = self._seen.setdefault("uploaded", [])
        if len(uploaded) == self._after and "killed_at" not in self._seen:
            self._seen["killed_at"] = key
            self._server.stop()
            try:
                self._client.upload_file(filename, bucket, key)  # fails: nobody listens
            finally:
                self._server.start()  # back before the step's retry
                self._seen["after_restart"] = _objects(self._server.address)
        self._client.upload_file(filename, bucket, key)
        uploaded.append(key)


def _client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def _objects(endpoint: str) -> list[str]:
    listed = _client(endpoint).list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/")
    return sorted(o["Key"] for o in listed.get("Contents", []))


def _attempts(result: dg.ExecuteInJobResult, step: str) -> int:
    """Attempts of ``step``: its start, then a restart per retry."""
    starts = ("STEP_START", "STEP_RESTARTED")
    return len(
        [e for e in result.all_events if e.step_key == step and e.event_type_value in starts]
    )


def test_an_s3_server_killed_mid_upload_publishes_nothing_half_and_the_step_retry_publishes(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    demo_cd_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    server = MotoServer(tmp_path / "moto")
    server.start()
    seen: dict[str, Any] = {}
    original = S3OutputStore.publish

    def publish_through_an_outage(self: S3OutputStore, local_dir: Path, key: str) -> None:
        if "killed_at" not in seen:
            self.client = _KillsTheServer(self.client, server, after=3, seen=seen)
        original(self, local_dir, key)

    monkeypatch.setattr(S3OutputStore, "publish", publish_through_an_outage)
    try:
        _client(server.address).create_bucket(Bucket=BUCKET)
        production = {
            **resources,
            "output_store": S3OutputStoreResource(
                endpoint_url=server.address,
                bucket=BUCKET,
                prefix=PREFIX,
                cache_dir=str(tmp_path / "s3-cache"),
            ),
        }
        commit_folder(store, demo_cd_dir, "cd/farm/")
        result = materialize([cd_scene, cd_tiles], instance, production, "farm")

        # The outage: three objects went up, the fourth met a dead server; after the restart the
        # three are there and the marker is not, so a reader sees nothing published.
        assert "killed_at" in seen and not seen["killed_at"].endswith(MARKER)
        half = seen["after_restart"]
        assert len(half) == 3 and not [k for k in half if k.endswith(MARKER)]
        failed = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
        assert [e.step_key for e in failed] == ["cd__tiles"]
        assert server.address in str(failed[0].event_specific_data), failed[0]

        # The step's RetryPolicy ran it again, and the retry published the whole set once.
        assert result.success
        assert _attempts(result, "cd__tiles") == 2
        (tiles,) = result.asset_materializations_for_node("cd__tiles")
        uri = str(tiles.metadata["tiles_uri"].value)
        key = uri.removeprefix(f"s3://{BUCKET}/{PREFIX}/").rstrip("/")
        objects = _objects(server.address)
        assert [k for k in objects if k.endswith(MARKER)] == [f"{PREFIX}/{key}/{MARKER}"]
        assert set(half) < set(objects)
        s3 = S3OutputStore(_client(server.address), BUCKET, PREFIX)
        fetched = s3.fetch(key, tmp_path / "reader")
        index = json.loads((fetched / MARKER).read_text())
        names = {p.relative_to(fetched).as_posix() for p in fetched.rglob("*") if p.is_file()}
        assert {f"{PREFIX}/{key}/{n}" for n in names} == set(objects)
        assert len(index["tiles"]) == int(tiles.metadata["tile_count"].value)  # type: ignore[arg-type]
    finally:
        server.stop()
