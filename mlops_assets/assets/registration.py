"""Registering a trained model behind its promotion gate: shared by the CD and NVS registrations.

Both model families gate a candidate against a minimum and the current champion, register a
version with lineage tags only when the gate passes, move the challenger (and, with auto-promotion,
the champion) alias, and report the gate as a blocking asset check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import dagster as dg

from mlops_assets.assets.common import metadata
from mlops_assets.core.records import RegistrationRecord
from mlops_assets.resources.mlflow import MLflowResource

if TYPE_CHECKING:  # MLflow is imported where a step runs, not when the code location loads
    from mlops_assets.core.tracking import GateDecision, Tracker

R = TypeVar("R", bound=RegistrationRecord)


def champion_score(
    tracker: Tracker, name: str, alias: str, metric: str
) -> tuple[str | None, float | None]:
    """The version under ``alias`` and its ``metric`` (version tag, else its run's metric)."""
    champion = tracker.version_by_alias(name, alias)
    if champion is None:
        return None, None
    tagged = champion.tags.get(metric)
    score = float(tagged) if tagged else tracker.run_metric(str(champion.run_id), metric)
    return str(champion.version), score


def gated_registration(
    context: dg.AssetExecutionContext,
    tracker: Tracker,
    mlflow: MLflowResource,
    record: R,
    *,
    decision: GateDecision,
    model_uri: str,
    tags: dict[str, str],
    description: str,
    aliases: list[str],
    extra_metadata: dict[str, Any],
    check_name: str,
    check_metadata: dict[str, Any],
    label: str = "",
) -> dg.MaterializeResult[R]:
    """If ``decision`` passed, register ``model_uri`` as a version of ``record.model_name``.

    ``aliases`` are set in order on the new version. The asset's output is ``record`` with
    ``registered``, ``version`` and ``aliases`` filled in; the metadata and the gate check are
    the same for every model family, plus ``extra_metadata`` and ``check_metadata``.
    """
    name, run_id = record.model_name, record.run_id
    version: str | None = None
    if decision.passed:
        version = str(tracker.register(name, model_uri, run_id, tags, description).version)
        for alias in aliases:
            tracker.set_alias(name, alias, version)
        context.log.info(f"Registered {name} v{version} as {', '.join(aliases)}")
    else:
        context.log.warning(f"{label}Not registered: {decision.reason}")
    record = record.registered_as(version, aliases)
    return dg.MaterializeResult(
        value=record,
        data_version=dg.DataVersion("none" if version is None else f"{name}-v{version}"),
        metadata=metadata(
            {
                "model_name": name,
                "version": version,
                "aliases": record.aliases,
                "mlflow_run_id": run_id,
                **(
                    {"model_version": dg.MetadataValue.url(mlflow.model_url(name, version))}
                    if version is not None
                    else {}
                ),
                "gate": decision.reason,
                "champion_before": decision.champion_version,
                **extra_metadata,
            }
        ),
        check_results=[
            dg.AssetCheckResult(
                check_name=check_name,
                passed=decision.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=decision.reason,
                metadata=metadata(check_metadata),
            )
        ],
    )
