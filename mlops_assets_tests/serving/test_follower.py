"""``cd-serving`` follows the champion alias in-process: reload on a move, keep on a failure."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import uvicorn

from mlops_assets.core.tracking import CHAMPION, Tracker, load_pyfunc_model
from mlops_assets.serving.follower import AliasFollower, build_app, registry_follower
from mlops_assets_tests.conftest import free_port
from mlops_assets_tests.core.cd import mlflow_uri, register_tiny_model

NAME = "change-detection-unet"


@pytest.fixture
def tracker(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    """A registry with two tiny versions (different weights); champion on v1."""
    tracker = Tracker(mlflow_uri(tmp_path_factory, tmp_path / "mlflow"), "cd", tmp_path / "art")
    for seed in (0, 1):
        register_tiny_model(tracker, NAME, seed=seed)
    tracker.set_alias(NAME, CHAMPION, "1")
    return tracker


def batch() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        role: rng.integers(200, 3000, (1, 4, 16, 16)).astype(np.float32) for role in ("pre", "post")
    }


def test_the_follower_swaps_in_a_new_champion_only_once_it_has_loaded(tracker: Tracker) -> None:
    follower = registry_follower(tracker.tracking_uri, NAME, CHAMPION)
    assert follower.current is None
    assert follower.poll() and follower.current is not None
    first = follower.current
    assert (first.version, follower.last_error) == ("1", None)
    assert not follower.poll() and follower.current is first  # unchanged: nothing reloaded

    tracker.set_alias(NAME, CHAMPION, "2")
    assert follower.poll() and follower.current.version == "2"
    second = np.asarray(follower.current.model.predict(batch()))
    assert np.abs(second - np.asarray(first.model.predict(batch()))).max() > 1e-4

    tracker.client.delete_registered_model_alias(NAME, CHAMPION)
    assert not follower.poll() and follower.current.version == "2"  # keeps serving
    assert follower.last_error == f"no version of {NAME!r} under alias 'champion'"
    assert follower.status()["version"] == "2"


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(tracker: Tracker) -> None:
    target = {"version": ("1", "run-1")}

    def load(version: str) -> Any:
        if version == "2":
            raise OSError("artifact store unreachable: https://user:secret@minio:9000/x")
        return load_pyfunc_model(tracker, f"models:/{NAME}/{version}")

    follower = AliasFollower(NAME, CHAMPION, lambda: target["version"], load)
    assert follower.poll()
    target["version"] = ("2", "run-2")
    assert not follower.poll()
    assert follower.current is not None and follower.current.version == "1"
    assert follower.last_error is not None and follower.last_error.startswith("v2 failed to load")
    assert "secret" not in follower.last_error


def test_the_polling_thread_follows_a_move_within_a_few_polls(tracker: Tracker) -> None:
    follower = registry_follower(tracker.tracking_uri, NAME, CHAMPION)
    stop = threading.Event()
    thread = threading.Thread(target=follower.follow, args=(0.2, stop), daemon=True)
    thread.start()
    try:
        _wait(lambda: follower.current is not None and follower.current.version == "1")
        tracker.set_alias(NAME, CHAMPION, "2")
        _wait(lambda: follower.current is not None and follower.current.version == "2")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def _wait(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@contextlib.contextmanager
def serving(follower: AliasFollower) -> Generator[str]:
    """The app on a loopback port, in a thread of this process."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_app(follower), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait(lambda: server.started)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def post(address: str, body: str) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    return requests.post(f"{address}/invocations", data=body, headers=headers, timeout=30)


def test_the_server_answers_with_the_version_the_alias_names_now(tracker: Tracker) -> None:
    follower = registry_follower(tracker.tracking_uri, NAME, CHAMPION)
    body = json.dumps({"inputs": {k: v.tolist() for k, v in batch().items()}})
    with serving(follower) as address:
        health = requests.get(f"{address}/health", timeout=5)
        assert health.status_code == 503 and "no model loaded yet" in health.json()["message"]
        assert post(address, body).status_code == 503

        follower.poll()
        assert requests.get(f"{address}/health", timeout=5).ok
        first = post(address, body)
        assert first.status_code == 200 and first.headers["X-Model-Version"] == "1"
        assert np.asarray(first.json()["predictions"]).shape == (1, 16, 16)

        tracker.set_alias(NAME, CHAMPION, "2")
        follower.poll()
        second = post(address, body)
        assert second.status_code == 200 and second.headers["X-Model-Version"] == "2"
        assert second.json() != first.json()
        status = requests.get(f"{address}/version", timeout=5).json()
        assert (status["model"], status["alias"], status["version"]) == (NAME, CHAMPION, "2")

        for bad, reason in (
            ('{"inputs": {"pre": [[', "valid JSON"),
            (json.dumps({"inputs": {"pre": [[[[1.0]]]], "post": [[[[1.0, 2.0]]]]}}), "shape"),
        ):
            response = post(address, bad)
            assert response.status_code == 400, response.text
            assert re.search(reason, response.json()["message"])
            assert "Traceback" not in response.text and "stack_trace" not in response.json()
