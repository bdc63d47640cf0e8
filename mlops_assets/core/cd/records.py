"""What the change-detection assets hand each other (``cd/tiles``, ``cd/model``, ``cd/change_map``).

``cd/scene`` hands on a `mlops_assets.core.scenes.cd.CDScene`, ``cd/evaluation`` a
`mlops_assets.core.cd.report.EvaluationReport`, ``cd/registered_model`` a
`CDRegistrationRecord`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from mlops_assets.core.records import (
    ModelOutputRecord,
    Record,
    RegistrationRecord,
    TrainingRecord,
)

#: Tags of a model run and version trained from a sweep's best params.
SWEEP_RUN_TAG = "sweep.run_id"
SWEEP_STUDY_TAG = "sweep.study"


@dataclasses.dataclass(frozen=True)
class TilesRecord(Record):
    """``cd/tiles``: where a scene's tile set is published, and what it holds."""

    scene_id: str
    repository: str
    commit_id: str
    key: str  # the output store key of the tile set
    uri: str
    published: bool  # False: every window was dropped and nothing was published
    tile_count: int
    labelled_tiles: int
    has_label: bool
    config_hash: str
    sources: dict[str, str] = dataclasses.field(default_factory=lambda: dict[str, str]())

    @property
    def data_version(self) -> str:
        """The tile set's version: the scene commit and the tiling config."""
        return f"{self.commit_id[:16]}-{self.config_hash}"


def tiles_by_scene(loaded: TilesRecord | Mapping[str, Any] | None) -> dict[str, TilesRecord]:
    """``cd/model``'s ``tiles`` input, whatever shape Dagster loaded it in, by scene.

    Several partitions load as a dict of values by partition, a single one as its value alone,
    and no partition at all as None; a value is a `TilesRecord` or its `TilesRecord.to_dict`
    form (as the JSON IO manager loads it).
    """
    if not loaded:
        return {}
    if isinstance(loaded, TilesRecord) or isinstance(loaded.get("scene_id"), str):
        record = _tiles(loaded)
        return {record.scene_id: record}
    return {scene: _tiles(value) for scene, value in sorted(loaded.items())}


def _tiles(value: TilesRecord | Mapping[str, Any]) -> TilesRecord:
    return value if isinstance(value, TilesRecord) else TilesRecord.from_dict(value)


@dataclasses.dataclass(frozen=True)
class CDModelRecord(TrainingRecord):
    """``cd/model``: the training on every labelled scene's tiles."""

    best_epoch: int
    lakefs_commits: dict[str, str]  # scene -> commit trained on
    tiles: dict[str, str]  # scene -> output store key of its tile set
    train_scenes: list[str]
    val_scenes: list[str]
    # Trained with a sweep's best params (cd/model params_from: sweep): its MLflow run and study.
    sweep_run_id: str = ""
    sweep_study: str = ""

    def lineage_tags(self) -> dict[str, str]:
        """The repository and the commit of every scene trained on (and the sweep, if any)."""
        commits = json.dumps(self.lakefs_commits, sort_keys=True)
        tags = {**super().lineage_tags(), "lakefs.commits": commits}
        if self.sweep_run_id:
            tags |= {SWEEP_RUN_TAG: self.sweep_run_id, SWEEP_STUDY_TAG: self.sweep_study}
        return tags


@dataclasses.dataclass(frozen=True, kw_only=True)
class CDRegistrationRecord(RegistrationRecord):
    """``cd/registered_model``: the gate on ``cd/model``'s training, and the scenes it used."""

    lakefs_commits: dict[str, str]  # scene -> commit trained on


@dataclasses.dataclass(frozen=True)
class ChangeMapRecord(ModelOutputRecord):
    """``cd/change_map``: the published map and overlay (commit-pinned URIs) and its figures."""

    change_map: str
    overlay: str
    changed_area_m2: float | None
    changed_pixels: int
    changed_percent: float
    f1: float | None


@dataclasses.dataclass(frozen=True)
class SweepRecord(Record):
    """``cd/sweep``: the study, its parent MLflow run and its best trial."""

    study_name: str
    run_id: str
    storage: str  # without credentials
    best_value: float
    best_trial: int
    best_params: dict[str, Any]
    best_overrides: dict[str, Any]  # TrainConfig fields
    lakefs_commits: dict[str, str]
    git_sha: str
