"""MLflow tracking through `Tracker`: experiments, runs, the registry, the promotion gate."""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import subprocess
import sys
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from mlops_assets.core.tracking import (
    CHALLENGER,
    CHAMPION,
    AliasNotFoundError,
    DatasetRef,
    Tracker,
    TrackingError,
    gate,
    redact_uri,
)
from mlops_assets_tests.conftest import free_port
from mlops_assets_tests.core.cd import mlflow_uri


@pytest.fixture
def tracker(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Tracker:
    """A tracker on an empty SQLite store, artifacts under ``tmp_path/artifacts``."""
    return Tracker(mlflow_uri(tmp_path_factory, tmp_path / "db"), "cd", tmp_path / "artifacts")


# The promotion gate ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "champion", "passed", "reason"),
    [
        (0.85, None, True, "f1 0.8500 >= minimum 0.8000; no champion yet"),
        (0.80, None, True, "f1 0.8000 >= minimum 0.8000; no champion yet"),
        (0.79, None, False, "f1 0.7900 is below the minimum 0.8000"),
        (math.nan, None, False, "f1 nan is below the minimum 0.8000"),
        (math.nan, 0.9, False, "f1 nan is below the minimum 0.8000"),
        (
            0.86,
            0.87,
            True,
            "f1 0.8600 >= minimum 0.8000; champion v3 has 0.8700, tolerance 0.0200",
        ),
        (0.95, 0.87, True, "f1 0.9500 >= minimum 0.8000; champion v3 has 0.8700, tolerance 0.0200"),
        (
            0.84,
            0.87,
            False,
            "f1 0.8400 is worse than champion v3 (0.8700) by more than the tolerance 0.0200",
        ),
        (0.75, 0.95, False, "f1 0.7500 is below the minimum 0.8000"),  # the minimum comes first
    ],
)
def test_gate(candidate: float, champion: float | None, passed: bool, reason: str) -> None:
    decision = gate(candidate, champion, 0.8, 0.02, champion_version="3" if champion else None)
    assert (decision.passed, decision.reason) == (passed, reason)
    assert decision.champion == champion
    assert decision.champion_version == ("3" if champion else None)
    assert decision.candidate == candidate or math.isnan(candidate)


def test_gate_names_the_metric() -> None:
    assert (
        gate(0.1, None, 0.5, 0.0, metric="iou").reason == "iou 0.1000 is below the minimum 0.5000"
    )


