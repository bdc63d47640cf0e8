"""MLflow tracking and registry: SQLite under MLOPS_HOME by default, a server when configured."""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from mlops_assets.core.redact import redact_uri
from mlops_assets.resources.failures import failure_on
from mlops_assets.resources.lineage import LineageResource

if TYPE_CHECKING:  # MLflow is imported where a step runs, not when the code location loads
    from mlops_assets.core.tracking import DatasetRef, Tracker


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

    def reachable_tracker(self, experiment: str, label: str = "") -> Tracker:
        """A tracker bound to ``experiment`` whose server answers; else a `dagster.Failure`.

        The failure (retries allowed: a server comes back) says ``label`` (e.g. ``nvs/x: ``)
        and why the tracker could not be reached, with no credential.
        """
        from mlops_assets.core.tracking import TrackingError

        tracker = self.tracker(experiment)
        with failure_on(TrackingError, label=label):
            tracker.check_reachable()
        return tracker

    @contextlib.contextmanager
    def tracked_run(
        self,
        context: dg.AssetExecutionContext,
        tracker: Tracker,
        lineage: LineageResource,
        *,
        name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any],
        datasets: Sequence[DatasetRef],
    ) -> Generator[str]:
        """An MLflow run of this Dagster run, with the project's tags, params and dataset inputs.

        Every run carries the Dagster run id and its link and the code's git SHA as tags, plus
        ``tags``; ``params`` and the commit-pinned ``datasets`` are logged before the block runs.
        The run ends FINISHED with the block, FAILED when it raises.
        """
        run_tags = {
            "dagster.run_id": context.run.run_id,
            "dagster.run_url": lineage.run_url(context.run.run_id),
            "git_sha": lineage.code_version(),
            **tags,
        }
        with tracker.run(name, run_tags) as run_id:
            context.log.info(f"MLflow run {run_id} in {self.display_uri}")
            tracker.log_params(run_id, params)
            tracker.log_datasets(run_id, datasets)
            yield run_id

    @property
    def display_uri(self) -> str:
        """The tracking URI without credentials."""
        return redact_uri(self.tracking_uri)

    def model_url(self, name: str, version: str) -> str:
        """The MLflow UI page of a registered model version (without secrets: it is stored)."""
        return f"{redact_uri(self.ui_url.rstrip('/'))}/#/models/{name}/versions/{version}"
