"""Lineage settings every asset stamps on its outputs: code version and links back to the UIs."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from mlops_assets.core.lineage import git_sha
from mlops_assets.core.redact import redact_uri

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


# Dagster resources subclass ConfigurableResource unparameterised, as its API intends.
class LineageResource(dg.ConfigurableResource):  # pyright: ignore[reportMissingTypeArgument]
    """Code version and UI addresses used in metadata, tags and lakeFS commit links."""

    git_sha: str = Field(
        default="",
        description="Commit of the code (set in images built without .git); empty asks git.",
    )
    dagster_url: str = Field(
        default="http://localhost:3000", description="Base URL of the Dagster UI."
    )

    def code_version(self) -> str:
        """The git SHA of the code that runs."""
        return self.git_sha or git_sha(_PACKAGE_DIR)

    def run_url(self, run_id: str) -> str:
        """The Dagster UI page of a run, without any secret the URL carries (it is stored)."""
        return f"{redact_uri(self.dagster_url.rstrip('/'))}/runs/{run_id}"
