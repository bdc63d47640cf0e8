"""Scene partitions: one partition per scene id, added as scenes appear in the store."""

from __future__ import annotations

import dagster as dg

from mlops_assets.core.scenes.layout import SceneKind

cd_scenes = dg.DynamicPartitionsDefinition(name="cd_scenes")
nvs_scenes = dg.DynamicPartitionsDefinition(name="nvs_scenes")

SCENE_PARTITIONS: dict[SceneKind, dg.DynamicPartitionsDefinition] = {
    SceneKind.CD: cd_scenes,
    SceneKind.NVS: nvs_scenes,
}


def sync_partitions(
    scene_ids: dict[SceneKind, list[str]], instance: dg.DagsterInstance | None = None
) -> dict[SceneKind, list[str]]:
    """Add a partition for every scene id not yet known; return the ids added per kind."""
    instance = instance or dg.DagsterInstance.get()
    added: dict[SceneKind, list[str]] = {}
    for kind, ids in scene_ids.items():
        name = SCENE_PARTITIONS[kind].name
        assert name is not None
        known = set(instance.get_dynamic_partitions(name))
        new = [scene_id for scene_id in ids if scene_id not in known]
        if new:
            instance.add_dynamic_partitions(name, new)
        added[kind] = new
    return added
