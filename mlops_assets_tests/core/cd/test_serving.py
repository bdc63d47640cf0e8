"""The registered model behind a real ``mlflow models serve`` on a loopback port."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import mlflow
import numpy as np
import pytest
import requests

from mlops_assets.core.tracking import CHAMPION, Tracker, load_pyfunc
from mlops_assets_tests.core.cd import mlflow_uri, register_tiny_model
from mlops_assets_tests.processes import mlflow_models_serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # starts a server (about 15 s)

NAME = "change-detection-unet"


@dataclass
class Served:
    address: str
    tracker: Tracker


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``mlflow models serve -m models:/NAME@champion --env-manager local``, as the README says."""
    root = tmp_path_factory.mktemp("serve")
    tracker = Tracker(mlflow_uri(tmp_path_factory, root), "change-detection", root / "artifacts")
    _, _, version = register_tiny_model(tracker, NAME)
    tracker.set_alias(NAME, CHAMPION, version)
    model_uri = f"models:/{NAME}@{CHAMPION}"
    with mlflow_models_serve(model_uri, tracker.tracking_uri, root / "serve.log") as server:
        yield Served(server.address, tracker)


def pair(seed: int, n: int = 1, size: int = 32) -> dict[str, list[object]]:
    rng = np.random.default_rng(seed)
    return {
        role: rng.integers(200, 3000, (n, 4, size, size)).astype(np.float32).tolist()
        for role in ("pre", "post")
    }


STATS = {
    "pre_mean": [1600.0] * 4,
    "pre_std": [800.0] * 4,
    "post_mean": [1500.0] * 4,
    "post_std": [820.0] * 4,
}


def invoke(served: Served, body: object, raw: str | None = None) -> requests.Response:
    return requests.post(
        f"{served.address}/invocations",
        data=raw if raw is not None else json.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )


def test_invocations_answer_a_pair_as_the_pyfunc_documents(served: Served) -> None:
    inputs = pair(0)
    response = invoke(served, {"inputs": inputs, "params": STATS})
    assert response.status_code == 200, response.text
    predictions = np.asarray(response.json()["predictions"], np.float32)
    assert predictions.shape == (1, 32, 32)
    assert ((predictions >= 0) & (predictions <= 1)).all()
    local = load_pyfunc(served.tracker, f"models:/{NAME}@{CHAMPION}")
    arrays = {k: np.asarray(v, np.float32) for k, v in inputs.items()}
    np.testing.assert_allclose(predictions, local.predict(None, arrays, STATS), atol=1e-5)
    assert mlflow.__version__ in requests.get(f"{served.address}/version", timeout=5).text


@pytest.mark.parametrize(
    ("body", "raw", "reason"),
    [
        (None, '{"inputs": {"pre": [[[', "valid JSON"),
        ({"inputs": {"pre": pair(1)["pre"]}}, None, "pre"),
        (
            {"inputs": {"pre": pair(1)["pre"], "post": pair(1, size=16)["post"]}},
            None,
            r"must both be \[N, C, H, W\]",
        ),
        (
            {"inputs": {k: np.asarray(v)[:, :3].tolist() for k, v in pair(1).items()}},
            None,
            "shape",
        ),
        ({"inputs": pair(1), "params": {**STATS, "pre_std": [1.0, 2.0]}}, None, "pre_std"),
    ],
    ids=["malformed-json", "missing-post", "sizes-differ", "three-bands", "short-stats"],
)
def test_bad_requests_are_400_with_the_reason_and_no_stack_trace(
    served: Served, body: object, raw: str | None, reason: str
) -> None:
    response = invoke(served, body, raw)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["error_code"] in ("BAD_REQUEST", "INVALID_PARAMETER_VALUE")
    assert re.search(reason, error["message"]), error["message"]
    assert "stack_trace" not in error and "Traceback" not in response.text
    assert requests.get(f"{served.address}/ping", timeout=5).ok  # still serving
