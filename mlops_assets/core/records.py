"""Typed records that one asset hands the next, stored as JSON by the IO manager.

A record is a frozen dataclass read by attribute. `Record.to_dict` gives the JSON-serialisable
form the assets return (the same keys as the dicts they returned before, so materialisations
written earlier still load), and `Record.from_dict` reads it back, ignoring keys a newer writer
added.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Self


@dataclasses.dataclass(frozen=True)
class Record:
    """Base of the records between assets: `to_dict` and `from_dict` for flat fields."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable form (nested records become dicts)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The record in ``data``; keys that are not fields are ignored.

        A missing key takes its field's default where the field has one; a missing key of a
        field without a default raises `TypeError` naming the field.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclasses.dataclass(frozen=True)
class ModelRef(Record):
    """A registered model version, and the MLflow run that trained it."""

    name: str
    version: str
    run_id: str


@dataclasses.dataclass(frozen=True)
class TrainingRecord(Record):
    """A training's MLflow run and logged model, with the lineage its registered version gets."""

    run_id: str
    model_uri: str
    experiment: str
    metrics: dict[str, float]
    lakefs_repository: str
    git_sha: str

    def lineage_tags(self) -> dict[str, str]:
        """Where the training data came from, as model-version tags."""
        return {"lakefs.repository": self.lakefs_repository}

    def version_tags(self) -> dict[str, str]:
        """The tags of the model version registered from this training."""
        metrics = {key: f"{value:.6f}" for key, value in self.metrics.items()}
        return {
            **metrics,
            **self.lineage_tags(),
            "git_sha": self.git_sha,
            "mlflow.run_id": self.run_id,
        }


@dataclasses.dataclass(frozen=True)
class ModelOutputRecord(Record):
    """What a registered model made from a scene commit and published to the outputs branch."""

    scene_id: str
    source_commit: str
    outputs_branch: str
    outputs_commit: str
    model: ModelRef

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The record in ``data`` (its ``model`` a nested dict)."""
        record = super().from_dict(data)
        return dataclasses.replace(record, model=ModelRef.from_dict(data["model"]))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegistrationRecord(Record):
    """A training put to the promotion gate: the decision and, if it passed, the version.

    What ``cd/registered_model`` and ``nvs/registered_splats`` hand on; each model family adds
    the lineage of what it trained on.
    """

    model_name: str
    run_id: str
    gate: str  # the gate's reason, whichever way it went
    metrics: dict[str, float]
    git_sha: str
    registered: bool = False
    version: str | None = None  # None: not registered
    aliases: list[str] = dataclasses.field(default_factory=lambda: list[str]())

    def registered_as(self, version: str | None, aliases: Sequence[str]) -> Self:
        """This record after registering ``version`` (None: the gate failed) under ``aliases``."""
        moved = list(aliases) if version is not None else []
        return dataclasses.replace(
            self, registered=version is not None, version=version, aliases=moved
        )
