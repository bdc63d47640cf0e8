"""The CD model through MLflow: logged as a pyfunc, registered, loaded back by alias."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
from mlflow.models import get_model_info
from mlflow.pyfunc import PyFuncModel
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

from mlops_assets.core.cd.config import TilingConfig, TrainConfig, preset
from mlops_assets.core.cd.dataset import tile_refs
from mlops_assets.core.cd.infer import predict_windows
from mlops_assets.core.cd.registry import (
    load_cd_model,
    log_cd_model,
    pip_requirements,
    signature,
)
from mlops_assets.core.cd.tiles import TileIndex
from mlops_assets.core.cd.train import TrainResult, train_change_model
from mlops_assets.core.demo.cd import DEMO_CD_SCENES, write_cd_scene
from mlops_assets.core.tracking import CHAMPION, AliasNotFoundError, Tracker
from mlops_assets_tests.core.cd import mlflow_uri, tile_folder

pytestmark = pytest.mark.slow  # trains and logs a model once for the module (about 10 s)

NAME = "cd-unet-test"


@dataclass
class Registered:
    tracker: Tracker
    result: TrainResult
    index: TileIndex
    run_id: str
    model_uri: str


@pytest.fixture(scope="module")
def registered(demo_cd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Registered:
    """A 1-epoch tiny U-Net trained on two demo scenes, logged, registered and made champion."""
    root = tmp_path_factory.mktemp("registry")
    suburb = write_cd_scene(DEMO_CD_SCENES[1], root / "suburb-east", size=128)
    tiling = preset(TilingConfig, "tiny")
    farm = tile_folder(demo_cd_dir, root / "t-farm", tiling, "farmland-north")
    sets = [
        (root / "t-farm", farm),
        (root / "t-suburb", tile_folder(suburb, root / "t-suburb", tiling)),
    ]
    config = preset(TrainConfig, "tiny", epochs=1, device="cpu")
    result = train_change_model(tile_refs(sets), config)
    tracker = Tracker(mlflow_uri(tmp_path_factory, root / "mlflow"), "cd", root / "artifacts")
    with tracker.run("cd-test", {"purpose": "test"}) as run_id:
        model_uri = log_cd_model(tracker, run_id, result, threshold=0.4)
    version = tracker.register(NAME, model_uri, run_id, {"val_f1": "0.5"}, "test model")
    tracker.set_alias(NAME, CHAMPION, str(version.version))
    return Registered(tracker, result, farm, run_id, model_uri)


@pytest.fixture
def global_mlflow(registered: Registered, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point MLflow's process-wide URIs at the test store, as a serving client would.

    The module state and the variables are patched, so both go back exactly as they were:
    restoring through ``mlflow.set_registry_uri`` would pin what was a default (an unset registry
    URI follows each client's tracking URI), and later tests' registrations would land in the
    pinned registry (`mlops_assets.core.tracking._fluent_uris` explains the same trap).
    """
    uri = registered.tracker.tracking_uri
    monkeypatch.setattr(tracking_utils, "_tracking_uri", uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    yield


def test_requirements_are_exact_pins_of_what_is_installed() -> None:
    pins = dict(r.split("==") for r in pip_requirements())
    assert set(pins) == {"torch", "segmentation-models-pytorch", "timm", "numpy", "mlflow"}
    assert pins["mlflow"] == importlib.metadata.version("mlflow") == mlflow.__version__
    assert pins["torch"] == importlib.metadata.version("torch")


@pytest.mark.usefixtures("global_mlflow")
def test_logged_model_has_its_signature_and_run(registered: Registered) -> None:
    info = get_model_info(registered.model_uri)
    assert info.run_id == registered.run_id
    assert info.signature is not None and info.signature == signature(4)
    inputs = info.signature.inputs.to_dict()
    assert [(i["name"], list(i["tensor-spec"]["shape"])) for i in inputs] == [
        ("pre", [-1, 4, -1, -1]),
        ("post", [-1, 4, -1, -1]),
    ]
    assert list(info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, -1, -1]
    assert info.signature.params is not None
    assert [p.name for p in info.signature.params] == [
        "pre_mean",
        "pre_std",
        "post_mean",
        "post_std",
    ]
    run = registered.tracker.client.get_run(registered.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["purpose"] == "test"


def test_registered_version_is_loaded_by_alias_with_its_weights(registered: Registered) -> None:
    loaded = load_cd_model(registered.tracker, NAME, CHAMPION)
    assert (loaded.name, loaded.version, loaded.alias) == (NAME, "1", CHAMPION)
    assert loaded.run_id == registered.run_id
    assert loaded.spec == {**registered.result.spec, "threshold": 0.4}
    assert loaded.size_multiple == 8  # 2 ** encoder_depth
    trained = registered.result.model.state_dict()
    for key, value in loaded.net.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert not loaded.net.training


def test_a_missing_alias_names_the_aliases_that_exist(registered: Registered) -> None:
    with pytest.raises(
        AliasNotFoundError,
        match=rf"registered model '{NAME}' has no version under alias 'production' "
        r"\(aliases: champion->v1\)",
    ):
        load_cd_model(registered.tracker, NAME, "production")


def _batch(seed: int, shape: tuple[int, int]) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    size = (2, 4, *shape)
    return {
        "pre": rng.uniform(200, 4000, size).astype(np.float32),
        "post": rng.uniform(300, 5000, size).astype(np.float32),
    }


def _stats(batch: dict[str, np.ndarray[Any, Any]]) -> dict[str, list[float]]:
    return {
        f"{role}_{kind}": [float(v) for v in getattr(batch[role], kind)(axis=(0, 2, 3))]
        for role in ("pre", "post")
        for kind in ("mean", "std")
    }


@pytest.mark.usefixtures("global_mlflow")
def test_pyfunc_by_alias_predicts_probabilities_with_and_without_statistics(
    registered: Registered,
) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}")
    assert isinstance(model, PyFuncModel)
    assert model.metadata.get_input_schema() == signature(4).inputs
    batch = _batch(0, (37, 45))  # not multiples of 8: padded inside, cropped back
    plain = np.asarray(model.predict(batch))
    assert plain.shape == (2, 37, 45) and plain.dtype == np.float32
    assert ((plain >= 0) & (plain <= 1)).all() and plain.std() > 0
    # Without statistics the batch normalises itself: passing the batch's own is the same.
    own = np.asarray(model.predict(batch, params=_stats(batch)))
    np.testing.assert_allclose(own, plain, atol=1e-6)
    scene = np.asarray(model.predict(batch, params=_stats(_batch(1, (37, 45)))))
    assert np.abs(scene - plain).max() > 1e-3  # the statistics are used


@pytest.mark.usefixtures("global_mlflow")
def test_served_model_and_pipeline_agree(registered: Registered) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}")
    index = registered.index
    params = {
        "pre_mean": index.pre_stats.mean,
        "pre_std": index.pre_stats.std,
        "post_mean": index.post_stats.mean,
        "post_std": index.post_stats.std,
    }
    batch = _batch(2, (64, 64))
    served = np.asarray(model.predict(batch, params=params))
    valid = np.ones((64, 64), bool)
    stacked = np.stack(
        [
            np.concatenate(
                [index.pre_stats.normalise(pre, valid), index.post_stats.normalise(post, valid)]
            )
            for pre, post in zip(batch["pre"], batch["post"], strict=True)
        ]
    )
    loaded = load_cd_model(registered.tracker, NAME, CHAMPION)
    pipeline = predict_windows(loaded.net, stacked, torch.device("cpu"), loaded.size_multiple)
    np.testing.assert_allclose(served, pipeline, atol=1e-5)


@pytest.mark.usefixtures("global_mlflow")
def test_mismatched_inputs_are_refused_with_their_shapes(registered: Registered) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}")
    batch = _batch(0, (16, 16))
    batch["post"] = batch["post"][:, :, :8]
    with pytest.raises(Exception, match=r"pre \(2, 4, 16, 16\) and post \(2, 4, 8, 16\)"):
        model.predict(batch)
