"""Asset keys, group names, and the strings one module writes and another parses.

Built and parsed here only: the asset modules, the jobs and the sensors import them from this
module, which imports nothing heavier than Dagster (a sensor that loads it does not load PyTorch).
"""

from __future__ import annotations

import re

import dagster as dg

CD_GROUP = "change_detection"
NVS_GROUP = "novel_view_synthesis"

CD_SCENE = dg.AssetKey(["cd", "scene"])
CD_TILES = dg.AssetKey(["cd", "tiles"])
CD_MODEL = dg.AssetKey(["cd", "model"])
CD_REGISTERED_MODEL = dg.AssetKey(["cd", "registered_model"])
CD_CHANGE_MAP = dg.AssetKey(["cd", "change_map"])
CD_SWEEP = dg.AssetKey(["cd", "sweep"])
NVS_SCENE = dg.AssetKey(["nvs", "scene"])
NVS_SPLATS = dg.AssetKey(["nvs", "splats"])
NVS_REGISTERED_SPLATS = dg.AssetKey(["nvs", "registered_splats"])
NVS_RENDER = dg.AssetKey(["nvs", "render"])

#: The op of an asset: its key's parts joined by a double underscore (``cd__scene``).
CD_SCENE_OP = "cd__scene"
NVS_SCENE_OP = "nvs__scene"
CD_CHANGE_MAP_OP = "cd__change_map"
CD_SWEEP_OP = "cd__sweep"

#: Where Dagster keeps a materialisation's data version among its tags.
DATA_VERSION_TAG = "dagster/data_version"


def model_output_version(source_commit: str, model_name: str, model_version: str) -> str:
    """The data version of an output a registered model made from a scene commit.

    ``cd/change_map`` and ``nvs/render`` write it; `parse_model_version` reads the model
    version back (`mlops_assets.sensors.mlflow_alias` compares it with the alias's version).
    """
    return f"{source_commit[:16]}-{model_name}-v{model_version}"


def parse_model_version(data_version: str | None, model_name: str) -> str | None:
    """The model version in a `model_output_version` string of ``model_name``, or None."""
    if not data_version:
        return None
    match = re.fullmatch(rf".*-{re.escape(model_name)}-v(\d+)", data_version)
    return match.group(1) if match else None
