"""Gaussian splats in MLflow: logged as a pyfunc around the .ply, loaded back by alias.

All scenes are versions of one registered model (default ``gaussian-splats``), each version tagged
with its scene. A champion of one scene says nothing about another, so the aliases are scoped by
scene: ``champion-<scene_id>`` and ``challenger-<scene_id>`` (MLflow aliases allow letters, digits,
``_`` and ``-``, which is exactly what scene ids are made of).
"""

from __future__ import annotations

import importlib.metadata
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec
from numpy.typing import NDArray

import mlops_assets
from mlops_assets.core.nvs.ply import write_inria_ply
from mlops_assets.core.tracking import Tracker, load_pyfunc, log_pyfunc

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
PLY_NAME = "splats.ply"
_REQUIREMENTS = (
    "torch",
    "gsplat",
    "numpy",
    "mlflow",
    "plyfile",
    "torchmetrics",
    "pycolmap",
    "pillow",
)


def scene_alias(alias: str, scene_id: str) -> str:
    """The registry alias ``alias`` (champion, challenger) of one scene."""
    return f"{alias}-{scene_id}"


def pip_requirements() -> list[str]:
    """Exact pins of what the pyfunc imports, as installed here."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in _REQUIREMENTS]


def signature() -> ModelSignature:
    """Cameras in (view matrices and intrinsics), RGB images out; image size as params."""
    return ModelSignature(
        inputs=Schema(
            [
                TensorSpec(np.dtype(np.float32), (-1, 4, 4), "viewmats"),
                TensorSpec(np.dtype(np.float32), (-1, 3, 3), "Ks"),
            ]
        ),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1, 3), "rgb")]),
        params=ParamSchema([ParamSpec("width", "long", 256), ParamSpec("height", "long", 256)]),
    )


def log_splat_model(
    tracker: Tracker,
    run_id: str,
    splats: Mapping[str, NDArray[np.float32]],
    spec: Mapping[str, Any],
) -> str:
    """Log ``splats`` (gsplat's keys) and ``spec`` into ``run_id``; return the ``models:/`` URI.

    The .ply is also logged on its own under ``splats/`` in the run's artifacts, for viewers.
    """
    with tempfile.TemporaryDirectory(prefix="nvs-model-") as tmp:
        ply = write_inria_ply(Path(tmp) / PLY_NAME, splats)
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(dict(spec), indent=2, sort_keys=True))
        tracker.log_artifact(run_id, ply, "splats")
        return log_pyfunc(
            tracker,
            run_id,
            PYFUNC_CODE,
            artifacts={"ply": str(ply), "spec": str(spec_path)},
            pip_requirements=pip_requirements(),
            signature=signature(),
            code_paths=[str(Path(mlops_assets.__file__).parent)],
        )


@dataclass
class LoadedSplats:
    """A registered version's splats (CPU tensors, gsplat's layout) and where they came from."""

    splats: dict[str, torch.Tensor]
    spec: dict[str, Any]
    name: str
    version: str
    run_id: str
    alias: str
    tags: dict[str, str]

    @property
    def sh_degree(self) -> int:
        """The SH degree the splats were trained to."""
        return int(self.spec["sh_degree"])

    @property
    def background(self) -> tuple[float, float, float]:
        """The background colour they were trained against."""
        r, g, b = (float(c) for c in self.spec["background"])
        return r, g, b


def load_splat_model(tracker: Tracker, name: str, alias: str, producer: str) -> LoadedSplats:
    """The version of ``name`` under ``alias``; `AliasNotFoundError` when there is none."""
    version = tracker.require_alias(name, alias, producer)
    python_model = load_pyfunc(tracker, f"models:/{name}/{version.version}")
    return LoadedSplats(
        splats=dict(python_model.splats),
        spec=dict(python_model.spec),
        name=name,
        version=str(version.version),
        run_id=str(version.run_id),
        alias=alias,
        tags=dict(version.tags),
    )
