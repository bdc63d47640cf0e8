"""The change-detection chain end to end on the embedded store and a SQLite MLflow."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest
import rasterio
from mlflow.tracking import MlflowClient

from mlops_assets.assets.cd.change_map import cd_change_map, cd_change_map_f1
from mlops_assets.assets.cd.evaluation import cd_evaluation
from mlops_assets.assets.cd.model import cd_model, cd_registered_model
from mlops_assets.assets.cd.scene import cd_scene
from mlops_assets.assets.cd.tiles import cd_tiles
from mlops_assets.core.cd.config import TrainConfig
from mlops_assets.core.cd.records import (
    CDModelRecord,
    CDRegistrationRecord,
    ChangeMapRecord,
    TilesRecord,
)
from mlops_assets.core.cd.report import EvaluationReport
from mlops_assets.core.scenes.cd import CDScene
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets_tests.conftest import DEPLOYMENT_VARIABLES, commit_folder, embedded_resources

pytestmark = pytest.mark.slow

ALL = [
    cd_scene,
    cd_tiles,
    cd_model,
    cd_evaluation,
    cd_registered_model,
    cd_change_map,
    cd_change_map_f1,
]


def run_config(selection: Sequence[dg.AssetsDefinition], **extra: dict[str, Any]) -> dict[str, Any]:
    """Tiny presets for the selected CD ops, with per-op config merged in."""
    ops = [asset.op.name for asset in selection if asset is not cd_scene]
    return {"ops": {op: {"config": {"preset": "tiny", **extra.get(op, {})}} for op in ops}}


def materialize(
    selection: Sequence[dg.AssetsDefinition],
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    partition: str | None = None,
    **extra: dict[str, Any],
) -> dg.ExecuteInJobResult:
    """Materialise ``selection`` (the other CD assets are only read)."""
    if partition is not None and not instance.has_dynamic_partition("cd_scenes", partition):
        instance.add_dynamic_partitions("cd_scenes", [partition])
    return dg.materialize(
        ALL,
        selection=list(selection),
        partition_key=partition,
        instance=instance,
        resources=resources,
        run_config=run_config(selection, **extra),
        raise_on_error=False,
    )


def failure_message(result: dg.ExecuteInJobResult) -> str:
    """The description of the first failed step."""
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            return f"{data.user_failure_data.description if data.user_failure_data else ''} " + (
                data.error.message if data.error else ""
            )
    raise AssertionError("no step failed")


@pytest.fixture(scope="module")
def chain(
    tmp_path_factory: pytest.TempPathFactory, demo_cd_dir: Path, demo_cd_warped_dir: Path
) -> Iterator[dict[str, Any]]:
    """Two labelled scenes tiled, a model trained and registered: once for the whole module.

    The tests read this chain and add to it (a reused tile set, a refused registration, a
    change map) without undoing what the others check.
    """
    root = tmp_path_factory.mktemp("cd-chain")
    with pytest.MonkeyPatch.context() as env, dg.instance_for_test() as instance:
        for name in DEPLOYMENT_VARIABLES:
            env.delenv(name, raising=False)
        store = EmbeddedStore(root / "store", "scenes")
        store.ensure_repository()
        resources = embedded_resources(store, root)
        commit_folder(store, demo_cd_dir, "cd/farm/")
        commit = commit_folder(store, demo_cd_warped_dir, "cd/river/")
        for scene in ("farm", "river"):
            result = materialize([cd_scene, cd_tiles], instance, resources, scene)
            assert result.success, scene
        model = materialize([cd_model, cd_evaluation, cd_registered_model], instance, resources)
        assert model.success
        yield {
            "commit": commit,
            "model": model,
            "store": store,
            "instance": instance,
            "resources": resources,
        }


@pytest.fixture
def store(chain: dict[str, Any]) -> EmbeddedStore:
    """The chain's store."""
    return chain["store"]


@pytest.fixture
def instance(chain: dict[str, Any]) -> dg.DagsterInstance:
    """The chain's Dagster instance."""
    return chain["instance"]


@pytest.fixture
def resources(chain: dict[str, Any]) -> dict[str, Any]:
    """The chain's resources."""
    return chain["resources"]


def assert_hands_on(
    result: dg.ExecuteInJobResult, node: str, record_class: type[Any], stored: Path
) -> Any:
    """``node``'s value in ``result``: a ``record_class``, stored in ``stored`` as its to_dict."""
    value = result.output_for_node(node)
    assert type(value) is record_class, node
    text = stored.read_text()
    assert text == json.dumps(value.to_dict(), indent=2, sort_keys=True, default=str), node
    assert record_class.from_dict(json.loads(text)) == value, node  # what downstream reads
    return value


