"""What the change-detection assets hand each other (``cd/tiles``, ``cd/model``, ``cd/change_map``).

``cd/scene`` hands on a `mlops_assets.core.scenes.cd.CDScene`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Self

from mlops_assets.core.records import ModelRef, Record


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


def tiles_by_scene(loaded: Mapping[str, Any] | None) -> dict[str, TilesRecord]:
    """``cd/model``'s ``tiles`` input, whatever shape Dagster loaded it in, by scene.

    Several partitions load as a dict of values by partition, a single one as its value alone,
    and no partition at all as None.
    """
    if not loaded:
        return {}
    if isinstance(loaded.get("scene_id"), str):
        record = TilesRecord.from_dict(loaded)
        return {record.scene_id: record}
    return {scene: TilesRecord.from_dict(value) for scene, value in sorted(loaded.items())}


@dataclasses.dataclass(frozen=True)
class CDModelRecord(Record):
    """``cd/model``: the MLflow run and logged model a training produced, and its inputs."""

    run_id: str
    model_uri: str
    experiment: str
    metrics: dict[str, float]
    best_epoch: int
    lakefs_commits: dict[str, str]  # scene -> commit trained on
    lakefs_repository: str
    git_sha: str
    tiles: dict[str, str]  # scene -> output store key of its tile set
    train_scenes: list[str]
    val_scenes: list[str]

    def version_tags(self) -> dict[str, str]:
        """The lineage tags of the model version registered from this training."""
        return {
            **{key: f"{value:.6f}" for key, value in self.metrics.items()},
            "lakefs.repository": self.lakefs_repository,
            "lakefs.commits": json.dumps(self.lakefs_commits, sort_keys=True),
            "git_sha": self.git_sha,
            "mlflow.run_id": self.run_id,
        }


@dataclasses.dataclass(frozen=True)
class ChangeMapRecord(Record):
    """``cd/change_map``: the published map and overlay, the model that made them, the figures."""

    scene_id: str
    source_commit: str
    outputs_branch: str
    outputs_commit: str
    change_map: str  # commit-pinned URI
    overlay: str  # commit-pinned URI
    model: ModelRef
    changed_area_m2: float | None
    changed_pixels: int
    changed_percent: float
    f1: float | None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The record in ``data`` (its ``model`` a nested dict)."""
        record = super().from_dict(data)
        return dataclasses.replace(record, model=ModelRef.from_dict(data["model"]))
