"""Shared fixtures for the whole suite."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from moto.server import ThreadedMotoServer

from mlops_assets.core.demo.cd import DEMO_CD_SCENES, write_cd_scene
from mlops_assets.core.demo.nvs import DEMO_NVS_SCENES, write_nvs_scene
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.resources.io_managers import JsonIOManager
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.resources.outputs import LocalOutputStoreResource
from mlops_assets.resources.scene_store import EmbeddedSceneStore
from mlops_assets_tests.core.cd import mlflow_uri
from mlops_assets_tests.processes import BIN, ServerProcess, free_port

__all__ = ["free_port"]  # imported from here by many tests; defined in processes

DEPLOYMENT_VARIABLES = (
    "LAKEFS_ENDPOINT",
    "LAKEFS_ACCESS_KEY_ID",
    "LAKEFS_SECRET_ACCESS_KEY",
    "LAKEFS_STORAGE_NAMESPACE",
    "MLFLOW_TRACKING_URI",
    "MLOPS_HOME",
    "DAGSTER_HOME",
)


@pytest.fixture(scope="session")
def real_lakefs_env() -> dict[str, str]:
    """The caller's lakeFS variables, captured before each test's environment is cleared."""
    return {k: v for k, v in os.environ.items() if k.startswith("LAKEFS_")}


@pytest.fixture(autouse=True)
def _no_ambient_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's deployment from the environment."""
    for name in DEPLOYMENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


DATA = Path(__file__).parent / "data"


@pytest.fixture
def store(tmp_path: Path) -> EmbeddedStore:
    """An empty embedded store with a ``main`` branch."""
    embedded = EmbeddedStore(tmp_path / "store", "scenes")
    embedded.ensure_repository()
    return embedded


@pytest.fixture(scope="session")
def demo_cd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small generated CD scene (128 px), written once per session."""
    spec = DEMO_CD_SCENES[0]
    return write_cd_scene(spec, tmp_path_factory.mktemp("demo-cd") / spec.scene_id, size=128)


@pytest.fixture(scope="session")
def demo_cd_warped_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo CD scene whose post image is on another CRS and resolution (128 px)."""
    spec = next(s for s in DEMO_CD_SCENES if s.post_epsg is not None)
    return write_cd_scene(spec, tmp_path_factory.mktemp("demo-cd-warped") / spec.scene_id, size=128)


@pytest.fixture(scope="session")
def demo_nvs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small generated NVS scene (8 views of 48 px), written once per session."""
    spec = dataclasses.replace(DEMO_NVS_SCENES[0], views=8)
    return write_nvs_scene(spec, tmp_path_factory.mktemp("demo-nvs") / spec.scene_id, image_size=48)


def commit_folder(store: EmbeddedStore, folder: Path, prefix: str, message: str = "add") -> str:
    """Upload every file under ``folder`` to ``prefix`` on main and commit; return the commit id."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        store.put("main", prefix + path.relative_to(folder).as_posix(), path)
    return store.commit("main", message).id


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """A temporary SQLite-backed Dagster instance (pools and dynamic partitions work)."""
    with dg.instance_for_test() as test_instance:
        yield test_instance


def embedded_resources(store: EmbeddedStore, root: Path) -> dict[str, Any]:
    """The embedded resources over ``store``, everything else under ``root``."""
    return {
        "scene_store": EmbeddedSceneStore(root=str(store.root), repository=store.repository),
        "json_io_manager": JsonIOManager(base_dir=str(root / "assets")),
        "lineage": LineageResource(git_sha="0123abc"),
        "output_store": LocalOutputStoreResource(
            root=str(root / "outputs"), cache_dir=str(root / "cache")
        ),
        "mlflow": MLflowResource(
            tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
            artifact_root=str(root / "mlartifacts"),
        ),
    }


@pytest.fixture
def resources(store: EmbeddedStore, tmp_path: Path) -> dict[str, Any]:
    """The embedded resources, all under ``tmp_path``."""
    return embedded_resources(store, tmp_path)


def materialize_partition(
    assets: list[Any],
    partition: str,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    run_config: dict[str, Any] | None = None,
) -> dg.ExecuteInJobResult:
    """Materialise one partition of ``assets``, adding the partition key first."""
    for asset in assets:
        partitions_def = asset.partitions_def
        if (
            isinstance(partitions_def, dg.DynamicPartitionsDefinition)
            and partitions_def.name
            and not instance.has_dynamic_partition(partitions_def.name, partition)
        ):
            instance.add_dynamic_partitions(partitions_def.name, [partition])
    return dg.materialize(
        assets,
        partition_key=partition,
        instance=instance,
        resources=resources,
        run_config=run_config,
        raise_on_error=False,
    )


@pytest.fixture
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Iterator[str]:
    """``mlflow server`` on a free port, serving artifacts; stopped with everything it started."""
    uri = mlflow_uri(tmp_path_factory, tmp_path / "server")  # migrated already: starts faster
    port = free_port()
    argv = [str(BIN / "mlflow"), "server", "--backend-store-uri", uri]
    argv += ["--artifacts-destination", str(tmp_path / "server-artifacts"), "--serve-artifacts"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    address = f"http://127.0.0.1:{port}"
    with ServerProcess(argv, address, tmp_path / "server.log", env, "mlflow server"):
        yield address


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto) on a free port, for the whole session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
