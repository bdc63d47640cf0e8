"""``cd/sweep`` through Dagster: tiles of two scenes, a 2-trial study, what the asset page shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import optuna
import pytest
from mlflow import MlflowClient

from mlops_assets.assets.cd.config import Preset
from mlops_assets.assets.cd.evaluation import cd_evaluation
from mlops_assets.assets.cd.model import cd_model, cd_registered_model
from mlops_assets.assets.cd.scene import cd_scene
from mlops_assets.assets.cd.sweep import SweepRunConfig, cd_sweep
from mlops_assets.assets.cd.tiles import cd_tiles
from mlops_assets.core.cd.records import SweepRecord
from mlops_assets.core.cd.sweep import SweepError, open_storage
from mlops_assets.core.cd.sweep_tracking import latest_sweep
from mlops_assets.core.scenes.evaluation import write_evaluation_set
from mlops_assets.core.scenes.layout import SceneKind
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.resources.sweeps import OptunaStorageResource
from mlops_assets_tests.assets.cd.test_chain import failure_message
from mlops_assets_tests.conftest import commit_folder

pytestmark = pytest.mark.slow

ALL = [cd_scene, cd_tiles, cd_sweep, cd_model, cd_evaluation, cd_registered_model]
SPACE = {"learning_rate": {"low": 1e-3, "high": 3e-2, "log": True}, "augment": {"choices": [1, 0]}}


def _sweep(
    instance: dg.DagsterInstance, resources: dict[str, Any], **config: Any
) -> dg.ExecuteInJobResult:
    return dg.materialize(
        ALL,
        selection=[cd_sweep],
        instance=instance,
        resources=resources,
        run_config={"ops": {"cd__sweep": {"config": {"preset": "tiny", **config}}}},
        raise_on_error=False,
    )


@pytest.fixture
def tiled(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    demo_cd_dir: Path,
    demo_cd_warped_dir: Path,
    tmp_path: Path,
) -> dict[str, Any]:
    storage = OptunaStorageResource(storage=str(tmp_path / "optuna" / "journal.log"))
    resources = resources | {"optuna_storage": storage}
    commit_folder(store, demo_cd_dir, "cd/farm/")
    commit_folder(store, demo_cd_warped_dir, "cd/river/")
    for scene in ("farm", "river"):
        instance.add_dynamic_partitions("cd_scenes", [scene])
        result = dg.materialize(
            ALL,
            selection=[cd_scene, cd_tiles],
            partition_key=scene,
            instance=instance,
            resources=resources,
            run_config={"ops": {"cd__tiles": {"config": {"preset": "tiny"}}}},
        )
        assert result.success
    return resources


def test_a_sweep_shows_its_best_trials_and_hands_on_its_run(
    instance: dg.DagsterInstance, tiled: dict[str, Any]
) -> None:
    result = _sweep(instance, tiled, n_trials=2, epochs=1, search_space=SPACE)
    assert result.success, failure_message(result)
    meta = result.asset_materializations_for_node("cd__sweep")[0].metadata
    assert meta["study_name"].value == "cd-unet-tiny"
    assert meta["trials_complete"].value == 2 and meta["trials_in_study"].value == 2
    assert set(meta["best_params"].value) == {"learning_rate", "augment"}  # type: ignore[arg-type]
    table = str(meta["top_trials"].value).splitlines()
    assert table[0] == "| trial | F1 | epochs | s | params |" and len(table) == 4
    assert "![optimisation history](data:image/png;base64," in str(meta["history"].value)
    assert set(meta["lakefs_commits"].value) == {"farm", "river"}  # type: ignore[arg-type]

    record = result.output_for_node("cd__sweep")
    assert isinstance(record, SweepRecord)
    assert record.run_id == meta["mlflow_run_id"].value and record.git_sha == "0123abc"
    tracker = tiled["mlflow"].tracker("change-detection")
    choice = latest_sweep(tracker, "cd-unet-tiny", preset="tiny")
    assert choice.run_id == record.run_id and choice.overrides == record.best_overrides

    again = _sweep(instance, tiled, n_trials=1, epochs=1, search_space=SPACE)
    assert again.success, failure_message(again)
    meta = again.asset_materializations_for_node("cd__sweep")[0].metadata
    assert meta["trials_in_study"].value == 3
    parent = tracker.client.get_run(str(meta["mlflow_run_id"].value))
    assert parent.data.tags["dagster.run_id"] == again.run_id  # the tracked-run helper's tags
    assert parent.data.tags["optuna.study_name"] == "cd-unet-tiny"
    assert parent.data.tags["preset"] == "tiny"
    storage = open_storage(tiled["optuna_storage"].storage)
    trials = optuna.load_study(study_name="cd-unet-tiny", storage=storage).trials
    # The resuming run draws afresh: a sampler seeded per run repeated trial 1 as trial 2.
    assert trials[2].params != trials[1].params


def test_the_evaluation_scenes_are_never_swept_on(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    tiled: dict[str, Any],
    demo_cd_dir: Path,
) -> None:
    commit_folder(store, demo_cd_dir, "cd/held/")
    instance.add_dynamic_partitions("cd_scenes", ["held"])
    tiles = dg.materialize(
        ALL,
        selection=[cd_scene, cd_tiles],
        partition_key="held",
        instance=instance,
        resources=tiled,
        run_config={"ops": {"cd__tiles": {"config": {"preset": "tiny"}}}},
    )
    assert tiles.success
    write_evaluation_set(store, SceneKind.CD, ["held"])
    result = _sweep(instance, tiled, n_trials=1, epochs=1, search_space=SPACE)
    assert result.success, failure_message(result)
    meta = result.asset_materializations_for_node("cd__sweep")[0].metadata
    assert set(meta["lakefs_commits"].value) == {"farm", "river"}  # type: ignore[arg-type]


def _train(
    instance: dg.DagsterInstance, resources: dict[str, Any], **config: Any
) -> dg.ExecuteInJobResult:
    ops = {"cd__model": {"config": {"preset": "tiny", "epochs": 1, **config}}}
    ops["cd__registered_model"] = {"config": {"preset": "tiny"}}
    return dg.materialize(
        ALL,
        selection=[cd_model, cd_evaluation, cd_registered_model],
        instance=instance,
        resources=resources,
        run_config={"ops": ops},
        raise_on_error=False,
    )


def test_the_model_trained_from_the_best_params_names_the_sweep(
    instance: dg.DagsterInstance, tiled: dict[str, Any]
) -> None:
    missing = _train(instance, tiled, params_from="sweep")
    assert not missing.success
    assert "no finished sweep of preset 'tiny' in MLflow experiment 'change-detection'" in (
        failure_message(missing)
    )
    space = {"learning_rate": {"low": 1e-3, "high": 3e-2, "log": True}}
    swept = _sweep(instance, tiled, n_trials=2, epochs=1, search_space=space)
    assert swept.success, failure_message(swept)
    record = swept.output_for_node("cd__sweep")

    trained = _train(instance, tiled, params_from="sweep")
    assert trained.success, failure_message(trained)
    model = trained.output_for_node("cd__model")
    assert (model.sweep_run_id, model.sweep_study) == (record.run_id, "cd-unet-tiny")
    client = tiled["mlflow"].tracker("change-detection").client
    run = client.get_run(model.run_id)
    assert run.data.tags["sweep.run_id"] == record.run_id
    assert float(run.data.params["learning_rate"]) == record.best_params["learning_rate"]
    (version,) = client.search_model_versions("name = 'change-detection-unet'")
    assert version.tags["sweep.run_id"] == record.run_id
    assert version.tags["sweep.study"] == "cd-unet-tiny"

    # A default-preset model never takes a tiny sweep's params (its decoder, batch ...).
    other = _train(instance, tiled, params_from="sweep", preset="default")
    assert not other.success
    assert failure_message(other).startswith(
        "no finished sweep of preset 'default' in MLflow experiment 'change-detection' (the "
        "newest, of study 'cd-unet-tiny', tuned preset 'tiny': its best params are not for this "
        "preset): materialise cd/sweep with preset default first"
    )

    plain = _train(instance, tiled, learning_rate=0.004)
    assert plain.success, failure_message(plain)
    assert plain.output_for_node("cd__model").sweep_run_id == ""


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"search_space": {"learning_rate": {"low": 0.1, "high": 0.01}}},
            "search_space.learning_rate: low 0.1 > high 0.01",
        ),
        ({"search_space": {}}, "search_space is empty: give at least one of learning_rate"),
        ({"search_space": {"lr": {"low": 0.1, "high": 1}}}, "unknown parameter 'lr'"),
        ({"n_trials": 0}, "n_trials 0 must be >= 1"),
        ({"epochs": 0}, "epochs 0 must be >= 1"),
        ({"num_threads": -1}, "num_threads (-1) must be >= 0"),
        ({"pruner_startup_trials": -1}, "pruner_startup_trials and pruner_warmup_epochs must be"),
        (
            {"exclude_scenes": ["held"]},
            "exclude_scenes was removed: list the scenes no model may train on in "
            "eval/scenes.json (the evaluation set)",
        ),
    ],
)
def test_bad_settings_fail_with_one_line_and_log_no_run(
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    tmp_path: Path,
    config: dict[str, Any],
    message: str,
) -> None:
    storage = OptunaStorageResource(storage=str(tmp_path / "journal.log"))
    result = _sweep(instance, resources | {"optuna_storage": storage}, **config)
    assert not result.success
    text = failure_message(result)
    assert message in text and "Traceback" not in text
    assert not (tmp_path / "journal.log").exists()  # no study was created


def test_an_unreachable_study_database_fails_with_one_line_and_logs_no_run(
    instance: dg.DagsterInstance, tiled: dict[str, Any]
) -> None:
    """Production's ``MLOPS_OPTUNA_STORAGE`` pointing at a PostgreSQL that does not answer."""
    url = "postgresql+psycopg2://optuna:s3cret-pw@127.0.0.1:9/optuna"
    result = _sweep(instance, tiled | {"optuna_storage": OptunaStorageResource(storage=url)})
    assert not result.success
    text = failure_message(result)
    assert "(MLOPS_OPTUNA_STORAGE) is unreachable" in text and "optuna:***@127.0.0.1:9" in text
    assert "s3cret-pw" not in text and "Traceback" not in text and "\n" not in text.strip()
    attempts = [e for e in result.all_events if e.event_type_value == "STEP_RESTARTED"]
    assert attempts == []  # a setting to fix, not an outage to wait out
    uri = tiled["mlflow"].tracking_uri
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(experiments) == []  # no parent run, no trial run


def test_every_knob_of_the_run_config_reaches_the_core() -> None:
    base, sweep = SweepRunConfig(
        preset=Preset.tiny,
        pruner_startup_trials=5,
        pruner_warmup_epochs=2,
        epochs=3,
        seed=7,
    ).to_core()
    assert (sweep.pruner_startup_trials, sweep.pruner_warmup_epochs, sweep.seed) == (5, 2, 7)
    assert base.epochs == 3 and sweep.study_name == "cd-unet-tiny"
    with pytest.raises(SweepError, match=r"^exclude_scenes was removed: "):
        SweepRunConfig(exclude_scenes=[]).to_core()
