"""``cd/evaluation`` between ``cd/model`` and ``cd/registered_model``, with a held-out scene."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from mlops_assets.assets.cd.evaluation import cd_evaluation
from mlops_assets.assets.cd.model import cd_model, cd_registered_model
from mlops_assets.assets.cd.scene import cd_scene
from mlops_assets.assets.cd.tiles import cd_tiles
from mlops_assets.core.demo.cd import DEMO_CD_EVAL_SCENES, write_cd_scene
from mlops_assets.core.scenes.evaluation import write_evaluation_set
from mlops_assets.core.scenes.layout import SceneKind
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets_tests.assets.cd.test_chain import failure_message, materialize
from mlops_assets_tests.conftest import DEPLOYMENT_VARIABLES, commit_folder, embedded_resources

pytestmark = pytest.mark.slow  # trains a tiny model twice (about a minute on 2 busy cores)

NAME = "change-detection-unet"
TRAIN = [cd_model, cd_evaluation, cd_registered_model]


def node(result: dg.ExecuteInJobResult, name: str) -> dict[str, Any]:
    (mat,) = result.asset_materializations_for_node(name)
    return {k: v.value for k, v in mat.metadata.items()}


@pytest.fixture(scope="module")
def held_out(
    tmp_path_factory: pytest.TempPathFactory, demo_cd_dir: Path, demo_cd_warped_dir: Path
) -> Iterator[dict[str, Any]]:
    """farm and river to train on, ``valley`` listed in eval/scenes.json; trained twice."""
    root = tmp_path_factory.mktemp("cd-eval")
    valley = write_cd_scene(DEMO_CD_EVAL_SCENES[0], root / "valley", size=128)
    with pytest.MonkeyPatch.context() as env, dg.instance_for_test() as instance:
        for name in DEPLOYMENT_VARIABLES:
            env.delenv(name, raising=False)
        store = EmbeddedStore(root / "store", "scenes")
        store.ensure_repository()
        resources = embedded_resources(store, root)
        for folder, scene in (
            (demo_cd_dir, "farm"),
            (demo_cd_warped_dir, "river"),
            (valley, "valley"),
        ):
            commit_folder(store, folder, f"cd/{scene}/")
        eval_commit = write_evaluation_set(store, SceneKind.CD, ["valley"])
        for scene in ("farm", "river", "valley"):
            assert materialize([cd_scene, cd_tiles], instance, resources, scene).success
        first = materialize(TRAIN, instance, resources)
        # The second model may trail the first by up to 1.0: the gate passes and v2 registers.
        second = materialize(TRAIN, instance, resources, cd__registered_model={"tolerance": 1.0})
        yield {
            "first": first,
            "second": second,
            "eval_commit": eval_commit,
            "store": store,
            "instance": instance,
            "resources": resources,
        }


def test_the_evaluation_scene_is_never_trained_on_and_the_version_says_what_was(
    held_out: dict[str, Any],
) -> None:
    first = held_out["first"]
    assert first.success
    model = node(first, "cd__model")
    assert sorted(model["train_scenes"] + model["val_scenes"]) == ["farm", "river"]
    assert set(model["lakefs_commits"]) == {"farm", "river"}
    client = MlflowClient(held_out["resources"]["mlflow"].tracking_uri)
    run = client.get_run(str(model["mlflow_run_id"]))
    assert json.loads(run.data.tags["cd.trained_scenes"]) == ["farm", "river"]
    assert run.data.tags["evaluation.commit"] == held_out["eval_commit"]
    version = client.get_model_version(NAME, "1")
    assert json.loads(version.tags["cd.trained_scenes"]) == ["farm", "river"]


def test_evaluation_scores_the_held_out_scene_and_logs_it_on_the_challengers_run(
    held_out: dict[str, Any],
) -> None:
    first = held_out["first"]
    evaluation = node(first, "cd__evaluation")
    assert evaluation["evaluation_scenes"] == ["valley"]
    assert evaluation["evaluation_commit"] == held_out["eval_commit"]
    assert evaluation["champion_version"] is None and evaluation["champion_eval_f1"] is None
    table = str(evaluation["evaluation"]).splitlines()
    assert table[0].startswith("| scene | F1 challenger | F1 champion | Δ F1 |")
    assert table[2].startswith(f"| valley | {evaluation['eval_f1']:.4f} | - | - |")
    assert "confusion_matrix" in evaluation and "pr_curve" in evaluation
    run_id = str(node(first, "cd__model")["mlflow_run_id"])
    client = MlflowClient(held_out["resources"]["mlflow"].tracking_uri)
    run = client.get_run(run_id)
    assert run.data.metrics["eval_f1.valley"] == pytest.approx(evaluation["eval_f1"], abs=1e-4)
    assert run.inputs is not None
    contexts = {(d.dataset.name, d.tags[0].value) for d in run.inputs.dataset_inputs}
    assert ("eval/cd/valley", "evaluation") in contexts
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in artifacts and "evaluation/table.md" in artifacts
    registered = node(first, "cd__registered_model")
    assert registered["gate_on"] == "evaluation set" and registered["version"] == "1"
    assert "no champion yet" in str(registered["gate"])


def test_the_next_model_is_compared_with_the_champion_on_the_same_scene(
    held_out: dict[str, Any],
) -> None:
    second = held_out["second"]
    assert second.success
    evaluation = node(second, "cd__evaluation")
    assert evaluation["champion_version"] == "1"
    first_f1 = node(held_out["first"], "cd__evaluation")["eval_f1"]
    # The champion is v1, scored again on the same pixels by the same code: the same F1.
    assert evaluation["champion_eval_f1"] == pytest.approx(first_f1, abs=1e-4)
    registered = node(second, "cd__registered_model")
    assert "champion v1 has " in str(registered["gate"]) and "on the same scenes" in str(
        registered["gate"]
    )
    assert registered["version"] == "2"
    worse = registered["worse_scenes"]
    assert worse == (["valley"] if evaluation["eval_f1"] < first_f1 else [])


def test_a_report_of_another_model_never_gates_a_new_one(held_out: dict[str, Any]) -> None:
    # A new model trained, but cd/evaluation not run again: its report is of the last model.
    assert materialize([cd_model], held_out["instance"], held_out["resources"]).success
    result = materialize([cd_registered_model], held_out["instance"], held_out["resources"])
    assert not result.success
    message = failure_message(result)
    assert "cd/evaluation is stale: it evaluated run " in message
    assert "materialise cd/evaluation again" in message
    client = MlflowClient(held_out["resources"]["mlflow"].tracking_uri)
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2  # nothing new


def test_a_model_that_trained_on_an_evaluation_scene_is_refused(
    held_out: dict[str, Any],
) -> None:
    # farm joins the evaluation set after the model trained on it: the gate must refuse.
    write_evaluation_set(held_out["store"], SceneKind.CD, ["farm", "valley"])
    result = materialize(
        [cd_evaluation, cd_registered_model], held_out["instance"], held_out["resources"]
    )
    assert not result.success
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed
    assert "refused: the challenger trained on evaluation scene(s) farm" in str(check.description)
    client = MlflowClient(held_out["resources"]["mlflow"].tracking_uri)
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2  # nothing new