def test_each_asset_hands_on_its_record_and_stores_its_json(
    chain: dict[str, Any], instance: dg.DagsterInstance, resources: dict[str, Any]
) -> None:
    # First in the module: later tests write some of these assets again (and the change map
    # test checks its own record).
    river = materialize([cd_scene, cd_tiles], instance, resources, "river")
    assert river.success, failure_message(river)
    expected = {
        ("cd__scene", "cd/scene/river.json"): (river, CDScene),
        ("cd__tiles", "cd/tiles/river.json"): (river, TilesRecord),
        ("cd__model", "cd/model.json"): (chain["model"], CDModelRecord),
        ("cd__evaluation", "cd/evaluation.json"): (chain["model"], EvaluationReport),
        ("cd__registered_model", "cd/registered_model.json"): (
            chain["model"],
            CDRegistrationRecord,
        ),
    }
    root = Path(resources["json_io_manager"].base_dir)
    for (node, path), (result, record_class) in expected.items():
        assert_hands_on(result, node, record_class, root / path)
    registered = chain["model"].output_for_node("cd__registered_model")
    assert (registered.registered, registered.version) == (True, "1")
    assert registered.aliases == ["challenger", "champion"]
    assert registered.lakefs_commits["river"] == chain["commit"]
    assert registered.run_id == chain["model"].output_for_node("cd__model").run_id


def test_tiles_are_published_once_under_a_commit_and_config_key(
    chain: dict[str, Any], instance: dg.DagsterInstance, resources: dict[str, Any], tmp_path: Path
) -> None:
    event = instance.get_latest_materialization_event(dg.AssetKey(["cd", "tiles"]))
    assert event is not None and event.asset_materialization is not None
    meta = event.asset_materialization.metadata
    tile_count = int(str(meta["tile_count"].value))
    assert tile_count > 0
    assert meta["output_store"].value == "local"
    assert "data:image/png;base64," in str(meta["preview"].value)
    assert float(str(meta["alignment_residual_px"].value)) < 0.5
    uri = str(meta["tiles_uri"].value)
    commit = chain["commit"]
    assert f"cd/tiles/river/{commit[:16]}-{meta['config_hash'].value}" in uri
    index = json.loads((Path(uri.removeprefix("file://")) / "index.json").read_text())
    assert index["commit_id"] == commit
    assert len(index["tiles"]) == tile_count
    assert index["sources"]["pre"] == f"lakefs://scenes/{commit}/cd/river/pre.tif"
    # The same commit and config again: the published set is reused, not rewritten.
    again = materialize([cd_tiles], instance, resources, "river")
    (mat,) = again.asset_materializations_for_node("cd__tiles")
    assert mat.metadata["reused"].value is True
    assert mat.metadata["tiles_uri"].value == meta["tiles_uri"].value


