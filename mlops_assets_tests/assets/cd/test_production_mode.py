"""The chain in production mode: a real `mlflow server` and an S3-compatible output store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from mlops_assets.assets.cd.change_map import cd_change_map
from mlops_assets.assets.cd.evaluation import cd_evaluation
from mlops_assets.assets.cd.model import cd_model, cd_registered_model
from mlops_assets.assets.cd.scene import cd_scene
from mlops_assets.assets.cd.tiles import cd_tiles
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.resources.outputs import S3OutputStoreResource
from mlops_assets_tests.assets.cd.test_chain import materialize
from mlops_assets_tests.conftest import commit_folder

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_chain_against_an_mlflow_server_and_s3_tiles(
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    mlflow_server: str,
    moto_endpoint: str,
    demo_cd_dir: Path,
    demo_cd_warped_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="tiles")
    production = {
        **resources,
        "mlflow": MLflowResource(tracking_uri=mlflow_server, ui_url=mlflow_server),
        "output_store": S3OutputStoreResource(
            endpoint_url=moto_endpoint,
            bucket="tiles",
            prefix="prod",
            cache_dir=str(tmp_path / "s3-cache"),
        ),
    }
    commit_folder(store, demo_cd_dir, "cd/farm/")
    commit = commit_folder(store, demo_cd_warped_dir, "cd/river/")
    for scene in ("farm", "river"):
        assert materialize([cd_scene, cd_tiles], instance, production, scene).success
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="tiles", Prefix="prod/")["Contents"]]
    assert f"prod/cd/tiles/river/{commit[:16]}" in "\n".join(keys)
    assert sum(k.endswith("/index.json") for k in keys) == 2

    trained = materialize([cd_model, cd_evaluation, cd_registered_model], instance, production)
    assert trained.success
    (model,) = trained.asset_materializations_for_node("cd__model")
    run_id = str(model.metadata["mlflow_run_id"].value)
    assert str(model.metadata["mlflow_run"].value).startswith(f"{mlflow_server}/#/experiments/")
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    assert client.get_run(run_id).data.tags["git_sha"] == "0123abc"
    champion = client.get_model_version_by_alias("change-detection-unet", "champion")
    assert champion.run_id == run_id

    mapped = materialize([cd_change_map], instance, production, "river")
    assert mapped.success
    (change_map,) = mapped.asset_materializations_for_node("cd__change_map")
    assert change_map.metadata["model"].value == "change-detection-unet v1 (champion)"
    assert store.exists("outputs", "cd/river/change_map.tif")
