"""What the novel-view-synthesis assets hand each other (``nvs/splats``, ``nvs/render``).

``nvs/scene`` hands on a `mlops_assets.core.scenes.nvs.NVSScene`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Self

from mlops_assets.core.records import ModelRef, Record


@dataclasses.dataclass(frozen=True)
class SplatsRecord(Record):
    """``nvs/splats``: the MLflow run and logged model of one scene's training."""

    scene_id: str
    run_id: str
    model_uri: str
    experiment: str
    metrics: dict[str, float]
    lakefs_commit: str
    lakefs_repository: str
    git_sha: str

    def version_tags(self) -> dict[str, str]:
        """The lineage tags of the model version registered from this training."""
        return {
            **{key: f"{value:.6f}" for key, value in self.metrics.items()},
            "scene_id": self.scene_id,
            "lakefs.repository": self.lakefs_repository,
            "lakefs.commit": self.lakefs_commit,
            "git_sha": self.git_sha,
            "mlflow.run_id": self.run_id,
        }


@dataclasses.dataclass(frozen=True)
class RenderRecord(Record):
    """``nvs/render``: the published .ply, orbit video and preview, and the model behind them."""

    scene_id: str
    source_commit: str
    outputs_branch: str
    outputs_commit: str
    ply: str  # commit-pinned URIs
    video: str
    preview: str
    model: ModelRef
    num_gaussians: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The record in ``data`` (its ``model`` a nested dict)."""
        record = super().from_dict(data)
        return dataclasses.replace(record, model=ModelRef.from_dict(data["model"]))
