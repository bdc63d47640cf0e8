"""What the novel-view-synthesis assets hand each other (``nvs/splats``, ``nvs/render``).

``nvs/scene`` hands on a `mlops_assets.core.scenes.nvs.NVSScene`, ``nvs/registered_splats`` a
`SplatsRegistrationRecord`.
"""

from __future__ import annotations

import dataclasses

from mlops_assets.core.records import ModelOutputRecord, RegistrationRecord, TrainingRecord


@dataclasses.dataclass(frozen=True)
class SplatsRecord(TrainingRecord):
    """``nvs/splats``: one scene's training."""

    scene_id: str
    lakefs_commit: str

    def lineage_tags(self) -> dict[str, str]:
        """The scene, its repository and the commit trained on."""
        return {
            "scene_id": self.scene_id,
            **super().lineage_tags(),
            "lakefs.commit": self.lakefs_commit,
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class SplatsRegistrationRecord(RegistrationRecord):
    """``nvs/registered_splats``: the gate on one scene's splats, and the commit they used."""

    scene_id: str
    lakefs_commit: str


@dataclasses.dataclass(frozen=True)
class RenderRecord(ModelOutputRecord):
    """``nvs/render``: the published .ply, orbit video and preview (commit-pinned URIs)."""

    ply: str
    video: str
    preview: str
    num_gaussians: int
