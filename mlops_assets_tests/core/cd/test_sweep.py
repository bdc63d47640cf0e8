"""Sweeps: an Optuna study over train_change_model, its storage, its MLflow lineage.

Every study here runs the real training loop on two 128 px demo scenes (9 tiles of 64 px each)
for 1-3 epochs on the tiny preset; MLflow is a fresh SQLite store per test.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import pickle
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import psycopg2
import pytest
from optuna.trial import TrialState

from mlops_assets.core.cd import sweep as sweep_module
from mlops_assets.core.cd.config import TilingConfig, TrainConfig, preset
from mlops_assets.core.cd.dataset import TileRef, tile_refs
from mlops_assets.core.cd.registry import log_cd_model
from mlops_assets.core.cd.sweep import (
    ATTR_COMMITS,
    ATTR_HEARTBEAT,
    ATTR_REASON,
    ParamRange,
    SweepConfig,
    SweepError,
    TrackingTarget,
    TrialOutcome,
    TrialSeededSampler,
    decoder_channels,
    default_params,
    default_space,
    end_trial_runs,
    open_storage,
    parse_space,
)
from mlops_assets.core.cd.sweep_tracking import (
    MODEL_SWEEP_RUN_TAG,
    MODEL_SWEEP_STUDY_TAG,
    SweepResult,
    execute_sweep,
    latest_sweep,
    prepare_sweep,
    run_sweep,
)
from mlops_assets.core.cd.train import train_change_model
from mlops_assets.core.demo.cd import DEMO_CD_SCENES, write_cd_scene
from mlops_assets.core.tracking import Tracker
from mlops_assets_tests.conftest import free_port
from mlops_assets_tests.core.cd import COMMIT, mlflow_uri, tile_folder

TILING = preset(TilingConfig, "tiny")
BASE = preset(TrainConfig, "tiny", epochs=1, device="cpu", num_threads=1)
#: A small space: two trials on a tiny set differ in what they learn.
SPACE = {
    "learning_rate": ParamRange(1e-3, 3e-2, log=True),
    "augment": ParamRange(choices=(True, False)),
}


@pytest.fixture(scope="module")
def refs(demo_cd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[TileRef]:
    """Tiles of two labelled 128 px demo scenes, both at the commit COMMIT."""
    root = tmp_path_factory.mktemp("sweep")
    suburb = write_cd_scene(DEMO_CD_SCENES[1], root / "suburb-east", size=128)
    sets = [
        (root / "t-farm", tile_folder(demo_cd_dir, root / "t-farm", TILING, "farmland-north")),
        (root / "t-suburb", tile_folder(suburb, root / "t-suburb", TILING, "suburb-east")),
    ]
    return tile_refs(sets)


@pytest.fixture
def tracker(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    uri = mlflow_uri(tmp_path_factory, tmp_path / "mlflow")
    return Tracker(uri, "change-detection", tmp_path / "mlartifacts")


def _sweep(name: str = "s1", **changes: object) -> SweepConfig:
    values: dict[str, object] = {"study_name": name, "n_trials": 3, "space": SPACE}
    values |= changes
    return SweepConfig(**values)  # type: ignore[arg-type]


def _run(
    refs: list[TileRef],
    tracker: Tracker,
    storage: str,
    sweep: SweepConfig,
    base: TrainConfig = BASE,
) -> SweepResult:
    return run_sweep(
        refs,
        base,
        sweep,
        storage,
        tracker,
        tags={"dagster.run_id": "r-1"},
        git_sha="abc123",
        preset="tiny",
    )


@pytest.mark.slow
def test_a_three_trial_study_logs_a_parent_and_a_child_per_trial(
    refs: list[TileRef], tracker: Tracker, tmp_path: Path
) -> None:
    storage = str(tmp_path / "optuna" / "journal.log")
    result = _run(refs, tracker, storage, _sweep())

    assert [o.number for o in result.evaluated] == [0, 1, 2]
    assert [o.state for o in result.evaluated] == ["COMPLETE"] * 3
    assert result.evaluated[0].params == {"learning_rate": BASE.learning_rate, "augment": True}
    assert result.best_value == max(o.value or 0.0 for o in result.evaluated)
    assert set(result.plots) == {"history", "importances", "parallel_coordinates"}
    study = optuna.load_study(study_name="s1", storage=open_storage(storage))
    assert study.user_attrs[ATTR_COMMITS] == {"farmland-north": COMMIT, "suburb-east": COMMIT}
    assert study.user_attrs["git_shas"] == ["abc123"]

    client = tracker.client
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dagster.run_id"] == "r-1"
    assert parent.data.params["space.learning_rate"] == "[0.001, 0.03] log"
    assert parent.data.metrics["best_value"] == pytest.approx(result.best_value)
    assert float(parent.data.params["best.learning_rate"]) == result.best_params["learning_rate"]
    assert json.loads(parent.data.tags["mlops.sweep.best_overrides"]) == result.best_overrides
    assert parent.inputs is not None
    assert sorted(d.dataset.name for d in parent.inputs.dataset_inputs) == [
        "cd/tiles/farmland-north",
        "cd/tiles/suburb-east",
    ]
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert artifacts == {
        "plots/history.png",
        "plots/importances.png",
        "plots/parallel_coordinates.png",
    }
    children = client.search_runs(
        [tracker.experiment_id()], f"tags.`mlflow.parentRunId` = '{result.run_id}'"
    )
    assert sorted(c.data.tags["optuna.trial_number"] for c in children) == ["0", "1", "2"]
    for child in children:
        assert child.data.tags["optuna.state"] == "COMPLETE"
        assert {"f1", "val_loss", "duration_s", "value"} <= set(child.data.metrics)
        history = client.get_metric_history(child.info.run_id, "f1")
        assert [m.step for m in history] == [1]
        assert child.data.params["augment"] in ("True", "False")


@pytest.mark.slow
def test_resuming_adds_trials_and_a_data_change_is_refused(
    refs: list[TileRef], tracker: Tracker, tmp_path: Path
) -> None:
    storage = str(tmp_path / "journal.log")
    _run(refs, tracker, storage, _sweep(n_trials=1))
    again = _run(refs, tracker, storage, _sweep(n_trials=2))

    assert [o.number for o in again.evaluated] == [1, 2]
    assert not again.new_study and [t.number for t in again.trials] == [0, 1, 2]
    assert latest_sweep(tracker, "s1", preset="tiny").run_id == again.run_id

    moved = [
        dataclasses.replace(r, index=dataclasses.replace(r.index, commit_id="f" * 64)) for r in refs
    ]
    with pytest.raises(SweepError, match=r"^study 's1' was run on tiles at lakeFS commits "):
        _run(moved, tracker, storage, _sweep(n_trials=1))
    other_space = {"learning_rate": ParamRange(1e-4, 1e-2, log=True)}
    with pytest.raises(SweepError, match=r"^study 's1' has another search space"):
        _run(refs, tracker, storage, _sweep(n_trials=1, space=other_space))
    retiled = [
        dataclasses.replace(r, index=dataclasses.replace(r.index, config_hash="0" * 12))
        for r in refs
    ]
    with pytest.raises(SweepError, match=r"other training settings \(tile_config_hashes differ"):
        _run(retiled, tracker, storage, _sweep(n_trials=1))
    with pytest.raises(SweepError, match=r"other training settings \(epochs differ"):
        _run(refs, tracker, storage, _sweep(n_trials=1), dataclasses.replace(BASE, epochs=2))
    study = optuna.load_study(study_name="s1", storage=open_storage(storage))
    assert len(study.trials) == 3  # the refused runs added nothing


@pytest.mark.slow
def test_a_diverging_trial_fails_and_the_study_goes_on(
    refs: list[TileRef], tracker: Tracker, tmp_path: Path
) -> None:
    storage = str(tmp_path / "journal.log")
    _run(refs, tracker, storage, _sweep("nan", n_trials=1))
    study = optuna.load_study(study_name="nan", storage=open_storage(storage))
    with pytest.warns(UserWarning, match="is out of range"):
        study.enqueue_trial({"learning_rate": 1e30, "augment": True})
        result = _run(refs, tracker, storage, _sweep("nan", n_trials=2))
    assert [o.number for o in result.evaluated] == [1, 2]
    assert [o.state for o in result.evaluated] == ["FAIL", "COMPLETE"]
    failed = result.evaluated[0]
    assert failed.reason == "loss became nan at epoch 1: training diverged"
    run = tracker.client.get_run(failed.run_id)
    assert run.info.status == "FAILED" and run.data.tags["optuna.state"] == "FAIL"
    assert run.data.tags["fail_reason"] == failed.reason
    assert result.counts() == {"complete": 1, "pruned": 0, "fail": 1}


@pytest.mark.slow
def test_the_pruner_stops_a_hopeless_learning_rate_before_its_last_epoch(
    refs: list[TileRef], tracker: Tracker, tmp_path: Path
) -> None:
    storage = str(tmp_path / "journal.log")
    base = dataclasses.replace(BASE, epochs=3)
    space = {"learning_rate": ParamRange(1e-9, 3e-2, log=True)}
    first = _run(
        refs, tracker, storage, _sweep("p", n_trials=1, space=space, pruner_startup_trials=1), base
    )
    assert first.evaluated[0].epochs == 3
    study = optuna.load_study(study_name="p", storage=open_storage(storage))
    study.enqueue_trial({"learning_rate": 1e-9})
    result = _run(
        refs, tracker, storage, _sweep("p", n_trials=1, space=space, pruner_startup_trials=1), base
    )
    hopeless = result.evaluated[0]
    assert hopeless.params == {"learning_rate": 1e-9} and hopeless.state == "PRUNED"
    assert 1 <= hopeless.epochs < 3
    steps = tracker.client.get_metric_history(hopeless.run_id, "f1")
    assert [m.step for m in steps] == list(range(1, hopeless.epochs + 1))
    trial = optuna.load_study(study_name="p", storage=open_storage(storage)).trials[1]
    assert trial.state == TrialState.PRUNED and max(trial.intermediate_values) < 3


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on a loopback port with an empty ``optuna`` database."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed")
    # PostgreSQL refuses to run as root: run it as nobody then, in a folder nobody can reach
    # (pytest's tmp folders are private to root).
    root = Path(tempfile.mkdtemp(prefix="mlops-pg-"))
    prefix = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    if prefix:
        os.chown(root, pwd.getpwnam("nobody").pw_uid, -1)
    data, port = root / "data", free_port()
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    start = [*prefix, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-o", options, "-w"]
    subprocess.run([*start, "start"], check=True, capture_output=True, timeout=120)
    try:
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres")
        connection.autocommit = True  # CREATE DATABASE runs outside a transaction
        connection.cursor().execute("CREATE DATABASE optuna")
        connection.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        stop = [*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]
        subprocess.run(stop, capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind", ["journal", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def test_two_worker_processes_share_one_study(
    refs: list[TileRef], tracker: Tracker, tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    storage = (
        str(tmp_path / "journal.log")
        if kind == "journal"
        else request.getfixturevalue("postgres_url")
    )
    result = _run(refs, tracker, storage, _sweep(f"w2-{kind}", n_trials=4, n_workers=2))
    numbers = [o.number for o in result.evaluated]
    assert len(numbers) == len(set(numbers)) >= 4
    assert {o.worker for o in result.evaluated} == {0, 1}
    study = optuna.load_study(study_name=f"w2-{kind}", storage=open_storage(storage))
    assert sorted(t.number for t in study.trials) == sorted(numbers)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * len(numbers)
    runs = {o.run_id for o in result.evaluated}
    assert len(runs) == len(numbers)  # one child run per trial, none shared


@pytest.mark.slow
def test_a_model_trained_from_the_best_params_carries_the_sweep_run(
    tracker: Tracker, refs: list[TileRef], tmp_path: Path
) -> None:
    with pytest.raises(
        SweepError,
        match=r"^no finished sweep of preset 'tiny' in MLflow experiment 'change-detection': "
        r"materialise cd/sweep with preset tiny first",
    ):
        latest_sweep(tracker, preset="tiny")
    result = _run(refs, tracker, str(tmp_path / "journal.log"), _sweep("best", n_trials=2))
    with pytest.raises(SweepError, match=r"^no finished sweep of preset 'tiny' of study 'other' "):
        latest_sweep(tracker, "other", preset="tiny")
    # A tiny sweep's best params (a tiny decoder ...) never tune a default-preset model.
    with pytest.raises(SweepError) as other_preset:
        latest_sweep(tracker, preset="default")
    assert str(other_preset.value) == (
        "no finished sweep of preset 'default' in MLflow experiment 'change-detection' (the "
        "newest, of study 'best', tuned preset 'tiny': its best params are not for this preset): "
        "materialise cd/sweep with preset default first (or train without params_from: sweep)"
    )

    choice = latest_sweep(tracker, preset="tiny")
    assert (choice.run_id, choice.study_name) == (result.run_id, "best")
    assert choice.value == pytest.approx(result.best_value)
    config = choice.apply(BASE)
    assert config.learning_rate == result.best_params["learning_rate"]
    assert config.augment == result.best_params["augment"]
    assert config.epochs == BASE.epochs  # the sweep tunes settings, not the schedule

    trained = train_change_model(refs, config)
    with tracker.run("cd-unet", choice.tags()) as run_id:
        model_uri = log_cd_model(tracker, run_id, trained, config.threshold)
    version = tracker.register("cd-tuned", model_uri, run_id, choice.tags(), "from the sweep")
    tags = tracker.client.get_model_version("cd-tuned", version.version).tags
    assert tags[MODEL_SWEEP_RUN_TAG] == result.run_id
    assert tags[MODEL_SWEEP_STUDY_TAG] == "best"
    assert tracker.client.get_run(run_id).data.tags[MODEL_SWEEP_RUN_TAG] == result.run_id


# The search space and settings ------------------------------------------------------------------


def test_the_default_space_holds_every_preset_default() -> None:
    for name in ("tiny", "default", "quality"):
        base = preset(TrainConfig, name)
        space = default_space(base)
        params = default_params(base, space)
        assert set(params) == set(space), name
        assert decoder_channels(params["decoder_width"], base.encoder_depth) == (
            base.decoder_channels
        )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, r"^search_space is empty: give at least one of learning_rate, "),
        ({"lr": {"low": 1, "high": 2}}, r"^search_space: unknown parameter 'lr' \(known: "),
        (
            {"learning_rate": {"low": 0.1, "high": 0.01}},
            r"^search_space.learning_rate: low 0.1 > high 0.01$",
        ),
        ({"weight_decay": {"low": 0, "high": 0.1, "log": True}}, r"log scale needs low > 0"),
        ({"batch_size": {"choices": [4, 4]}}, r"^search_space.batch_size: choices \[4, 4\] repeat"),
        ({"batch_size": {"choices": [2.5]}}, r"^search_space.batch_size: 2.5 is not a whole"),
        ({"encoder_depth": {"low": 2, "high": 9}}, r"encoder_depth: 9 is outside \[1, 5\]"),
        ({"augment": {"low": 0, "high": 1}}, r"augment: give choices \[true, false\]"),
        ({"dice_weight": {"low": 0.5}}, r"dice_weight: give low and high, or choices$"),
        ({"dice_weight": {"low": 0, "high": 1, "step": 2}}, r"unknown key\(s\) step$"),
    ],
)
def test_a_bad_search_space_is_one_line_naming_the_setting(
    raw: dict[str, dict[str, object]], message: str
) -> None:
    with pytest.raises(SweepError, match=message):
        parse_space(raw)


def test_bad_sweep_settings_name_the_setting() -> None:
    with pytest.raises(SweepError, match=r"^study_name 'a b': use 1-128 letters"):
        SweepConfig(study_name="a b")
    with pytest.raises(SweepError, match=r"^n_trials 0 must be >= 1$"):
        SweepConfig(study_name="s", n_trials=0)
    with pytest.raises(SweepError, match=r"^timeout_s -1 must be > 0"):
        SweepConfig(study_name="s", timeout_s=-1)
    with pytest.raises(SweepError, match=r"^n_workers 0 must be in \[1, 64\]$"):
        SweepConfig(study_name="s", n_workers=0)


def test_an_unreachable_database_names_the_setting_without_the_password() -> None:
    url = "postgresql+psycopg2://optuna:s3cret-pw@127.0.0.1:9/optuna"
    with pytest.raises(SweepError) as caught:
        open_storage(url)
    text = str(caught.value)
    assert text.startswith("study storage postgresql+psycopg2://optuna:***@127.0.0.1:9/optuna ")
    assert "(MLOPS_OPTUNA_STORAGE) is unreachable: OperationalError" in text
    assert "s3cret-pw" not in text and "\n" not in text


def test_exclude_scenes_is_gone_from_the_core() -> None:
    # The evaluation set (eval/scenes.json) is the one held-out mechanism.
    assert "exclude_scenes" not in {f.name for f in dataclasses.fields(SweepConfig)}


# Seeds, abandoned trials, interrupts ------------------------------------------------------------


def _draw(storage: optuna.storages.BaseStorage, name: str, n: int, seed: int = 0) -> None:
    """``n`` trials of a one-parameter objective, as one run (a fresh sampler) adds them."""
    study = optuna.load_study(study_name=name, storage=storage, sampler=TrialSeededSampler(seed))
    for _ in range(n):
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0.0, 1.0))


def test_a_resumed_study_draws_new_params_and_a_new_study_repeats_itself(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "journal.log"))
    optuna.create_study(storage=storage, study_name="resumed", direction="maximize")
    _draw(storage, "resumed", 3)
    _draw(storage, "resumed", 3)  # a second run resuming the study
    resumed = [
        t.params["x"] for t in optuna.load_study(study_name="resumed", storage=storage).trials
    ]
    assert len(set(resumed)) == 6  # TPESampler(seed) per run: trials 3-5 repeated trials 0-2

    optuna.create_study(storage=storage, study_name="again", direction="maximize")
    _draw(storage, "again", 6)
    again = [t.params["x"] for t in optuna.load_study(study_name="again", storage=storage).trials]
    assert again == resumed  # the same seed draws the same trials, however the runs split them
    optuna.create_study(storage=storage, study_name="seed1", direction="maximize")
    _draw(storage, "seed1", 3, seed=1)
    seed1 = [t.params["x"] for t in optuna.load_study(study_name="seed1", storage=storage).trials]
    assert not set(seed1) & set(resumed)


#: A worker process killed (SIGKILL: no clean-up at all) while its trial runs; Optuna only, as
#: `run_worker` and `heartbeat` leave a trial (importing PyTorch would take seconds).
KILLED_WORKER = """
import os, signal, sys, time
import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage
url, name, run_id = sys.argv[1:]
storage = url if url.startswith("sqlite") else JournalStorage(JournalFileBackend(url))
trial = optuna.load_study(study_name=name, storage=storage).ask()
trial.set_user_attr("heartbeat", time.time())
trial.set_user_attr("mlflow_run_id", run_id)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_killed_workers_trial_is_failed_when_the_study_is_next_joined(
    refs: list[TileRef],
    tracker: Tracker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    storage = (
        str(tmp_path / "journal.log") if kind == "journal" else f"sqlite:///{tmp_path / 'o.db'}"
    )
    prepare_sweep(refs, BASE, _sweep("stale"), storage, "abc123")
    child = tracker.client.create_run(tracker.experiment_id(), run_name="trial-0").info.run_id
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WORKER, storage, "stale", child],
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr.decode()
    monkeypatch.setattr(sweep_module, "STALE_AFTER_S", 1.0)
    time.sleep(1.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study = optuna.load_study(study_name="stale", storage=open_storage(storage))
        live = study.ask()  # a worker of another run, alive and beating
        live.set_user_attr(ATTR_HEARTBEAT, time.time())
        joined = prepare_sweep(refs, BASE, _sweep("stale"), storage, "abc123")  # the next run
    assert [str(w.message) for w in caught if "eartbeat" in str(w.message)] == []
    assert joined.abandoned == (0,)

    dead, alive = optuna.load_study(study_name="stale", storage=open_storage(storage)).trials
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs[ATTR_REASON].startswith("abandoned: no heartbeat from its worker for ")
    assert alive.state == TrialState.RUNNING and ATTR_REASON not in alive.user_attrs

    # What execute_sweep does for them: the child run, left RUNNING by the killed worker, ends.
    target = TrackingTarget(tracker.tracking_uri, tracker.experiment_name, None, "parent")
    end_trial_runs(study, joined.abandoned, target)
    run = tracker.client.get_run(child)
    assert run.info.status == "KILLED"
    assert run.data.tags["fail_reason"] == dead.user_attrs[ATTR_REASON]


@pytest.mark.slow
def test_an_interrupted_two_worker_sweep_stops_at_once_and_fails_its_running_trials(
    refs: list[TileRef], tracker: Tracker, tmp_path: Path
) -> None:
    storage = str(tmp_path / "journal.log")
    base = dataclasses.replace(BASE, epochs=4)
    # A budget no worker reaches before the first report (the parent polls every 2 s; on an idle
    # machine a 4-epoch trial takes well under a second), so only stopping the workers ends it.
    budget = 400
    prepared = prepare_sweep(refs, base, _sweep("stop", n_trials=budget, n_workers=2), storage, "x")
    reported: list[TrialOutcome] = []

    def interrupt(outcome: TrialOutcome) -> None:  # as Dagster's terminate or Ctrl-C arrives
        reported.append(outcome)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), tracker.run(prepared.run_name, prepared.tags) as parent:
        execute_sweep(prepared, tracker, parent, child_tags={}, on_trial=interrupt)

    assert [p.name for p in multiprocessing.active_children()] == []  # workers terminated
    trials = optuna.load_study(study_name="stop", storage=open_storage(storage)).trials
    states = [t.state for t in trials]
    assert len(reported) == 1 and TrialState.RUNNING not in states
    assert len(trials) < budget // 2  # without stopping the workers, the run went on to 400
    time.sleep(3)  # and nothing trains on after the call returned
    assert len(optuna.load_study(study_name="stop", storage=open_storage(storage)).trials) == len(
        trials
    )
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed  # a worker with budget left is always inside a trial
    for trial in failed:
        reason = "interrupted: the sweep was stopped while this trial ran"
        assert trial.user_attrs[ATTR_REASON] == reason
        if "mlflow_run_id" in trial.user_attrs:  # its child run had started: ended, not RUNNING
            run = tracker.client.get_run(trial.user_attrs["mlflow_run_id"])
            assert run.info.status == "KILLED" and run.data.tags["fail_reason"] == reason


