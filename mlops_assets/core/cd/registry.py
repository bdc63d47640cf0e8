"""The change-detection model in MLflow: logged as a pyfunc, loaded back by alias.

The logged model holds the U-Net's ``state_dict`` and its architecture ``spec`` as artifacts and
`pyfunc_model.py` as its code, with pinned pip requirements, so ``mlflow models serve`` works
without this package. The pipeline itself loads the same model and takes the network out of it
for streaming inference.
"""

from __future__ import annotations

import importlib.metadata
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec
from torch import nn

from mlops_assets.core.tracking import Tracker, load_pyfunc, log_pyfunc

if TYPE_CHECKING:  # loading a model (cd/change_map) needs none of training's imports
    from mlops_assets.core.cd.train import TrainResult

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
_REQUIREMENTS = ("torch", "segmentation-models-pytorch", "timm", "numpy", "mlflow")


def pip_requirements() -> list[str]:
    """Exact pins of what the pyfunc imports, as installed here."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in _REQUIREMENTS]


def signature(bands: int) -> ModelSignature:
    """Inputs pre/post [N, C, H, W] float32, output [N, H, W]; scene statistics as params."""
    image = (-1, bands, -1, -1)
    return ModelSignature(
        inputs=Schema(
            [
                TensorSpec(np.dtype(np.float32), image, "pre"),
                TensorSpec(np.dtype(np.float32), image, "post"),
            ]
        ),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1), "change_probability")]),
        params=ParamSchema(
            [
                ParamSpec(name, "double", [], (-1,))
                for name in ("pre_mean", "pre_std", "post_mean", "post_std")
            ]
        ),
    )


def log_cd_model(tracker: Tracker, run_id: str, result: TrainResult, threshold: float) -> str:
    """Log ``result``'s model into ``run_id``; return its ``models:/`` URI."""
    bands = int(result.spec["in_channels"]) // 2
    with tempfile.TemporaryDirectory(prefix="cd-model-") as tmp:
        weights = Path(tmp) / "weights.pt"
        spec = Path(tmp) / "spec.json"
        torch.save(result.model.state_dict(), weights)
        spec.write_text(json.dumps({**result.spec, "threshold": threshold}, indent=2))
        return log_pyfunc(
            tracker,
            run_id,
            PYFUNC_CODE,
            artifacts={"weights": str(weights), "spec": str(spec)},
            pip_requirements=pip_requirements(),
            signature=signature(bands),
        )


@dataclass
class LoadedModel:
    """A registered version's network, ready for `predict_scene`."""

    net: nn.Module
    spec: dict[str, Any]
    name: str
    version: str
    run_id: str
    alias: str

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this."""
        return 2 ** int(self.spec["encoder_depth"])


def load_cd_model(tracker: Tracker, name: str, alias: str) -> LoadedModel:
    """The version of ``name`` under ``alias``; `AliasNotFoundError` when there is none."""
    version = tracker.require_alias(name, alias)
    python_model = load_pyfunc(tracker, f"models:/{name}/{version.version}")
    return LoadedModel(
        net=python_model.net,
        spec=dict(python_model.spec),
        name=name,
        version=str(version.version),
        run_id=str(version.run_id),
        alias=alias,
    )


def load_logged_cd_model(tracker: Tracker, model_uri: str, run_id: str) -> LoadedModel:
    """A model logged in a run but not (yet) registered: the would-be challenger."""
    python_model = load_pyfunc(tracker, model_uri)
    return LoadedModel(
        net=python_model.net,
        spec=dict(python_model.spec),
        name="",
        version="",
        run_id=run_id,
        alias="",
    )
