"""The compose service and the Kubernetes manifest start the server the tests exercise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_assets.serving.__main__ import main
from mlops_assets.serving.follower import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENT,
    AliasFollower,
    build_app,
)

DOCKER = Path(__file__).parents[2] / "docker"


def _routes() -> set[str]:
    app = build_app(AliasFollower("m", "champion", lambda: None, lambda v: None))
    return {route.path for route in app.routes}  # pyright: ignore[reportAttributeAccessIssue]


def test_compose_serves_the_champion_with_a_healthcheck_on_a_real_route() -> None:
    compose: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    service = compose["services"]["cd-serving"]
    command = service["command"]
    assert command[:3] == ["python", "-m", "mlops_assets.serving"]
    assert "${CD_SERVING_MODEL:-change-detection-unet@champion}" in command
    assert command[command.index("--max-body-mb") + 1] == "${CD_SERVING_MAX_BODY_MB:-64}"
    assert service["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert service["depends_on"] == {"mlflow": {"condition": "service_healthy"}}
    probe = " ".join(service["healthcheck"]["test"])
    assert "http://127.0.0.1:8080/health" in probe and "/health" in _routes()
    assert not any("SECRET" in k or "PASSWORD" in k for k in service["environment"])


def test_kubernetes_manifest_matches_the_compose_service() -> None:
    deployment, service = yaml.safe_load_all(
        (DOCKER / "kubernetes" / "cd-serving.yaml").read_text()
    )
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "mlops_assets.serving"]
    assert "--model=change-detection-unet@champion" in container["args"]
    assert "--max-body-mb=64" in container["args"]
    assert DEFAULT_MAX_BODY_BYTES == 64 * 2**20 and DEFAULT_MAX_CONCURRENT == 1  # the 4Gi sizing
    routes = _routes()
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/version"
    assert {"/health", "/version", "/invocations"} <= routes
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "change-detection-unet"], "expected NAME@ALIAS"),
        (["--max-body-mb", "0"], "--max-body-mb must be positive"),
        (["--max-concurrent", "0"], "--max-concurrent must be at least 1"),
    ],
)
def test_bad_arguments_are_one_line_before_anything_starts(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
