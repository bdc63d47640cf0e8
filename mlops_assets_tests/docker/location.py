"""The code location of the PostgreSQL-instance tests: the real CD assets and resources.

`mlops_assets.definitions` would also start every sensor in the daemon; this location holds only
``cd/scene``, ``cd/tiles`` and ``cd/model`` and a job for a scene's two (tiny preset), with the
resources `build_resources` binds from the environment, as the production code location does.
"""

from __future__ import annotations

import dagster as dg

from mlops_assets.assets.cd.model import cd_model
from mlops_assets.assets.cd.scene import cd_scene
from mlops_assets.assets.cd.tiles import cd_tiles
from mlops_assets.definitions import build_resources
from mlops_assets.settings import Settings

cd_scene_tiles = dg.define_asset_job(
    "cd_scene_tiles",
    selection=[cd_scene, cd_tiles],
    config={"ops": {"cd__tiles": {"config": {"preset": "tiny"}}}},
)


@dg.definitions
def defs() -> dg.Definitions:
    """Read the environment when the daemon or the run worker loads the location."""
    return dg.Definitions(
        assets=[cd_scene, cd_tiles, cd_model],
        jobs=[cd_scene_tiles],
        resources=build_resources(Settings.from_env()),
    )
