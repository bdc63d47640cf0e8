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
CD_EVALUATION = dg.AssetKey(["cd", "evaluation"])
CD_REGISTERED_MODEL = dg.AssetKey(["cd", "registered_model"])
CD_CHANGE_MAP = dg.AssetKey(["cd", "change_map"])
CD_SWEEP = dg.AssetKey(["cd", "sweep"])
NVS_SCENE = dg.AssetKey(["nvs", "scene"])
NVS_SPLATS = dg.AssetKey(["nvs", "splats"])
NVS_REGISTERED_SPLATS = dg.AssetKey(["nvs", "registered_splats"])
NVS_RENDER = dg.AssetKey(["nvs", "render"])

#: The op of an asset: its key's parts joined by a double underscore (``cd__scene``).
CD_SCENE_OP = CD_SCENE.to_python_identifier()
NVS_SCENE_OP = NVS_SCENE.to_python_identifier()
CD_MODEL_OP = CD_MODEL.to_python_identifier()
CD_EVALUATION_OP = CD_EVALUATION.to_python_identifier()
CD_REGISTERED_MODEL_OP = CD_REGISTERED_MODEL.to_python_identifier()
CD_CHANGE_MAP_OP = CD_CHANGE_MAP.to_python_identifier()
CD_SWEEP_OP = CD_SWEEP.to_python_identifier()

#: Metadata of a scene asset's materialisation naming the commit it read (the commit sensor reads
#: it to tell which scenes are done at a commit).
COMMIT_METADATA_KEY = "lakefs_commit"

#: Run tags. The commit a run was launched for: a scene asset with no ``ref`` in its config reads
#: this commit (the runs of a backfill carry the backfill's tags, not a per-op run config).
TAG_COMMIT = "lakefs/commit"
TAG_BRANCH = "lakefs/branch"
TAG_REPOSITORY = "lakefs/repository"
TAG_MERGE_SOURCE = "lakefs/merge_source"
TAG_SCENE = "lakefs/scene"
#: On a backfill launched for a batch of scenes: their kind (``cd`` or ``nvs``).
TAG_SCENE_KIND = "lakefs/scene_kind"
#: What launched a run: ``cli``, ``ingest``, ``schedule``, ``quality_check``.
TAG_TRIGGER = "mlops/trigger"

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