def test_training_run_is_traceable_in_mlflow(
    chain: dict[str, Any], resources: dict[str, Any]
) -> None:
    (mat,) = chain["model"].asset_materializations_for_node("cd__model")
    run_id = str(mat.metadata["mlflow_run_id"].value)
    client = MlflowClient(resources["mlflow"].tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["encoder"] == TrainConfig().encoder
    assert run.data.params["scenes"] == "farm,river"
    assert json.loads(run.data.tags["lakefs.commits"])["river"] == chain["commit"]
    assert run.data.tags["git_sha"] == "0123abc"
    assert run.data.tags["dagster.run_id"] == chain["model"].run_id
    assert {"val_f1", "val_iou", "val_precision", "val_recall"} <= run.data.metrics.keys()
    assert len(client.get_metric_history(run_id, "f1")) == 2  # one per epoch
    assert run.inputs is not None
    inputs = {d.dataset.name: json.loads(d.dataset.source) for d in run.inputs.dataset_inputs}
    assert inputs["cd/tiles/river"]["uri"] == f"lakefs://scenes/{chain['commit']}/cd/river"
    artifacts = {a.path for a in client.list_artifacts(run_id, "validation")}
    assert len(artifacts) == 2 and all(p.endswith(".png") for p in artifacts)
    assert str(mat.metadata["model_uri"].value).startswith("models:/m-")


def test_registered_version_carries_lineage_and_aliases(
    chain: dict[str, Any], resources: dict[str, Any]
) -> None:
    client = MlflowClient(resources["mlflow"].tracking_uri)
    champion = client.get_model_version_by_alias("change-detection-unet", "champion")
    challenger = client.get_model_version_by_alias("change-detection-unet", "challenger")
    assert str(champion.version) == str(challenger.version) == "1"
    assert champion.current_stage in (None, "None")  # aliases only, never stages
    assert json.loads(champion.tags["lakefs.commits"])["river"] == chain["commit"]
    assert champion.tags["git_sha"] == "0123abc"
    (trained,) = chain["model"].asset_materializations_for_node("cd__model")
    val_f1 = float(str(trained.metadata["val_f1"].value))  # rounded to 4 places
    assert float(champion.tags["val_f1"]) == pytest.approx(val_f1, abs=1e-4)
    (check,) = chain["model"].get_asset_check_evaluations()
    assert check.passed and "no champion yet" in (check.description or "")
    # No eval/scenes.json in this store: the gate falls back to validation F1 and says so.
    assert (check.description or "").startswith(
        "no evaluation scenes in eval/scenes.json: gated on validation F1; "
    )
    (registered,) = chain["model"].asset_materializations_for_node("cd__registered_model")
    assert registered.metadata["gate_on"].value == "val"


def test_gate_failure_registers_nothing(
    chain: dict[str, Any], instance: dg.DagsterInstance, resources: dict[str, Any]
) -> None:
    result = materialize(
        [cd_registered_model], instance, resources, cd__registered_model={"min_f1": 1.01}
    )
    assert not result.success
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and "below the minimum 1.0100" in (check.description or "")
    client = MlflowClient(resources["mlflow"].tracking_uri)
    versions = client.search_model_versions("name='change-detection-unet'")
    assert [v.version for v in versions] == ["1"] or [int(v.version) for v in versions] == [1]


def test_change_map_is_georeferenced_and_committed_to_outputs(
    chain: dict[str, Any],
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    tmp_path: Path,
) -> None:
    result = materialize([cd_change_map], instance, resources, "river")
    assert result.success
    (mat,) = result.asset_materializations_for_node("cd__change_map")
    meta = mat.metadata
    assert meta["model"].value == "change-detection-unet v1 (champion)"
    assert meta["source_commit"].value == chain["commit"]
    assert 0.0 <= meta["changed_percent"].value <= 100.0
    assert meta["f1_vs_label"].value is not None
    stored = Path(resources["json_io_manager"].base_dir) / "cd/change_map/river.json"
    record = assert_hands_on(result, "cd__change_map", ChangeMapRecord, stored)
    assert record.outputs_commit == meta["outputs_commit"].value and record.model.version == "1"
    # The quality check runs with the map: labelled, so judged against min_f1 (a warning).
    (check,) = result.get_asset_check_evaluations()
    assert (check.check_name, check.severity) == ("f1_against_label", dg.AssetCheckSeverity.WARN)
    assert check.metadata["f1"].value == meta["f1_vs_label"].value
    assert check.passed == (float(str(meta["f1_vs_label"].value)) >= 0.8)
    outputs_commit = str(meta["outputs_commit"].value)
    commit = store.get_commit(outputs_commit)
    assert commit.metadata["source_commit"] == chain["commit"]
    assert commit.metadata["model_name"] == "change-detection-unet"
    assert commit.metadata["model_version"] == "1"
    assert commit.metadata["::lakefs::Dagster::url[url:ui]"].endswith(result.run_id)
    # main (the branch sensors watch) is untouched; outputs holds the files.
    assert not store.exists("main", "cd/river/change_map.tif")
    path = store.download("outputs", "cd/river/change_map.tif", tmp_path / "map.tif")
    with (
        rasterio.open(path) as out,
        rasterio.open(store.raster_location(chain["commit"], "cd/river/pre.tif").path) as pre,
    ):
        assert out.crs == pre.crs and out.transform == pre.transform
        assert (out.width, out.height) == (pre.width, pre.height)
        assert out.count == 2 and out.nodata == -1.0
        assert out.profile["tiled"] and out.compression is not None
        prob, mask = out.read(1), out.read(2)
        valid = out.read_masks(1) > 0
        assert 0.5 < valid.mean() < 1.0  # the demo's nodata borders are kept
        assert np.all((prob[valid] >= 0) & (prob[valid] <= 1))
        assert set(np.unique(mask[valid])) <= {0.0, 1.0}
        assert np.all(prob[pre.dataset_mask() == 0] == -1.0)  # pre's nodata stays nodata
    assert store.exists("outputs", "cd/river/overlay.png")


def test_missing_alias_fails_the_partition_with_its_name(
    chain: dict[str, Any],
    store: EmbeddedStore,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
) -> None:
    result = materialize(
        [cd_change_map], instance, resources, "farm", cd__change_map={"alias": "nope"}
    )
    assert not result.success
    message = failure_message(result)
    assert "no version under alias 'nope'" in message and "champion->v1" in message
    assert "outputs" not in store.list_branches() or not store.exists(
        "outputs", "cd/farm/change_map.tif"
    )
