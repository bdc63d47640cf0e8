"""Shared fixtures for the whole suite."""

from __future__ import annotations

import os

import pytest

_DEPLOYMENT_VARIABLES = (
    "LAKEFS_ENDPOINT",
    "LAKEFS_ACCESS_KEY_ID",
    "LAKEFS_SECRET_ACCESS_KEY",
    "LAKEFS_STORAGE_NAMESPACE",
    "MLFLOW_TRACKING_URI",
    "MLOPS_HOME",
    "DAGSTER_HOME",
)


@pytest.fixture(scope="session")
def real_lakefs_env() -> dict[str, str]:
    """The caller's lakeFS variables, captured before each test's environment is cleared."""
    return {k: v for k, v in os.environ.items() if k.startswith("LAKEFS_")}


@pytest.fixture(autouse=True)
def _no_ambient_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's deployment from the environment."""
    for name in _DEPLOYMENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
