"""``cd/registered_model`` against an MLflow server that dies: retried, never registered twice.

A real ``mlflow server`` process: killed in the middle of the step (after the version was created,
before its aliases were set) and started again, the step's `RetryPolicy` runs it again and the
retry finds the version its run already produced, so the run succeeds with exactly one new
version, aliased. Killed for good before the step, the step fails after its retries with a message
naming the server, and no version is left behind. Killed for good in the middle (after the version,
before its aliases), the step fails the same way and leaves a version without aliases, which
nothing loads (consumers load by alias) and the champion is untouched; materialising the
registration again once the server is back finds that version and completes its aliases.
"""

from __future__ import annotations

import signal
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
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.core.tracking import Tracker
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets_tests.assets.cd.test_chain import failure_message, materialize
from mlops_assets_tests.conftest import DEPLOYMENT_VARIABLES, commit_folder, embedded_resources
from mlops_assets_tests.core.cd import mlflow_uri
from mlops_assets_tests.docker.servers import MlflowServer

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, demo_cd_dir: Path, demo_cd_warped_dir: Path
) -> Iterator[dict[str, Any]]:
    """Two scenes tiled, a model trained and evaluated on a real MLflow server (not registered)."""
    root = tmp_path_factory.mktemp("cd-faults")
    server = MlflowServer(
        mlflow_uri(tmp_path_factory, root / "mlflow"),
        str(root / "server-artifacts"),
        root / "server.log",
        {},
    )
    server.start()
    try:
        with pytest.MonkeyPatch.context() as env, dg.instance_for_test() as instance:
            for name in DEPLOYMENT_VARIABLES:
                env.delenv(name, raising=False)
            env.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once, not in minutes
            store = EmbeddedStore(root / "store", "scenes")
            store.ensure_repository()
            resources = {
                **embedded_resources(store, root),
                "mlflow": MLflowResource(tracking_uri=server.address),
            }
            commit_folder(store, demo_cd_dir, "cd/farm/")
            commit_folder(store, demo_cd_warped_dir, "cd/river/")
            for scene in ("farm", "river"):
                assert materialize([cd_scene, cd_tiles], instance, resources, scene).success
            assert materialize([cd_model, cd_evaluation], instance, resources).success
            yield {"server": server, "instance": instance, "resources": resources}
    finally:
        server.stop()


def _versions(server: MlflowServer) -> list[tuple[str, str, list[str]]]:
    client = MlflowClient(tracking_uri=server.address, registry_uri=server.address)
    found = [
        client.get_model_version(m.name, str(v.version))
        for m in client.search_registered_models()
        for v in client.search_model_versions(f"name = '{m.name}'")
    ]
    return sorted((v.name, str(v.version), sorted(v.aliases)) for v in found)


def _attempts(result: dg.ExecuteInJobResult) -> int:
    """Attempts of the (one) step: its start, then a restart per retry."""
    starts = ("STEP_START", "STEP_RESTARTED")
    return len([e for e in result.all_events if e.event_type_value in starts])


def test_a_server_killed_mid_step_and_restarted_costs_one_retry_and_one_version(
    trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    server: MlflowServer = trained["server"]
    original = Tracker.set_alias
    killed: list[str] = []

    def kill_once(self: Tracker, name: str, alias: str, version: str) -> None:
        if not killed:  # the version exists; the server dies before its first alias
            killed.append(version)
            server.stop(signal.SIGKILL)
            try:
                original(self, name, alias, version)
            finally:
                server.start()  # back before the step's retry
        original(self, name, alias, version)

    monkeypatch.setattr(Tracker, "set_alias", kill_once)
    result = materialize([cd_registered_model], trained["instance"], trained["resources"])

    assert result.success, failure_message(result)
    assert killed and _attempts(result) == 2
    (registered,) = result.asset_materializations_for_node("cd__registered_model")
    name, version = registered.metadata["model_name"].value, registered.metadata["version"].value
    assert version == killed[0]
    aliases = sorted(str(a) for a in registered.metadata["aliases"].value)  # type: ignore[union-attr]
    assert _versions(server) == [(name, version, aliases)]


def test_a_server_gone_for_good_fails_cleanly_and_registers_nothing(
    trained: dict[str, Any],
) -> None:
    server: MlflowServer = trained["server"]
    before = _versions(server)
    server.stop(signal.SIGKILL)
    try:
        result = materialize([cd_registered_model], trained["instance"], trained["resources"])
    finally:
        server.start()
    assert not result.success
    message = failure_message(result)
    assert f"MLflow tracking server {server.address} is unreachable" in message
    assert _attempts(result) == 4  # the first attempt and three retries, then it gives up
    assert _versions(server) == before


def test_a_server_gone_for_good_mid_registration_is_completed_by_the_next_registration(
    trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    server: MlflowServer = trained["server"]
    instance, resources = trained["instance"], trained["resources"]
    # A run of its own: another test may already have registered the module's run.
    assert materialize([cd_model, cd_evaluation], instance, resources).success
    before = _versions(server)
    original = Tracker.set_alias
    killed: list[str] = []

    def kill_for_good(self: Tracker, name: str, alias: str, version: str) -> None:
        if not killed:  # the version exists; the server dies before its first alias, for good
            killed.append(version)
            server.stop(signal.SIGKILL)
        original(self, name, alias, version)

    monkeypatch.setattr(Tracker, "set_alias", kill_for_good)
    try:
        failed = materialize([cd_registered_model], instance, resources)
    finally:
        server.start()
    assert not failed.success and killed
    (failure,) = [e for e in failed.all_events if e.is_step_failure]
    data = failure.step_failure_data.user_failure_data
    assert data is not None and data.description is not None
    assert data.description.startswith(f"MLflow tracking server {server.address} is unreachable")
    assert "\n" not in data.description and "Traceback" not in data.description
    assert _attempts(failed) == 4
    # Half registered: the new version has no alias yet, so nothing loads it; the aliases
    # (champion included) still point where they did.
    (half,) = [v for v in _versions(server) if v not in before]
    assert half[1] == killed[0] and half[2] == []
    assert [v for v in _versions(server) if v != half] == before

    monkeypatch.setattr(Tracker, "set_alias", original)
    repaired = materialize([cd_registered_model], instance, resources)
    assert repaired.success, failure_message(repaired)
    (registered,) = repaired.asset_materializations_for_node("cd__registered_model")
    name, version = registered.metadata["model_name"].value, registered.metadata["version"].value
    assert version == killed[0]  # the same version, completed: not a second one
    aliases = sorted(str(a) for a in registered.metadata["aliases"].value)  # type: ignore[union-attr]
    assert aliases and (name, version, aliases) in _versions(server)
    assert len(_versions(server)) == len(before) + 1
    assert not [
        alias for v in _versions(server) if v[1] != version for alias in v[2] if alias in aliases
    ]
