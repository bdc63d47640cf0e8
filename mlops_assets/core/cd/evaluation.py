"""Challenger and champion measured on the same evaluation scenes, with the same inference code.

Each model predicts every evaluation scene (`mlops_assets.core.scenes.evaluation`) through
`predict_scene`, exactly as ``cd/change_map`` does: the same sliding windows, blending, band
statistics and threshold. The written map is then compared with the label, streamed by rows:
a confusion matrix at the threshold and a histogram of the change probability of labelled
changed and unchanged pixels, from which the precision-recall curve is drawn. Scores add up over
scenes (pixels, not scene averages), so the total is the F1 of all evaluation pixels.

The scores and the report handed downstream are in `mlops_assets.core.cd.report`.
`same_set_gate` decides promotion from this comparison; `log_evaluation` puts the report on the
challenger's MLflow run (metrics, table, images, the scenes as dataset inputs).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning
from torch import nn

from mlops_assets.core.cd.config import InferenceConfig
from mlops_assets.core.cd.infer import NODATA, predict_scene
from mlops_assets.core.cd.raster import AlignedPair, open_aligned
from mlops_assets.core.cd.report import (
    CHALLENGER_ROLE,
    CHAMPION_ROLE,
    EvaluationReport,
    SceneScore,
)
from mlops_assets.core.cd.tiles import scene_stats
from mlops_assets.core.scenes.evaluation import EvaluationSet
from mlops_assets.core.scenes.layout import CDPaths
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.types import lakefs_uri
from mlops_assets.core.tracking import DatasetRef, GateDecision, Tracker

#: Run and model-version tag: the JSON list of scene ids a model trained or validated on.
TRAINED_SCENES_TAG = "cd.trained_scenes"
#: Probability bins of the precision-recall curve.
BINS = 100


def trained_scenes_tag(scene_ids: Sequence[str]) -> str:
    """The `TRAINED_SCENES_TAG` value for ``scene_ids``."""
    return json.dumps(sorted(set(scene_ids)))


def parse_trained_scenes(tags: Mapping[str, str]) -> tuple[str, ...] | None:
    """The scenes a model trained on, from its tags; None when it does not say (older models)."""
    raw = tags.get(TRAINED_SCENES_TAG)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return tuple(str(v) for v in value) if isinstance(value, list) else None  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]


@dataclass(frozen=True)
class Candidate:
    """A model to evaluate: the challenger (a run's model) or the champion (a version)."""

    role: str  # CHALLENGER_ROLE | CHAMPION_ROLE
    label: str  # how tables name it: "v3", "run 1a2b3c4d"
    net: nn.Module
    size_multiple: int
    run_id: str
    version: str | None = None
    trained_scenes: tuple[str, ...] | None = None  # None: not recorded


def score_map(
    pair: AlignedPair, change_map: Path, scene_id: str, area: float | None, rows: int = 256
) -> SceneScore:
    """Compare a written change map with the pair's label, ``rows`` rows at a time."""
    if pair.label is None:
        raise ValueError(f"cd/{scene_id} has no label: an evaluation scene must have one")
    tp = fp = fn = tn = 0
    pos = np.zeros(BINS, np.int64)
    neg = np.zeros(BINS, np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(change_map)
    with src:
        for row in range(0, pair.height, rows):
            height = min(rows, pair.height - row)
            strip = pair.read_rows(row, height)
            window = rasterio.windows.Window(0, row, pair.width, height)  # pyright: ignore[reportAttributeAccessIssue]
            prob, mask = src.read(window=window)
            label = strip.label
            assert label is not None  # the pair has a label
            scored = (mask != NODATA) & (label != 255)
            truth = label == 1
            change = mask == 1
            tp += int(np.count_nonzero(change & truth & scored))
            fp += int(np.count_nonzero(change & ~truth & scored))
            fn += int(np.count_nonzero(~change & truth & scored))
            tn += int(np.count_nonzero(~change & ~truth & scored))
            bins = np.clip((prob * BINS).astype(np.int64), 0, BINS - 1)
            pos += np.bincount(bins[scored & truth], minlength=BINS)
            neg += np.bincount(bins[scored & ~truth], minlength=BINS)
    return SceneScore(
        scene_id, tp, fp, fn, tn, area, tuple(int(v) for v in pos), tuple(int(v) for v in neg)
    )


def stale_reason(
    report: EvaluationReport, run_id: str, champion_now: tuple[str, str] | None
) -> str | None:
    """Why ``report`` cannot gate the model of run ``run_id`` now, or None when it can.

    ``champion_now`` is the current champion's (version, run id), None without one. The report
    must be of this run's model and against the champion that is still in place (another
    retrain may have promoted a version since); a champion that is this very run (an earlier
    attempt of the same registration promoted it) is not a change.
    """
    evaluated_run = str(report.challenger.get("run_id", ""))
    if evaluated_run != run_id:
        return f"it evaluated run {evaluated_run or '?'}, not this model's run {run_id}"
    evaluated = None if report.champion is None else str(report.champion.get("version"))
    if champion_now is None or champion_now[1] == run_id:
        current = evaluated if champion_now is not None else None
    else:
        current = champion_now[0]
    if current != evaluated:
        was = f"v{evaluated}" if evaluated else "no champion"
        now = f"v{current}" if current else "none"
        return f"the champion moved since it ran (compared with {was}, champion now {now})"
    return None


def _describe(candidate: Candidate) -> dict[str, Any]:
    return {
        "role": candidate.role,
        "label": candidate.label,
        "run_id": candidate.run_id,
        "version": candidate.version,
        "trained_scenes": None
        if candidate.trained_scenes is None
        else list(candidate.trained_scenes),
    }


def evaluate(
    store: VersionedStore,
    evaluation_set: EvaluationSet,
    challenger: Candidate,
    champion: Candidate | None,
    inference: InferenceConfig,
    device: torch.device,
    work_dir: Path,
    resampling: str = "bilinear",
    progress: Callable[[str], None] | None = None,
) -> EvaluationReport:
    """Predict every evaluation scene with both models and score each map against its label.

    Maps are written under ``work_dir`` and removed scene by scene. Scenes are read at the
    evaluation set's commit. `AlignmentError` and `ModelMismatchError` name the scene's file.
    """
    commit = evaluation_set.commit_id
    models = [challenger] if champion is None else [challenger, champion]
    scores: dict[str, list[SceneScore]] = {m.role: [] for m in models}
    for scene_id in evaluation_set.scene_ids:
        paths = CDPaths(scene_id)
        with open_aligned(
            store.raster_location(commit, paths.pre),
            store.raster_location(commit, paths.post),
            store.raster_location(commit, paths.label),
            resampling=resampling,
            names=(f"{scene_id}/pre.tif", f"{scene_id}/post.tif", f"{scene_id}/label.tif"),
            pixel_grid=_is_pixel_grid(store, commit, paths),
        ) as pair:
            pre_stats, post_stats = scene_stats(pair)
            for model in models:
                with tempfile.TemporaryDirectory(prefix="eval-", dir=work_dir) as tmp:
                    out = Path(tmp) / "change_map.tif"
                    summary = predict_scene(
                        pair,
                        model.net,
                        pre_stats,
                        post_stats,
                        inference,
                        out,
                        device,
                        model.size_multiple,
                    )
                    score = score_map(pair, out, scene_id, summary.pixel_area_m2)
                scores[model.role].append(score)
                if progress is not None:
                    progress(f"cd/{scene_id}: {model.label} ({model.role}) F1 {score.f1:.4f}")
    return EvaluationReport(
        evaluation_set,
        inference.threshold,
        _describe(challenger),
        None if champion is None else _describe(champion),
        tuple(scores[CHALLENGER_ROLE]),
        tuple(scores.get(CHAMPION_ROLE, [])),
    )


def _is_pixel_grid(store: VersionedStore, commit: str, paths: CDPaths) -> bool:
    manifest = f"{paths.prefix}scene.json"
    if not store.exists(commit, manifest):
        return False
    from mlops_assets.core.scenes.manifest import SceneManifest

    return SceneManifest.parse(store.read_bytes(commit, manifest), manifest).pixel_grid


# The gate ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SameSetDecision:
    """Whether the challenger may be registered, decided on the evaluation set, and why."""

    passed: bool
    reason: str
    candidate: float  # the challenger's F1 over the evaluation set (NaN without scenes)
    champion: float | None
    champion_version: str | None
    worse_scenes: tuple[str, ...] = ()  # scenes where the challenger's F1 is below the champion's

    def as_gate(self) -> GateDecision:
        """The same decision as the registration helpers take it."""
        return GateDecision(
            self.passed, self.reason, self.candidate, self.champion, self.champion_version
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "passed": self.passed,
            "reason": self.reason,
            "candidate": self.candidate,
            "champion": self.champion,
            "champion_version": self.champion_version,
            "worse_scenes": list(self.worse_scenes),
        }


def same_set_gate(
    report: EvaluationReport, minimum: float | None, tolerance: float
) -> SameSetDecision:
    """Pass when the challenger reaches ``minimum`` F1 and ``champion - tolerance`` on the set.

    ``minimum`` None: no absolute bar on the evaluation set (see `promotion_decision`).

    Refused outright when there is no evaluation scene, or when the challenger trained on one
    (its score there would flatter it). Per-scene regressions are named whatever the outcome.
    """
    champion = report.champion
    champion_version = None if champion is None else champion.get("version")
    total, champion_total = report.challenger_total, report.champion_total
    if total is None:
        return SameSetDecision(
            False,
            "no evaluation scenes: list labelled scenes in eval/scenes.json on main",
            math.nan,
            None,
            champion_version,
        )
    seen = report.seen_by(CHALLENGER_ROLE)
    champion_f1 = None if champion_total is None else champion_total.f1
    if seen:
        return SameSetDecision(
            False,
            f"refused: the challenger trained on evaluation scene(s) {', '.join(seen)}",
            total.f1,
            champion_f1,
            champion_version,
        )
    worse = tuple(
        c.scene_id
        for c, h in zip(report.challenger_scores, report.champion_scores, strict=False)
        if c.f1 < h.f1
    )
    n = len(report.challenger_scores)
    worse_text = (
        f"; worse on {len(worse)}/{n} scene(s): "
        + ", ".join(
            f"{c.scene_id} {c.f1:.4f} < {h.f1:.4f}"
            for c, h in zip(report.challenger_scores, report.champion_scores, strict=False)
            if c.f1 < h.f1
        )
        if worse
        else ""
    )
    note = ""
    if report.seen_by(CHAMPION_ROLE):
        note = (
            f" (the champion trained on {', '.join(report.seen_by(CHAMPION_ROLE))}: its score "
            "there is flattered)"
        )
    where = f"on {n} evaluation scene(s) at {report.evaluation_set.commit_id[:12]}"
    if total.f1 != total.f1 or (minimum is not None and total.f1 < minimum):
        reason = f"evaluation F1 {total.f1:.4f} {where} is below the minimum {minimum or 0:.4f}"
        return SameSetDecision(
            False, reason + worse_text, total.f1, champion_f1, champion_version, worse
        )
    if champion_f1 is not None and total.f1 < champion_f1 - tolerance:
        reason = (
            f"evaluation F1 {total.f1:.4f} {where} is worse than champion v{champion_version} "
            f"({champion_f1:.4f}) by more than the tolerance {tolerance:.4f}"
        )
        return SameSetDecision(
            False, reason + worse_text + note, total.f1, champion_f1, champion_version, worse
        )
    against = (
        f"champion v{champion_version} has {champion_f1:.4f} on the same scenes, "
        f"tolerance {tolerance:.4f}"
        if champion_f1 is not None
        else "no champion yet"
    )
    bar = "" if minimum is None else f" >= minimum {minimum:.4f}"
    reason = f"evaluation F1 {total.f1:.4f} {where}{bar}; {against}"
    return SameSetDecision(
        True, reason + worse_text + note, total.f1, champion_f1, champion_version, worse
    )


def promotion_decision(
    report: EvaluationReport, val_f1: float, min_val_f1: float, tolerance: float
) -> SameSetDecision:
    """The promotion gate of ``cd/registered_model``.

    The model's own quality bar stays its validation F1 (>= ``min_val_f1``: the preset's
    minimum, met on the scenes it was trained for); the comparison with the champion is on the
    evaluation set (challenger >= champion - ``tolerance``, both measured there now), which also
    refuses a challenger that trained on an evaluation scene.
    """
    if val_f1 != val_f1 or val_f1 < min_val_f1:
        total = report.challenger_total
        champion_total = report.champion_total
        return SameSetDecision(
            False,
            f"validation F1 {val_f1:.4f} is below the minimum {min_val_f1:.4f}",
            math.nan if total is None else total.f1,
            None if champion_total is None else champion_total.f1,
            None if report.champion is None else report.champion.get("version"),
        )
    decision = same_set_gate(report, None, tolerance)
    prefix = f"validation F1 {val_f1:.4f} >= minimum {min_val_f1:.4f}; "
    return dataclasses.replace(decision, reason=prefix + decision.reason)


# What people look at -----------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _delta(a: float, b: float | None) -> str:
    return "-" if b is None else f"{a - b:+.4f}"


def markdown_report(report: EvaluationReport) -> str:
    """One row per scene and a total: both models side by side and the difference."""
    champion = {s.scene_id: s for s in report.champion_scores}
    unit = "m²" if all(s.pixel_area_m2 is not None for s in report.challenger_scores) else "px"
    header = [
        "scene",
        "F1 challenger",
        "F1 champion",
        "Δ F1",
        "IoU challenger",
        "IoU champion",
        "Δ IoU",
        "precision (chal. / champ.)",
        "recall (chal. / champ.)",
        f"changed {unit} predicted (chal. / champ.)",
        f"changed {unit} labelled",
    ]
    rows: list[list[str]] = []
    totals = [(report.challenger_total, report.champion_total)]
    pairs = [(s, champion.get(s.scene_id)) for s in report.challenger_scores]
    for c, h in [*pairs, *(totals if pairs else [])]:
        assert c is not None
        name = "**total**" if c.scene_id == "total" else c.scene_id
        rows.append(
            [
                name,
                _fmt(c.f1),
                _fmt(None if h is None else h.f1),
                _delta(c.f1, None if h is None else h.f1),
                _fmt(c.iou),
                _fmt(None if h is None else h.iou),
                _delta(c.iou, None if h is None else h.iou),
                f"{_fmt(c.precision)} / {_fmt(None if h is None else h.precision)}",
                f"{_fmt(c.recall)} / {_fmt(None if h is None else h.recall)}",
                f"{c.area(c.predicted_pixels):,.0f} / "
                + ("-" if h is None else f"{h.area(h.predicted_pixels):,.0f}"),
                f"{c.area(c.labelled_changed_pixels):,.0f}",
            ]
        )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _figure_image(fig: Any) -> Image.Image:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    buffer.seek(0)
    image = Image.open(buffer)
    image.load()
    return image.convert("RGB")


def confusion_image(report: EvaluationReport) -> Image.Image:
    """Confusion matrices of the total, challenger beside champion, counts and row shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals = [(report.challenger["label"], report.challenger_total)]
    if report.champion is not None and report.champion_total is not None:
        totals.append((report.champion["label"], report.champion_total))
    fig, axes = plt.subplots(1, len(totals), figsize=(3.6 * len(totals), 3.4), squeeze=False)
    for ax, (label, total) in zip(axes[0], totals, strict=True):
        matrix = (
            np.zeros((2, 2))
            if total is None
            else np.array([[total.tn, total.fp], [total.fn, total.tp]], np.float64)
        )
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(
                j,
                i,
                f"{int(count):,}\n{100 * shares[i, j]:.1f}%",
                ha="center",
                va="center",
                color="white" if shares[i, j] > 0.5 else "black",
                fontsize=8,
            )
        ax.set_xticks([0, 1], ["no change", "change"])
        ax.set_yticks([0, 1], ["no change", "change"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("label")
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    image = _figure_image(fig)
    plt.close(fig)
    return image


def pr_curve_image(report: EvaluationReport) -> Image.Image:
    """Precision-recall curves over all evaluation pixels, the threshold's point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.8))
    curves = [(report.challenger["label"], report.challenger_total)]
    if report.champion is not None:
        curves.append((report.champion["label"], report.champion_total))
    for label, total in curves:
        if total is None:
            continue
        precision, recall, ap = total.pr_curve()
        line = ax.plot(recall, precision, label=f"{label} (AP {ap:.3f})")[0]
        ax.plot([total.recall], [total.precision], "o", color=line.get_color())
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"evaluation set, threshold {report.threshold:g} marked", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    image = _figure_image(fig)
    plt.close(fig)
    return image


def evaluation_metrics(report: EvaluationReport) -> dict[str, float]:
    """MLflow metrics: ``eval_<metric>`` in total, ``eval_<metric>.<scene>`` per scene.

    The champion's figures on the same scenes are ``eval_champion_...``.
    """
    metrics: dict[str, float] = {}
    for prefix, scores, total in (
        ("eval", report.challenger_scores, report.challenger_total),
        ("eval_champion", report.champion_scores, report.champion_total),
    ):
        if total is None:
            continue
        metrics |= {f"{prefix}_{k}": v for k, v in total.metrics().items()}
        for score in scores:
            metrics |= {f"{prefix}_{k}.{score.scene_id}": v for k, v in score.metrics().items()}
    return metrics


def log_evaluation(
    tracker: Tracker, run_id: str, report: EvaluationReport, decision: SameSetDecision | None = None
) -> None:
    """Metrics, table, images and report on the challenger's run; the scenes as dataset inputs."""
    tracker.log_metrics(run_id, evaluation_metrics(report), step=0)
    evaluation_set = report.evaluation_set
    tracker.set_tags(
        run_id,
        {
            "evaluation.commit": evaluation_set.commit_id,
            "evaluation.scenes": json.dumps(list(evaluation_set.scene_ids)),
            **({} if decision is None else {"evaluation.gate": decision.reason[:5000]}),
        },
    )
    gate = {} if decision is None else {"gate": decision.to_dict()}
    tracker.log_dict(run_id, {**report.to_dict(), **gate}, "evaluation/report.json")
    tracker.log_text(run_id, markdown_report(report), "evaluation/table.md")
    tracker.log_image(run_id, confusion_image(report), "evaluation/confusion_matrix.png")
    tracker.log_image(run_id, pr_curve_image(report), "evaluation/pr_curve.png")
    tracker.log_datasets(
        run_id,
        [
            DatasetRef(
                name=f"eval/cd/{scene_id}",
                digest=evaluation_set.commit_id,
                uri=lakefs_uri(
                    evaluation_set.repository, evaluation_set.commit_id, f"cd/{scene_id}"
                ),
                context="evaluation",
            )
            for scene_id in evaluation_set.scene_ids
        ],
    )


# Loading the two models ---------------------------------------------------------------------


def challenger_candidate(tracker: Tracker, model_uri: str, run_id: str) -> Candidate:
    """The model logged in ``run_id`` (not registered yet), with the scenes its run trained on."""
    from mlops_assets.core.cd.registry import load_logged_cd_model

    loaded = load_logged_cd_model(tracker, model_uri, run_id)
    tags = tracker.client.get_run(run_id).data.tags
    return Candidate(
        CHALLENGER_ROLE,
        f"run {run_id[:8]}",
        loaded.net,
        loaded.size_multiple,
        run_id,
        trained_scenes=parse_trained_scenes(tags),
    )


def champion_candidate(tracker: Tracker, name: str, alias: str) -> Candidate | None:
    """The version under ``alias`` (None when there is none), with the scenes it trained on."""
    from mlops_assets.core.cd.registry import load_cd_model

    version = tracker.version_by_alias(name, alias)
    if version is None:
        return None
    loaded = load_cd_model(tracker, name, alias)
    trained = parse_trained_scenes(dict(version.tags))
    if trained is None:  # registered before versions carried the tag: its run may say
        trained = parse_trained_scenes(tracker.client.get_run(loaded.run_id).data.tags)
    return Candidate(
        CHAMPION_ROLE,
        f"v{loaded.version}",
        loaded.net,
        loaded.size_multiple,
        loaded.run_id,
        version=loaded.version,
        trained_scenes=trained,
    )
