"""The asset jobs the sensors and the retraining schedule launch.

A sensor (or schedule) whose target mixes partitions definitions cannot be built: Dagster resolves
a target to one asset job, and one job has one partitions definition. The per-scene CD assets
(``cd_scenes``), the NVS assets (``nvs_scenes``) and the unpartitioned model therefore get a job
each (its partitions follow from its assets), and every run request names its job. The asset keys
are spelled out here rather than imported from the asset modules, so that loading a sensor does not
import PyTorch; a test checks them against the assets.
"""

from __future__ import annotations

import dagster as dg

CD_SCENE_KEY = dg.AssetKey(["cd", "scene"])
CD_TILES_KEY = dg.AssetKey(["cd", "tiles"])
CD_CHANGE_MAP_KEY = dg.AssetKey(["cd", "change_map"])
CD_MODEL_KEY = dg.AssetKey(["cd", "model"])
CD_REGISTERED_MODEL_KEY = dg.AssetKey(["cd", "registered_model"])
NVS_SCENE_KEY = dg.AssetKey(["nvs", "scene"])
NVS_SPLATS_KEY = dg.AssetKey(["nvs", "splats"])
NVS_REGISTERED_SPLATS_KEY = dg.AssetKey(["nvs", "registered_splats"])
NVS_RENDER_KEY = dg.AssetKey(["nvs", "render"])

#: Ops whose ``ref`` config pins the scene to the commit a sensor saw.
CD_SCENE_OP = "cd__scene"
NVS_SCENE_OP = "nvs__scene"

cd_scene_refresh = dg.define_asset_job(
    "cd_scene_refresh",
    selection=dg.AssetSelection.assets(CD_SCENE_KEY, CD_TILES_KEY, CD_CHANGE_MAP_KEY),
    description="One CD scene at one commit: cd/scene, cd/tiles and cd/change_map.",
)

nvs_scene_refresh = dg.define_asset_job(
    "nvs_scene_refresh",
    selection=dg.AssetSelection.assets(
        NVS_SCENE_KEY, NVS_SPLATS_KEY, NVS_REGISTERED_SPLATS_KEY, NVS_RENDER_KEY
    ),
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
