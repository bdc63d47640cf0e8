"""Small helpers shared by the asset modules: config, metadata and check results."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import dagster as dg
from PIL import Image
from pydantic import Field

from mlops_assets.core.publish import Publication, link_metadata, publish_files
from mlops_assets.core.records import ModelRef
from mlops_assets.core.scenes.checks import CheckOutcome
from mlops_assets.keys import TAG_COMMIT
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.resources.scene_store import SceneStoreResource


class SceneRefConfig(dg.Config):
    """Which version of the scene to read."""

    ref: str | None = Field(
        default=None,
        description=(
            "Branch, tag or commit id to read the scene at. Empty: the store's branch (main). "
            "Sensors pass the commit they saw, so a run reads exactly that commit."
        ),
    )

    def resolve(self, context: dg.AssetExecutionContext, branch: str) -> str:
        """The ref to read: ``ref``, else the run's ``lakefs/commit`` tag, else ``branch``.

        The runs of a backfill the commit sensor launched carry its commit as a tag (a backfill
        has no per-op run config), so they read that commit too.
        """
        return self.ref or context.run.tags.get(TAG_COMMIT) or branch


class ProgressLog:
    """Progress lines of a long step, in the run's log (and on screen in ``make demo``).

    Milestones (an epoch, an evaluation) are always logged; finer-grained lines (a batch, a
    step) only when ``every_s`` seconds have passed since the last line, so a slow machine still
    shows progress at least that often and a fast one is not flooded.
    """

    def __init__(self, log: Any, every_s: float = 20.0) -> None:
        self._log = log
        self._every_s = every_s
        self._last = time.monotonic()

    def __call__(self, message: str, *, milestone: bool = True) -> None:
        """Log ``message`` if it is a milestone, or if the last line is ``every_s`` seconds old."""
        now = time.monotonic()
        if milestone or now - self._last >= self._every_s:
            self._log.info(message)
            self._last = now


def record_type(record: type[Any]) -> dg.DagsterType:
    """``record`` as the ``dagster_type`` of an asset with checks, whose value it is.

    Such an asset returns one `dg.MaterializeResult` for its value and its checks, which a return
    annotation cannot type. Dagster resolves a Python class given here as it resolves an
    annotation (to the same type an input annotated ``record`` gets), so the value is
    type-checked and shown under the record's name; the decorator's signature names only
    `dg.DagsterType`.
    """
    return cast(dg.DagsterType, record)


def metadata_value(value: Any) -> dg.MetadataValue[Any] | str | int | float | bool:
    """Turn a plain value into something Dagster shows well."""
    if isinstance(value, dg.MetadataValue):
        return value  # pyright: ignore[reportUnknownVariableType]
    if isinstance(value, bool | int | float | str):
        return value
    if value is None:
        return dg.MetadataValue.null()
    return dg.MetadataValue.json(value)


def metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    """`metadata_value` applied to every entry."""
    return {key: metadata_value(value) for key, value in values.items()}


def check_result(outcome: CheckOutcome) -> dg.AssetCheckResult:
    """A blocking-severity Dagster check result from a core check outcome."""
    return dg.AssetCheckResult(
        check_name=outcome.name,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=outcome.description,
        metadata=metadata(outcome.metadata),
    )


def markdown_table(header: list[str], rows: list[list[Any]]) -> dg.MetadataValue[Any]:
    """A small markdown table for the asset page."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def image_md(image: Image.Image, alt: str, max_side: int = 512) -> dg.MetadataValue[Any]:
    """An inline PNG the asset page shows (kept small: it lives in the event log)."""
    preview = image.copy()
    preview.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    preview.save(buffer, format="PNG", optimize=True)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")


def lakefs_links(links: Mapping[str, str]) -> dict[str, str]:
    """LakeFS commit metadata that its UI shows as buttons (``::lakefs::<Name>::url[url:ui]``)."""
    return link_metadata(links)


def publish_model_outputs(
    context: dg.AssetExecutionContext,
    scene_store: SceneStoreResource,
    lineage: LineageResource,
    mlflow: MLflowResource,
    *,
    scene: str,
    source_commit: str,
    source_repository: str,
    model: ModelRef,
    alias: str,
    files: Mapping[str, Path],
    message: str,
    extra: Mapping[str, str] | None = None,
) -> Publication:
    """Publish what a registered model made from ``scene`` to the outputs branch, in one merge.

    The commit carries the lineage every such output has: the source commit and repository, the
    model name, version, alias and MLflow run, the Dagster run, the git SHA, and links to the
    Dagster run and the model version (plus ``extra``).
    """
    lineage_meta = {
        "source_commit": source_commit,
        "source_repository": source_repository,
        "scene": scene,
        **(extra or {}),
        "model_name": model.name,
        "model_version": model.version,
        "model_alias": alias,
        "mlflow_run_id": model.run_id,
        "dagster_run_id": context.run.run_id,
        "git_sha": lineage.code_version(),
        **lakefs_links(
            {
                "Dagster": lineage.run_url(context.run.run_id),
                "MLflow": mlflow.model_url(model.name, model.version),
            }
        ),
    }
    return publish_files(
        scene_store.get_store(),
        scene_store.outputs_branch,
        scene_store.branch,
        scene,
        files,
        message,
        lineage_meta,
    )


def model_output_metadata(
    mlflow: MLflowResource, run_url: str, model: ModelRef, alias: str
) -> dict[str, Any]:
    """The metadata naming the model version an output was made with, and its MLflow run."""
    return {
        "model": f"{model.name} v{model.version} ({alias})",
        "model_version": dg.MetadataValue.url(mlflow.model_url(model.name, model.version)),
        "mlflow_run": dg.MetadataValue.url(run_url),
    }
