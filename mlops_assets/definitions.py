"""The one assembly point: `build_defs` turns `Settings` into the code location's Definitions.

Dagster calls `defs` (a `dg.definitions` function) when it loads the code location; that is when
the environment is read, never at import. The embedded default and the production stack differ only
in the resources bound here, chosen by configuration.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from mlops_assets.assets.cd.scene import cd_scene
from mlops_assets.assets.nvs.scene import nvs_scene
from mlops_assets.resources.io_managers import JsonIOManager
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.scene_store import (
    EmbeddedSceneStore,
    LakeFSSceneStore,
    SceneStoreResource,
)
from mlops_assets.settings import Settings


def build_scene_store(settings: Settings) -> SceneStoreResource:
    """The scene-store resource for these settings (lakeFS credentials stay `EnvVar`s)."""
    common: dict[str, Any] = {
        "repository": settings.repository,
        "branch": settings.main_branch,
        "outputs_branch": settings.outputs_branch,
    }
    if settings.store_kind == "embedded":
        return EmbeddedSceneStore(root=str(settings.embedded_store_root), **common)
    return LakeFSSceneStore(
        endpoint=dg.EnvVar("LAKEFS_ENDPOINT"),
        access_key_id=dg.EnvVar("LAKEFS_ACCESS_KEY_ID"),
        secret_access_key=dg.EnvVar("LAKEFS_SECRET_ACCESS_KEY"),
        storage_namespace=settings.lakefs_storage_namespace,
        raster_access=settings.lakefs_raster_access,
        cache_dir=str(settings.cache_dir),
        **common,
    )


def build_resources(settings: Settings) -> dict[str, Any]:
    """Every resource the assets use."""
    return {
        "scene_store": build_scene_store(settings),
        "json_io_manager": JsonIOManager(base_dir=str(settings.assets_dir)),
        "lineage": LineageResource(git_sha=settings.git_sha, dagster_url=settings.dagster_url),
    }


def build_defs(settings: Settings) -> dg.Definitions:
    """The code location: assets, checks and resources for ``settings``."""
    return dg.Definitions(
        assets=[cd_scene, nvs_scene],
        resources=build_resources(settings),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Entry point for Dagster: read the environment now, at load time."""
    return build_defs(Settings.from_env())