#: A sweep process of its own (as `mlops-assets sweep` runs one), printing each finished trial.
# `mlops-assets sweep` as a user's shell starts it: SIGTERM at its default disposition (the test
# process may have inherited or set another; the disposition is printed for a failure message).
SWEEP_PROCESS = """
import pickle, signal, sys
from mlops_assets.core.cd.sweep_tracking import execute_sweep
from mlops_assets.core.tracking import Tracker
with open(sys.argv[1], "rb") as f:
    prepared, uri, experiment, parent = pickle.load(f)
tracker = Tracker(uri, experiment)
print("SIGTERM was", signal.getsignal(signal.SIGTERM), file=sys.stderr, flush=True)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
report = lambda o: print("trial", o.number, flush=True)
execute_sweep(prepared, tracker, parent, child_tags={}, on_trial=report)
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_signalled_sweep_process_leaves_no_worker_training(
    refs: list[TileRef], tracker: Tracker, tmp_path: Path, signum: int
) -> None:
    storage = str(tmp_path / "journal.log")
    base = dataclasses.replace(BASE, epochs=4)
    budget = 400  # never reached before the first report (see the test above)
    prepared = prepare_sweep(refs, base, _sweep("sig", n_trials=budget, n_workers=2), storage, "x")
    parent = tracker.client.create_run(tracker.experiment_id(), run_name="sweep").info.run_id
    state = tmp_path / "prepared.pkl"
    state.write_bytes(
        pickle.dumps((prepared, tracker.tracking_uri, tracker.experiment_name, parent))
    )
    process = subprocess.Popen(
        [sys.executable, "-c", SWEEP_PROCESS, str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # the first finished trial
        assert first.startswith("trial "), process.stderr.read() if process.stderr else ""
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    study = optuna.load_study(study_name="sig", storage=open_storage(storage))
    before = [(t.number, t.state) for t in study.trials]
    time.sleep(12)  # a worker still alive would finish its 4-epoch trial (and start more) by now
    after = [(t.number, t.state) for t in study.trials]
    why = f"exit {process.returncode}: {stderr[-2000:]}"
    assert after == before and len(after) < budget // 2, why
    if signum == signal.SIGTERM:  # stopped: its workers terminated, their trials FAILED
        assert process.returncode == 1 and "KeyboardInterrupt: signal 15" in stderr
        assert TrialState.RUNNING not in [s for _, s in after]
        assert TrialState.FAIL in [s for _, s in after]
    else:  # killed: its workers exit by themselves; their trials await fail_stale_trials
        assert process.returncode == -signal.SIGKILL
