"""The asset jobs the sensors and the retraining schedule launch, and the tags their runs carry.

A sensor (or schedule) whose target mixes partitions definitions cannot be built: Dagster resolves
a target to one asset job, and one job has one partitions definition. The per-scene CD assets
(``cd_scenes``), the NVS assets (``nvs_scenes``) and the unpartitioned model therefore get a job
each (its partitions follow from its assets), and every run request names its job. The asset keys
come from `mlops_assets.keys` (not from the asset modules), so that loading a sensor does not
import PyTorch.
"""

from __future__ import annotations

import dagster as dg

from mlops_assets import keys

CD_SCENE_KEY = keys.CD_SCENE
CD_TILES_KEY = keys.CD_TILES
CD_CHANGE_MAP_KEY = keys.CD_CHANGE_MAP
CD_MODEL_KEY = keys.CD_MODEL
CD_REGISTERED_MODEL_KEY = keys.CD_REGISTERED_MODEL
NVS_SCENE_KEY = keys.NVS_SCENE
NVS_SPLATS_KEY = keys.NVS_SPLATS
NVS_REGISTERED_SPLATS_KEY = keys.NVS_REGISTERED_SPLATS
NVS_RENDER_KEY = keys.NVS_RENDER

#: Ops whose ``ref`` config pins the scene to the commit a sensor saw.
CD_SCENE_OP = keys.CD_SCENE_OP
NVS_SCENE_OP = keys.NVS_SCENE_OP

#: The commit a run was launched for. A scene asset with no ``ref`` in its config reads this
#: commit (the runs of a backfill carry the backfill's tags, not a per-op run config).
TAG_COMMIT = "lakefs/commit"
TAG_BRANCH = "lakefs/branch"
TAG_REPOSITORY = "lakefs/repository"
TAG_MERGE_SOURCE = "lakefs/merge_source"
TAG_SCENE = "lakefs/scene"
#: On a backfill launched for a batch of scenes: their kind (``cd`` or ``nvs``).
TAG_SCENE_KIND = "lakefs/scene_kind"

#: Metadata of a scene asset's materialisation naming the commit it read.
COMMIT_METADATA_KEY = "lakefs_commit"

#: What a scene's refresh must have materialised, in order, for the scene to count as done at a
#: commit: the scene itself and what is computed from its content alone. (``cd/change_map`` follows
#: the champion model and `mlflow_alias_sensor` keeps it current; the NVS registration and render
#: follow the PSNR gate.)
CD_SCENE_CHAIN = (CD_SCENE_KEY, CD_TILES_KEY)
NVS_SCENE_CHAIN = (NVS_SCENE_KEY, NVS_SPLATS_KEY)

#: What each scene refresh job materialises (and a backfill of a batch of scenes, too).
CD_REFRESH_KEYS = (CD_SCENE_KEY, CD_TILES_KEY, CD_CHANGE_MAP_KEY)
NVS_REFRESH_KEYS = (NVS_SCENE_KEY, NVS_SPLATS_KEY, NVS_REGISTERED_SPLATS_KEY, NVS_RENDER_KEY)

cd_scene_refresh = dg.define_asset_job(
    "cd_scene_refresh",
    selection=dg.AssetSelection.assets(*CD_REFRESH_KEYS),
    description="One CD scene at one commit: cd/scene, cd/tiles and cd/change_map.",
)

nvs_scene_refresh = dg.define_asset_job(
    "nvs_scene_refresh",
    selection=dg.AssetSelection.assets(*NVS_REFRESH_KEYS),
    description="One NVS scene at one commit: nvs/scene, its splats, their registered version "
    "and the render.",
)

cd_retrain = dg.define_asset_job(
    "cd_retrain",
    selection=dg.AssetSelection.assets(CD_MODEL_KEY, CD_REGISTERED_MODEL_KEY),
    description="Train the change-detection model on every labelled scene and register it.",
)

cd_change_map_refresh = dg.define_asset_job(
    "cd_change_map_refresh",
    selection=dg.AssetSelection.assets(CD_CHANGE_MAP_KEY),
    description="One CD scene's change map, with the model version under the alias.",
)
