"""Challenger and champion on the same evaluation scenes: scores, gate, report and MLflow."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from mlops_assets.core.cd.config import InferenceConfig, TrainConfig, preset
from mlops_assets.core.cd.evaluation import (
    BINS,
    CHALLENGER_ROLE,
    CHAMPION_ROLE,
    TRAINED_SCENES_TAG,
    Candidate,
    EvaluationReport,
    SceneScore,
    challenger_candidate,
    champion_candidate,
    confusion_image,
    evaluate,
    evaluation_metrics,
    log_evaluation,
    markdown_report,
    pr_curve_image,
    promotion_decision,
    same_set_gate,
    stale_reason,
    trained_scenes_tag,
)
from mlops_assets.core.cd.model import build_unet, model_spec
from mlops_assets.core.cd.registry import log_cd_model
from mlops_assets.core.scenes.evaluation import (
    EvaluationSet,
    read_evaluation_set,
    write_evaluation_set,
)
from mlops_assets.core.scenes.layout import SceneKind
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.core.tracking import CHAMPION, Tracker
from mlops_assets_tests.conftest import commit_folder
from mlops_assets_tests.core.cd import mlflow_uri, read_raster
from mlops_assets_tests.core.cd.test_infer import Constant

CPU = torch.device("cpu")
TINY = preset(InferenceConfig, "tiny")
SCENE = "farmland-north"


def candidate(role: str, probability: float, trained: tuple[str, ...] | None = None) -> Candidate:
    return Candidate(
        role, f"{role}-{probability}", Constant(probability), 8, f"run-{role}", "1", trained
    )


@pytest.fixture
def eval_set(store: EmbeddedStore, demo_cd_dir: Path) -> EvaluationSet:
    commit_folder(store, demo_cd_dir, f"cd/{SCENE}/")
    write_evaluation_set(store, SceneKind.CD, [SCENE])
    return read_evaluation_set(store, SceneKind.CD)


def truth(folder: Path) -> tuple[int, int]:
    """Labelled changed and unchanged pixels where pre and post have data (from the files)."""
    pre, _ = read_raster(folder / "pre.tif")
    post, _ = read_raster(folder / "post.tif")
    label, _ = read_raster(folder / "label.tif")
    valid = (pre[0] != 0) & (post[0] != 0)
    return int(((label[0] == 1) & valid).sum()), int(((label[0] == 0) & valid).sum())


def test_both_models_are_scored_on_the_same_labelled_pixels(
    store: EmbeddedStore, eval_set: EvaluationSet, demo_cd_dir: Path, tmp_path: Path
) -> None:
    """Everything predicted changed: TP = labelled change, FP = the rest; nothing: all FN."""
    changed, unchanged = truth(demo_cd_dir)
    assert changed > 0 and unchanged > 0
    lines: list[str] = []
    report = evaluate(
        store,
        eval_set,
        candidate(CHALLENGER_ROLE, 0.9),
        candidate(CHAMPION_ROLE, 0.1),
        TINY,
        CPU,
        tmp_path,
        progress=lines.append,
    )
    (everything,), (nothing,) = report.challenger_scores, report.champion_scores
    assert (everything.tp, everything.fp, everything.fn, everything.tn) == (
        changed,
        unchanged,
        0,
        0,
    )
    assert (nothing.tp, nothing.fp, nothing.fn, nothing.tn) == (0, 0, changed, unchanged)
    assert everything.recall == 1.0 and everything.precision == pytest.approx(
        changed / (changed + unchanged)
    )
    assert nothing.f1 == 0.0 and nothing.iou == 0.0
    assert everything.pixel_area_m2 == pytest.approx(4.0)  # 2 m pixels
    assert everything.metrics()["changed_area_labelled"] == pytest.approx(4.0 * changed)
    # Every probability is 0.9 (within float32 blending): the curve is that one point.
    assert sum(everything.positive_hist[89:91]) == changed
    assert sum(everything.negative_hist) == unchanged
    assert everything.pr_curve()[2] == pytest.approx(everything.precision, rel=0.05)
    assert [line.split(":")[0] for line in lines] == [f"cd/{SCENE}"] * 2
    assert not list(tmp_path.glob("eval-*"))  # maps removed
    assert EvaluationReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_gate_passes_a_better_challenger_and_names_the_scenes_a_worse_one_loses(
    store: EmbeddedStore, eval_set: EvaluationSet, tmp_path: Path
) -> None:
    good, bad = candidate(CHALLENGER_ROLE, 0.9), candidate(CHAMPION_ROLE, 0.1)
    report = evaluate(store, eval_set, good, bad, TINY, CPU, tmp_path)
    decision = same_set_gate(report, minimum=0.0, tolerance=0.02)
    assert decision.passed and decision.worse_scenes == ()
    assert "champion v1 has 0.0000 on the same scenes" in decision.reason

    flipped = evaluate(
        store,
        eval_set,
        candidate(CHALLENGER_ROLE, 0.1),
        candidate(CHAMPION_ROLE, 0.9),
        TINY,
        CPU,
        tmp_path,
    )
    decision = same_set_gate(flipped, minimum=0.0, tolerance=0.02)
    assert not decision.passed and decision.worse_scenes == (SCENE,)
    assert "worse than champion v1" in decision.reason
    assert f"worse on 1/1 scene(s): {SCENE} 0.0000 <" in decision.reason
    assert not same_set_gate(report, minimum=0.99, tolerance=0.0).passed  # below the minimum


def test_gate_refuses_a_challenger_that_trained_on_an_evaluation_scene(
    store: EmbeddedStore, eval_set: EvaluationSet, tmp_path: Path
) -> None:
    seen = candidate(CHALLENGER_ROLE, 0.9, trained=(SCENE, "suburb-east"))
    report = evaluate(store, eval_set, seen, None, TINY, CPU, tmp_path)
    decision = same_set_gate(report, minimum=0.0, tolerance=0.02)
    assert not decision.passed
    assert decision.reason == f"refused: the challenger trained on evaluation scene(s) {SCENE}"
    unseen = candidate(CHALLENGER_ROLE, 0.9, trained=("suburb-east",))
    report = evaluate(store, eval_set, unseen, None, TINY, CPU, tmp_path)
    assert same_set_gate(report, 0.0, 0.02).reason.endswith("no champion yet")


def test_gate_refuses_without_evaluation_scenes(store: EmbeddedStore, tmp_path: Path) -> None:
    empty = read_evaluation_set(store, SceneKind.CD)
    report = evaluate(store, empty, candidate(CHALLENGER_ROLE, 0.9), None, TINY, CPU, tmp_path)
    decision = same_set_gate(report, 0.0, 0.02)
    assert not decision.passed and math.isnan(decision.candidate)
    assert "eval/scenes.json" in decision.reason


def _score(scene: str, tp: int, fp: int, fn: int) -> SceneScore:
    hist = tuple([0] * BINS)
    return SceneScore(scene, tp, fp, fn, 100, None, hist, hist)


def test_report_table_sets_both_models_side_by_side_with_the_difference() -> None:
    report = EvaluationReport(
        EvaluationSet(SceneKind.CD, ("a", "b"), "c" * 64, "scenes"),
        0.5,
        {"role": CHALLENGER_ROLE, "label": "run 12345678", "trained_scenes": None},
        {"role": CHAMPION_ROLE, "label": "v1", "version": "1", "trained_scenes": ["a"]},
        (_score("a", 8, 2, 0), _score("b", 5, 0, 5)),
        (_score("a", 10, 0, 0), _score("b", 1, 0, 9)),
    )
    table = markdown_report(report).splitlines()
    assert table[0].startswith("| scene | F1 challenger | F1 champion | Δ F1 |")
    assert "changed px predicted" in table[0]  # a pixel grid: areas in pixels
    assert table[2].startswith("| a | 0.8889 | 1.0000 | -0.1111 |")
    assert table[3].startswith("| b | 0.6667 | 0.1818 | +0.4848 |")
    assert table[4].startswith("| **total** | 0.7879 | 0.7097 | +0.0782 | ")
    decision = same_set_gate(report, 0.0, 0.02)
    assert decision.passed and decision.worse_scenes == ("a",)
    assert "the champion trained on a" in decision.reason
    metrics = evaluation_metrics(report)
    assert metrics["eval_f1.a"] == pytest.approx(16 / 18)
    assert metrics["eval_champion_f1.b"] == pytest.approx(2 / 11)
    assert metrics["eval_f1"] == pytest.approx(26 / 33)
    for image in (confusion_image(report), pr_curve_image(report)):
        assert image.width > 200 and image.height > 200
        assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 5  # not blank


def test_candidates_come_from_the_run_and_the_alias_and_results_land_on_the_run(
    store: EmbeddedStore,
    eval_set: EvaluationSet,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    config = preset(TrainConfig, "tiny")
    torch.manual_seed(0)
    trained = SimpleNamespace(model=build_unet(8, config), spec=model_spec(8, config))
    tracker = Tracker(mlflow_uri(tmp_path_factory, tmp_path / "mlflow"), "cd", tmp_path / "art")
    runs: list[tuple[str, str]] = []
    for scenes in (["suburb-east"], ["forest-ridge"]):
        tags = {TRAINED_SCENES_TAG: trained_scenes_tag(scenes)}
        with tracker.run("cd", tags) as run_id:
            runs.append((run_id, log_cd_model(tracker, run_id, trained, 0.5)))  # type: ignore[arg-type]
    version = tracker.register("cd-unet", runs[0][1], runs[0][0], {}, "champion")
    tracker.set_alias("cd-unet", CHAMPION, str(version.version))

    assert champion_candidate(tracker, "cd-unet", "nobody") is None
    champion = champion_candidate(tracker, "cd-unet", CHAMPION)
    challenger = challenger_candidate(tracker, runs[1][1], runs[1][0])
    assert champion is not None and champion.label == "v1"
    assert champion.trained_scenes == ("suburb-east",)  # from its run: the version has no tag
    assert challenger.trained_scenes == ("forest-ridge",) and challenger.version is None
    assert isinstance(challenger.net, nn.Module) and challenger.size_multiple == 8

    work = tmp_path / "work"
    work.mkdir()
    report = evaluate(store, eval_set, challenger, champion, TINY, CPU, work)
    # The same weights: the same map, the same score, no scene worse.
    assert report.challenger_scores[0] == report.champion_scores[0]
    decision = same_set_gate(report, 0.0, 0.0)
    assert decision.passed and decision.worse_scenes == ()

    run_id = challenger.run_id
    log_evaluation(tracker, run_id, report, decision)
    run = tracker.client.get_run(run_id)
    assert run.data.metrics["eval_f1"] == pytest.approx(report.challenger_scores[0].f1)
    assert f"eval_champion_iou.{SCENE}" in run.data.metrics
    assert run.data.tags["evaluation.commit"] == eval_set.commit_id
    assert json.loads(run.data.tags["evaluation.scenes"]) == [SCENE]
    artifacts = {a.path for a in tracker.client.list_artifacts(run_id, "evaluation")}
    assert artifacts == {
        f"evaluation/{n}"
        for n in ("report.json", "table.md", "confusion_matrix.png", "pr_curve.png")
    }
    assert run.inputs is not None
    inputs = run.inputs.dataset_inputs
    assert [(d.dataset.name, d.tags[0].value) for d in inputs] == [
        (f"eval/cd/{SCENE}", "evaluation")
    ]
    assert json.loads(inputs[0].dataset.source)["uri"] == (
        f"lakefs://scenes/{eval_set.commit_id}/cd/{SCENE}"
    )


def test_promotion_keeps_the_validation_bar_and_compares_on_the_evaluation_set() -> None:
    report = EvaluationReport(
        EvaluationSet(SceneKind.CD, ("a",), "c" * 64, "scenes"),
        0.5,
        {"role": CHALLENGER_ROLE, "label": "run 1", "trained_scenes": ["b"]},
        {"role": CHAMPION_ROLE, "label": "v3", "version": "3", "trained_scenes": None},
        (_score("a", 8, 2, 0),),
        (_score("a", 9, 0, 0),),
    )
    low = promotion_decision(report, val_f1=0.5, min_val_f1=0.8, tolerance=0.02)
    assert not low.passed and low.reason == "validation F1 0.5000 is below the minimum 0.8000"
    strict = promotion_decision(report, val_f1=0.9, min_val_f1=0.8, tolerance=0.02)
    assert not strict.passed and strict.worse_scenes == ("a",)
    assert strict.reason.startswith(
        "validation F1 0.9000 >= minimum 0.8000; evaluation F1 0.8889 on 1 evaluation scene(s) "
        "at cccccccccccc is worse than champion v3 (1.0000)"
    )
    lenient = promotion_decision(report, val_f1=0.9, min_val_f1=0.8, tolerance=0.2)
    assert lenient.passed and "worse on 1/1 scene(s): a 0.8889 < 1.0000" in lenient.reason
    gate = lenient.as_gate()
    assert (gate.passed, gate.champion_version, gate.champion) == (True, "3", 1.0)


def test_a_report_gates_only_its_own_run_against_the_champion_still_in_place() -> None:
    report = EvaluationReport(
        EvaluationSet(SceneKind.CD, ("a",), "c" * 64, "scenes"),
        0.5,
        {"role": CHALLENGER_ROLE, "run_id": "run-new", "trained_scenes": None},
        {"role": CHAMPION_ROLE, "version": "1", "run_id": "run-v1", "trained_scenes": None},
        (_score("a", 8, 2, 0),),
        (_score("a", 10, 0, 0),),
    )
    assert stale_reason(report, "run-new", ("1", "run-v1")) is None
    # An earlier attempt of this registration already promoted this run: not a change.
    assert stale_reason(report, "run-new", ("2", "run-new")) is None
    moved = stale_reason(report, "run-new", ("2", "run-other"))
    assert moved == "the champion moved since it ran (compared with v1, champion now v2)"
    other = stale_reason(report, "run-older", ("1", "run-v1"))
    assert other == "it evaluated run run-new, not this model's run run-older"
    first = dataclasses.replace(report, champion=None, champion_scores=())
    assert stale_reason(first, "run-new", None) is None
    assert stale_reason(first, "run-new", ("1", "run-v1")) == (
        "the champion moved since it ran (compared with no champion, champion now v1)"
    )
