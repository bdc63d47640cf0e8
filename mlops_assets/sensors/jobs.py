"""The asset jobs the sensors and the retraining schedule launch, and the tags their runs carry.

A sensor (or schedule) whose target mixes partitions definitions cannot be built: Dagster resolves
a target to one asset job, and one job has one partitions definition. The per-scene CD assets
(``cd_scenes``), the NVS assets (``nvs_scenes``) and the unpartitioned model therefore get a job
each (its partitions follow from its assets), and every run request names its job. The asset keys,
ops and tags come from `mlops_assets.keys` (not from the asset modules), so that loading a sensor
does not import PyTorch.
"""

from __future__ import annotations

import dagster as dg

from mlops_assets import keys

#: What a scene's refresh must have materialised, in order, for the scene to count as done at a
#: commit: the scene itself and what is computed from its content alone. (``cd/change_map`` follows
#: the champion model and `mlflow_alias_sensor` keeps it current; the NVS registration and render
#: follow the PSNR gate.)
CD_SCENE_CHAIN = (keys.CD_SCENE, keys.CD_TILES)
NVS_SCENE_CHAIN = (keys.NVS_SCENE, keys.NVS_SPLATS)

#: What each scene refresh job materialises (and a backfill of a batch of scenes, too).
CD_REFRESH_KEYS = (keys.CD_SCENE, keys.CD_TILES, keys.CD_CHANGE_MAP)
NVS_REFRESH_KEYS = (keys.NVS_SCENE, keys.NVS_SPLATS, keys.NVS_REGISTERED_SPLATS, keys.NVS_RENDER)

#: What the retraining job materialises.
CD_RETRAIN_KEYS = (keys.CD_MODEL, keys.CD_EVALUATION, keys.CD_REGISTERED_MODEL)

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
    selection=dg.AssetSelection.assets(*CD_RETRAIN_KEYS),
    description="Train the change-detection model on every labelled scene (evaluation scenes "
    "excluded), compare it with the champion on the evaluation scenes, and register it.",
)

cd_change_map_refresh = dg.define_asset_job(
    "cd_change_map_refresh",
    selection=dg.AssetSelection.assets(keys.CD_CHANGE_MAP),
    description="One CD scene's change map, with the model version under the alias.",
)