# Addresses in messages -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("https://alice:s3cret@mlflow.example.com/", "https://alice:***@mlflow.example.com/"),
        ("http://alice:s3cret@10.0.0.5:5000/api", "http://alice:***@10.0.0.5:5000/api"),
        ("http://alice:p%40ss@host:5000", "http://alice:***@host:5000"),
        ("http://alice:@host", "http://alice:***@host"),
        ("http://host:5000", "http://host:5000"),
        ("http://alice@host:5000", "http://***@host:5000"),  # a bare token looks the same
        ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
    ],
)
def test_redact_uri_hides_the_password_or_token(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


def test_redact_uri_keeps_an_ipv6_host_usable() -> None:
    assert redact_uri("http://alice:s3cret@[::1]:5000") == "http://alice:***@[::1]:5000"


def test_unreachable_server_fails_fast_naming_it_without_the_password(tmp_path: Path) -> None:
    port = free_port()
    tracker = Tracker(f"http://alice:s3cret@127.0.0.1:{port}", "cd")
    assert not tracker.is_local
    started = time.perf_counter()
    with pytest.raises(TrackingError) as caught:
        tracker.check_reachable(timeout=2.0)
    assert time.perf_counter() - started < 2.0  # refused at once, not timed out
    message = str(caught.value)
    assert message.startswith(
        f"MLflow tracking server http://alice:***@127.0.0.1:{port} is unreachable: ConnectionError"
    )
    assert "s3cret" not in message
    with pytest.raises(TrackingError, match="is unreachable"):
        tracker.experiment_id()  # nothing is attempted against a server that is not there


def test_a_local_store_needs_no_server(tracker: Tracker) -> None:
    assert tracker.is_local
    tracker.check_reachable()


# Experiments and runs ------------------------------------------------------------------------


def test_experiment_is_created_once_with_artifacts_under_the_root(
    tracker: Tracker, tmp_path: Path
) -> None:
    experiment_id = tracker.experiment_id()
    assert tracker.experiment_id() == experiment_id
    other = Tracker(tracker.tracking_uri, "cd", tmp_path / "elsewhere")
    assert other.experiment_id() == experiment_id  # found by name, not created again
    experiments = tracker.client.search_experiments()
    assert [e.name for e in experiments if e.name == "cd"] == ["cd"]
    experiment = tracker.client.get_experiment(experiment_id)
    assert experiment.artifact_location == (tmp_path / "artifacts" / "cd").resolve().as_uri()
    with tracker.run("r", {}) as run_id:
        tracker.log_dict(run_id, {"a": 1}, "history.json")
    written = tmp_path / "artifacts" / "cd" / run_id / "artifacts" / "history.json"
    assert json.loads(written.read_text()) == {"a": 1}


def test_run_is_finished_when_the_block_completes(tracker: Tracker) -> None:
    with tracker.run("train", {"git_sha": "abc"}) as run_id:
        assert tracker.client.get_run(run_id).info.status == "RUNNING"
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "train"
    assert run.data.tags["git_sha"] == "abc"
    assert run.info.experiment_id == tracker.experiment_id()


def test_run_is_failed_when_the_block_raises(tracker: Tracker) -> None:
    run_ids: list[str] = []
    with pytest.raises(RuntimeError, match="diverged"), tracker.run("train", {}) as run_id:
        run_ids.append(run_id)
        raise RuntimeError("diverged")
    assert tracker.client.get_run(run_ids[0]).info.status == "FAILED"


def test_params_metrics_tags_and_datasets(tracker: Tracker) -> None:
    with tracker.run("r", {}) as run_id:
        tracker.log_params(run_id, {f"p{i:03d}": i for i in range(150)} | {"long": "x" * 7000})
        tracker.log_metrics(run_id, {"f1": 0.5, "loss": 1.5}, step=1)
        tracker.log_metrics(run_id, {"f1": 0.75}, step=2)
        tracker.set_tags(run_id, {"device": "cpu"})
        tracker.log_datasets(
            run_id,
            [DatasetRef("cd/tiles/farm", "c0ffee" * 10, "lakefs://scenes/c0ffee/cd/farm")],
        )
        tracker.log_datasets(run_id, [])
    run = tracker.client.get_run(run_id)
    assert len(run.data.params) == 151 and run.data.params["p149"] == "149"
    assert len(run.data.params["long"]) == 6000  # MLflow's limit
    assert [m.value for m in tracker.client.get_metric_history(run_id, "f1")] == [0.5, 0.75]
    assert tracker.run_metric(run_id, "f1") == 0.75 and tracker.run_metric(run_id, "iou") is None
    assert run.data.tags["device"] == "cpu"
    assert run.inputs is not None
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "cd/tiles/farm" and len(dataset.dataset.digest) == 36
    assert json.loads(dataset.dataset.source) == {"uri": "lakefs://scenes/c0ffee/cd/farm"}
    assert [(t.key, t.value) for t in dataset.tags] == [("mlflow.data.context", "train")]
    experiment_id = tracker.experiment_id()
    assert tracker.run_url(run_id, "http://ui:5000/") == (
        f"http://ui:5000/#/experiments/{experiment_id}/runs/{run_id}"
    )


def _spawned_tracker(uri: str, artifacts: str, barrier: Barrier, results: Queue[str]) -> None:
    barrier.wait()
    try:
        tracker = Tracker(uri, "cd", Path(artifacts))
        results.put(f"ok {tracker.experiment_id()}")
    except Exception as exc:  # reported to the test, which names it
        results.put(f"{type(exc).__name__}: {exc}"[:300])


@pytest.mark.slow
def test_two_processes_initialising_a_fresh_store_both_succeed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    (tmp_path / "fresh").mkdir()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results: Queue[str] = ctx.Queue()
    args = (uri, str(tmp_path / "artifacts"), barrier, results)
    workers = [ctx.Process(target=_spawned_tracker, args=args) for _ in range(2)]
    for p in workers:
        p.start()
    outcomes = [results.get(timeout=240) for _ in workers]
    for p in workers:
        p.join(timeout=60)
    assert outcomes == ["ok 1", "ok 1"]


@pytest.mark.slow
def test_loading_a_model_leaves_the_environment_alone(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    uri = mlflow_uri(tmp_path_factory, tmp_path / "store")
    code = (
        "import os, sys\n"
        "from mlops_assets.core.tracking import Tracker, load_pyfunc\n"
        "try:\n"
        "    load_pyfunc(Tracker(sys.argv[1], 'cd'), 'models:/missing/1')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, file=sys.stderr)\n"
        "print(os.environ.get('MLFLOW_TRACKING_URI'), os.environ.get('MLFLOW_REGISTRY_URI'))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [sys.executable, "-c", code, uri],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "MlflowException" in done.stderr  # the model really is missing
    assert done.stdout.split() == ["None", "None"]


# The registry --------------------------------------------------------------------------------


def _version(tracker: Tracker, name: str) -> str:
    """A bare registered version (no logged model needed to test aliases)."""
    with tracker.run("r", {}) as run_id:
        pass
    with contextlib.suppress(Exception):
        tracker.client.create_registered_model(name)
    version = tracker.client.create_model_version(name, f"runs:/{run_id}/model", run_id)
    return str(version.version)


def test_aliases_resolve_and_missing_ones_name_what_exists(tracker: Tracker) -> None:
    with pytest.raises(
        AliasNotFoundError,
        match=r"^registered model 'cd-unet' does not exist in sqlite:///.*: "
        "materialise cd/registered_model first$",
    ):
        tracker.require_alias("cd-unet", CHAMPION)
    assert tracker.version_by_alias("cd-unet", CHAMPION) is None
    first, second = _version(tracker, "cd-unet"), _version(tracker, "cd-unet")
    with pytest.raises(AliasNotFoundError, match=r"\(aliases: none\)$"):
        tracker.require_alias("cd-unet", CHAMPION)
    tracker.set_alias("cd-unet", CHAMPION, first)
    tracker.set_alias("cd-unet", CHALLENGER, second)
    version = tracker.require_alias("cd-unet", CHAMPION)
    assert str(version.version) == first == "1"
    assert tracker.version_by_alias("cd-unet", "production") is None
    with pytest.raises(
        AliasNotFoundError,
        match=r"^registered model 'cd-unet' has no version under alias 'production' "
        r"\(aliases: challenger->v2, champion->v1\)$",
    ):
        tracker.require_alias("cd-unet", "production")


# Against a real MLflow server ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_log_register_alias_and_load_through_a_real_server(
    mlflow_server: str, tmp_path: Path
) -> None:
    # Imported here, not at the top: the spawned processes above import this module, and torch
    # would triple their start-up time.
    import torch

    from mlops_assets.core.cd.config import TrainConfig, preset
    from mlops_assets.core.cd.model import build_unet, model_spec
    from mlops_assets.core.cd.registry import load_cd_model, log_cd_model
    from mlops_assets.core.cd.train import EpochMetrics, TrainResult

    tracker = Tracker(mlflow_server, "cd-integration")
    tracker.check_reachable()
    config = preset(TrainConfig, "tiny")
    torch.manual_seed(0)
    net = build_unet(8, config).eval()  # untrained: this is about the server, not the model
    metrics = EpochMetrics(1, 0.7, 0.6, 0.5, 0.33, 0.5, 0.5, 1.0, 10.0)
    result = TrainResult(net, model_spec(8, config), [metrics], metrics, 9, 9, 0, "cpu")
    with tracker.run("cd-server", {"git_sha": "abc"}) as run_id:
        tracker.log_params(run_id, {"epochs": 1})
        tracker.log_metrics(run_id, {"val_f1": 0.5}, step=0)
        model_uri = log_cd_model(tracker, run_id, result, threshold=0.5)
    assert model_uri.startswith("models:/m-")
    version = tracker.register("cd-server-unet", model_uri, run_id, {"val_f1": "0.5"}, "gate ok")
    assert str(version.version) == "1"
    tracker.set_alias("cd-server-unet", CHALLENGER, str(version.version))
    tracker.set_alias("cd-server-unet", CHAMPION, str(version.version))

    champion = tracker.require_alias("cd-server-unet", CHAMPION)
    assert str(champion.version) == "1" and champion.run_id == run_id
    assert champion.tags["val_f1"] == "0.5"
    with pytest.raises(AliasNotFoundError, match=r"challenger->v1, champion->v1"):
        tracker.require_alias("cd-server-unet", "production")
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["val_f1"] == 0.5
    assert run.info.artifact_uri is not None
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied by the server

    loaded = load_cd_model(tracker, "cd-server-unet", CHAMPION)
    assert (loaded.version, loaded.run_id) == ("1", run_id)
    for key, value in loaded.net.state_dict().items():
        assert torch.equal(value, net.state_dict()[key]), key
    assert (tmp_path / "server-artifacts").is_dir()
    assert any((tmp_path / "server-artifacts").rglob("weights.pt"))
