"""MLflow tracking and registry: SQLite under MLOPS_HOME by default, a server when configured."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from mlops_assets.core.redact import redact_uri

if TYPE_CHECKING:  # MLflow is imported where a step runs, not when the code location loads
    from mlops_assets.core.tracking import Tracker


# Dagster resources subclass ConfigurableResource unparameterised, as its API intends.
class MLflowResource(dg.ConfigurableResource):  # pyright: ignore[reportMissingTypeArgument]
    """Which MLflow the assets log to and register in."""

    tracking_uri: str = Field(
        description="MLflow tracking (and registry) URI: sqlite:///... or http(s)://server."
    )
    artifact_root: str | None = Field(
        default=None,
        description="Artifact directory for experiments this process creates (embedded only).",
    )
    ui_url: str = Field(
        default="http://localhost:5000", description="Base URL of the MLflow UI, for links."
    )

    def tracker(self, experiment: str) -> Tracker:
        """A tracker bound to ``experiment``."""
        from mlops_assets.core.tracking import Tracker

        root = Path(self.artifact_root) if self.artifact_root else None
        return Tracker(self.tracking_uri, experiment, root)

    @property
    def display_uri(self) -> str:
        """The tracking URI without credentials."""
        return redact_uri(self.tracking_uri)

    def model_url(self, name: str, version: str) -> str:
        """The MLflow UI page of a registered model version (without secrets: it is stored)."""
        return f"{redact_uri(self.ui_url.rstrip('/'))}/#/models/{name}/versions/{version}"
