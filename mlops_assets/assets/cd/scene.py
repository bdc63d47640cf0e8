"""``cd/scene``: a change-detection scene pinned to a commit, with its raw-scene checks."""

import dagster as dg

from mlops_assets import keys
from mlops_assets.assets.common import (
    SceneRefConfig,
    check_result,
    markdown_table,
    metadata,
    record_type,
)
from mlops_assets.core.scenes.cd import (
    FILES_CHECK,
    OVERLAP_CHECK,
    CDScene,
    check_cd_scene,
    read_cd_scene,
)
from mlops_assets.partitions import cd_scenes
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.scene_store import SceneStoreResource
from mlops_assets.retries import EXTERNAL_RETRY

KEY = keys.CD_SCENE


@dg.asset(
    key=KEY,
    partitions_def=cd_scenes,
    group_name=keys.CD_GROUP,
    kinds={"lakefs", "geotiff"},
    io_manager_key="json_io_manager",
    dagster_type=record_type(CDScene),
    retry_policy=EXTERNAL_RETRY,
    check_specs=[
        dg.AssetCheckSpec(
            FILES_CHECK,
            asset=KEY,
            blocking=True,
            description="pre.tif and post.tif (and label.tif if present) exist, decode, and are "
            "georeferenced.",
        ),
        dg.AssetCheckSpec(
            OVERLAP_CHECK,
            asset=KEY,
            blocking=True,
            description="post (and label) footprints overlap pre's; band counts match.",
        ),
    ],
    description="A bi-temporal scene (pre/post GeoTIFF, optional label) pinned to a lakeFS commit.",
)
def cd_scene(
    context: dg.AssetExecutionContext,
    config: SceneRefConfig,
    scene_store: SceneStoreResource,
    lineage: LineageResource,
):  # Dagster derives the outputs (value + checks) from the decorator
    """Read one scene at a commit and describe it; the checks say whether it is usable."""
    store = scene_store.get_store()
    ref = config.resolve(context, scene_store.branch)
    scene = read_cd_scene(store, ref, context.partition_key, scene_store.check_limits())
    rows = [
        [r.path, r.crs, f"{r.width}x{r.height}", r.count, r.dtype, r.checksum[:12], r.size_bytes]
        for r in scene.rasters
    ]
    return dg.MaterializeResult(
        value=scene,
        data_version=dg.DataVersion(scene.content_hash),
        metadata=metadata(
            {
                "lakefs_repository": scene.repository,
                "lakefs_ref": scene.ref,
                keys.COMMIT_METADATA_KEY: scene.commit_id,
                "scene_uri": scene.uri(scene.paths.prefix),
                "store": scene_store.kind,
                "git_sha": lineage.code_version(),
                "files": markdown_table(
                    ["path", "crs", "size", "bands", "dtype", "checksum", "bytes"], rows
                ),
                **{
                    role: {**info.to_dict(), "uri": scene.uri(info.path)}
                    for role, info in (
                        ("pre", scene.pre),
                        ("post", scene.post),
                        ("label", scene.label),
                    )
                    if info is not None
                },
                "has_label": scene.label is not None,
                "grid": scene.grid,
                "problems": scene.problems,
            }
        ),
        check_results=[check_result(o) for o in check_cd_scene(scene)],
    )
