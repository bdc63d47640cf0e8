"""What ``cd/evaluation`` hands ``cd/registered_model``: both models scored on the same scenes.

`EvaluationReport` holds, for the challenger and the champion, a `SceneScore` per evaluation
scene (confusion at the threshold and probability histograms). It is a typed record like those in
`mlops_assets.core.cd.records`, light enough to name where the code location loads (the scoring
itself, with PyTorch and rasterio, is `mlops_assets.core.cd.evaluation`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlops_assets.core.scenes.evaluation import EvaluationSet

CHALLENGER_ROLE = "challenger"
CHAMPION_ROLE = "champion"


@dataclass(frozen=True)
class SceneScore:
    """One model on one scene: the confusion at the threshold and the probability histograms."""

    scene_id: str
    tp: int
    fp: int
    fn: int
    tn: int
    pixel_area_m2: float | None  # None on a pixel grid (areas in pixels)
    positive_hist: tuple[int, ...]  # labelled changed pixels per probability bin
    negative_hist: tuple[int, ...]  # labelled unchanged pixels per probability bin

    @property
    def precision(self) -> float:
        """TP / (TP + FP); nothing predicted and nothing there is perfect."""
        if self.tp + self.fp == 0:
            return 1.0 if self.fn == 0 else 0.0
        return self.tp / (self.tp + self.fp)

    @property
    def recall(self) -> float:
        """TP / (TP + FN); nothing to find and nothing predicted is perfect."""
        if self.tp + self.fn == 0:
            return 1.0 if self.fp == 0 else 0.0
        return self.tp / (self.tp + self.fn)

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN), 1 when there is nothing to find and nothing was found."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 1.0

    @property
    def iou(self) -> float:
        """TP / (TP + FP + FN) of the changed class."""
        denominator = self.tp + self.fp + self.fn
        return self.tp / denominator if denominator else 1.0

    @property
    def predicted_pixels(self) -> int:
        """Labelled pixels predicted as changed."""
        return self.tp + self.fp

    @property
    def labelled_changed_pixels(self) -> int:
        """Pixels the label marks as changed."""
        return self.tp + self.fn

    def area(self, pixels: int) -> float:
        """``pixels`` in square metres (in pixels on a pixel grid)."""
        return pixels * self.pixel_area_m2 if self.pixel_area_m2 is not None else float(pixels)

    def pr_curve(self) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
        """Precision and recall at each bin's lower edge as threshold, and average precision."""
        pos = np.cumsum(np.asarray(self.positive_hist, np.float64)[::-1])[::-1]
        neg = np.cumsum(np.asarray(self.negative_hist, np.float64)[::-1])[::-1]
        total = pos[0] if len(pos) else 0.0
        predicted = pos + neg
        precision = np.divide(pos, predicted, out=np.ones_like(pos), where=predicted > 0)
        recall = pos / total if total else np.zeros_like(pos)
        # Recall falls as the threshold rises: sum precision over each step down in recall.
        steps = recall - np.append(recall[1:], 0.0)
        return precision, recall, float(np.sum(steps * precision))

    def __add__(self, other: SceneScore) -> SceneScore:
        area = self.pixel_area_m2 if self.pixel_area_m2 == other.pixel_area_m2 else None
        return SceneScore(
            "total",
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.tn + other.tn,
            area,
            tuple(a + b for a, b in zip(self.positive_hist, other.positive_hist, strict=True)),
            tuple(a + b for a, b in zip(self.negative_hist, other.negative_hist, strict=True)),
        )

    def metrics(self) -> dict[str, float]:
        """The figures a report shows."""
        return {
            "f1": self.f1,
            "iou": self.iou,
            "precision": self.precision,
            "recall": self.recall,
            "average_precision": self.pr_curve()[2],
            "changed_area_predicted": self.area(self.predicted_pixels),
            "changed_area_labelled": self.area(self.labelled_changed_pixels),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "scene_id": self.scene_id,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            "pixel_area_m2": self.pixel_area_m2,
            "positive_hist": list(self.positive_hist),
            "negative_hist": list(self.negative_hist),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SceneScore:
        """Inverse of `to_dict`."""
        return cls(
            str(data["scene_id"]),
            int(data["tp"]),
            int(data["fp"]),
            int(data["fn"]),
            int(data["tn"]),
            None if data["pixel_area_m2"] is None else float(data["pixel_area_m2"]),
            tuple(int(v) for v in data["positive_hist"]),
            tuple(int(v) for v in data["negative_hist"]),
        )


def total_score(scores: Sequence[SceneScore]) -> SceneScore | None:
    """All scenes' pixels together (None without scenes)."""
    if not scores:
        return None
    total = scores[0]
    for score in scores[1:]:
        total = total + score
    return dataclasses.replace(total, scene_id="total")


@dataclass(frozen=True)
class EvaluationReport:
    """Both models on every evaluation scene (champion scores empty when there is none)."""

    evaluation_set: EvaluationSet
    threshold: float
    challenger: dict[str, Any]  # role, label, run_id, version, trained_scenes
    champion: dict[str, Any] | None
    challenger_scores: tuple[SceneScore, ...]
    champion_scores: tuple[SceneScore, ...] = field(default=())

    @property
    def challenger_total(self) -> SceneScore | None:
        """The challenger over all evaluation pixels."""
        return total_score(self.challenger_scores)

    @property
    def champion_total(self) -> SceneScore | None:
        """The champion over all evaluation pixels (None without a champion)."""
        return total_score(self.champion_scores)

    def seen_by(self, role: str) -> list[str]:
        """Evaluation scenes the model of ``role`` trained on (empty when it did not say)."""
        model = self.challenger if role == CHALLENGER_ROLE else self.champion
        trained = set((model or {}).get("trained_scenes") or [])
        return sorted(trained & set(self.evaluation_set.scene_ids))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the asset's value, the MLflow artifact)."""
        return {
            "evaluation_set": self.evaluation_set.to_dict(),
            "threshold": self.threshold,
            "challenger": self.challenger,
            "champion": self.champion,
            "challenger_scores": [s.to_dict() for s in self.challenger_scores],
            "champion_scores": [s.to_dict() for s in self.champion_scores],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationReport:
        """Inverse of `to_dict`."""
        return cls(
            EvaluationSet.from_dict(data["evaluation_set"]),
            float(data["threshold"]),
            dict(data["challenger"]),
            None if data["champion"] is None else dict(data["champion"]),
            tuple(SceneScore.from_dict(s) for s in data["challenger_scores"]),
            tuple(SceneScore.from_dict(s) for s in data["champion_scores"]),
        )
