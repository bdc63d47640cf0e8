"""``cd-serving`` follows the champion alias in-process: reload on a move, keep on a failure."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import uvicorn
from mlflow.exceptions import MlflowException

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
    assert follower.last_error is not None
    assert follower.last_error.startswith(f"registered model {NAME!r} has no version under alias")
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


def test_a_mistyped_model_or_alias_is_logged_once_with_what_exists(
    tracker: Tracker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mlops_assets.serving.follower")
    missing_alias = f"registered model {NAME!r} has no version under alias 'champoin'"
    for model, alias, expected in (
        ("change-detection-unt", CHAMPION, "registered model 'change-detection-unt' does not"),
        (NAME, "champoin", missing_alias + " (aliases: champion->v1)"),
    ):
        caplog.clear()
        follower = registry_follower(tracker.tracking_uri, model, alias)
        for _ in range(3):
            assert not follower.poll() and follower.current is None
        (record,) = caplog.records  # once, not once a poll
        assert record.levelno == logging.WARNING
        assert expected in record.getMessage() and "(serving nothing)" in record.getMessage()
        assert follower.last_error is not None and expected in follower.last_error


def test_each_distinct_error_is_logged_once_and_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mlops_assets.serving.follower")
    answers: list[Any] = [OSError("connect to https://user:secret@mlflow:5000 refused")] * 2
    answers += [None, None, OSError("connect to https://user:secret@mlflow:5000 refused")]

    def resolve() -> tuple[str, str] | None:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    follower = AliasFollower(NAME, CHAMPION, resolve, lambda version: None)
    for _ in range(5):
        follower.poll()
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3, messages  # unreachable, no version, unreachable again
    assert "registry lookup failed" in messages[0] and "no version of" in messages[1]
    assert messages[2] == messages[0]
    assert not any("secret" in m for m in messages) and "secret" not in str(follower.last_error)


def test_a_request_over_the_pixel_bound_is_refused_by_the_model(tracker: Tracker) -> None:
    model = load_pyfunc_model(tracker, f"models:/{NAME}/1")
    big = np.zeros((1, 4, 1025, 1024), np.float32)  # 1 Mpx and one row
    with pytest.raises(MlflowException, match="N x H x W = 1049600 pixels: must be 1 to 1048576"):
        model.predict({"pre": big, "post": big})
    small = np.zeros((1, 4, 64, 64), np.float32)
    assert np.asarray(model.predict({"pre": small, "post": small})).shape == (1, 64, 64)


@contextlib.contextmanager
def serving(follower: AliasFollower, **options: Any) -> Generator[str]:
    """The app on a loopback port, in a thread of this process."""
    port = free_port()
    app = build_app(follower, **options)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
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


def test_a_body_over_the_limit_is_answered_413_before_it_is_read(tracker: Tracker) -> None:
    follower = registry_follower(tracker.tracking_uri, NAME, CHAMPION)
    follower.poll()
    body = json.dumps({"inputs": {k: v.tolist() for k, v in batch().items()}})
    with serving(follower, max_body_bytes=len(body)) as address:
        assert post(address, body).status_code == 200  # at the limit: served
        too_big = post(address, body + " ")
        assert too_big.status_code == 413
        assert too_big.json() == {
            "error_code": "REQUEST_LIMIT_EXCEEDED",
            "message": f"request body over this server's limit of {len(body)} bytes "
            "(--max-body-mb): send fewer or smaller windows per request",
        }
        # Chunked, no Content-Length: refused once the chunks pass the limit.
        chunks = (body[i : i + 1000].encode() for i in range(0, len(body), 1000))
        chunked = requests.post(
            f"{address}/invocations",
            data=itertools.chain(chunks, [b"  "]),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert chunked.status_code == 413 and "REQUEST_LIMIT_EXCEEDED" in chunked.text
        # A declared gigabyte is refused from its headers alone: the server never waits for it.
        host, port = address.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(
                b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000000000\r\n\r\n"
            )
            assert raw.recv(4096).startswith(b"HTTP/1.1 413 ")
        assert post(address, body).status_code == 200  # still serving


@pytest.mark.parametrize("max_concurrent", [1, 3])
def test_requests_past_max_concurrent_wait_their_turn(
    tracker: Tracker, max_concurrent: int
) -> None:
    follower = registry_follower(tracker.tracking_uri, NAME, CHAMPION)
    follower.poll()
    assert follower.current is not None
    inner = follower.current.model.unwrap_python_model()
    predict = inner.predict
    running = {"now": 0, "most": 0}
    lock = threading.Lock()

    def counting(*args: Any, **kwargs: Any) -> Any:
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        try:
            time.sleep(1.0)  # long enough for the other requests to arrive meanwhile
            return predict(*args, **kwargs)
        finally:
            with lock:
                running["now"] -= 1

    inner.predict = counting
    body = json.dumps({"inputs": {k: v.tolist() for k, v in batch().items()}})
    with serving(follower, max_concurrent=max_concurrent) as address:
        answers: list[int] = []
        clients = [
            threading.Thread(target=lambda: answers.append(post(address, body).status_code))
            for _ in range(3)
        ]
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=60)
    assert answers == [200, 200, 200]
    if max_concurrent == 1:
        assert running["most"] == 1  # one at a time: the others waited, bodies unread
    else:
        assert running["most"] >= 2  # the bound, not the test, is what serialised them
