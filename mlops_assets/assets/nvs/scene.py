"""``nvs/scene``: a posed multi-view capture pinned to a commit, with its raw-scene checks."""

import dagster as dg

from mlops_assets.assets.common import SceneRefConfig, check_result, markdown_table, metadata
from mlops_assets.core.scenes.nvs import FILES_CHECK, MODEL_CHECK, check_nvs_scene, read_nvs_scene
from mlops_assets.partitions import nvs_scenes
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.scene_store import SceneStoreResource

KEY = dg.AssetKey(["nvs", "scene"])


@dg.asset(
    key=KEY,
    partitions_def=nvs_scenes,
    group_name="novel_view_synthesis",
    kinds={"lakefs", "colmap"},
    io_manager_key="json_io_manager",
    check_specs=[
        dg.AssetCheckSpec(
            FILES_CHECK,
            asset=KEY,
            blocking=True,
            description="The scene has photos under images/ and every photo decodes.",
        ),
        dg.AssetCheckSpec(
            MODEL_CHECK,
            asset=KEY,
            blocking=True,
            description="sparse/0 holds a COLMAP model pycolmap reads, with supported cameras, "
            "at least one registered image, and every registered image present under images/.",
        ),
    ],
    description="Photos and a COLMAP sparse model of one capture, pinned to a lakeFS commit.",
)
def nvs_scene(
    context: dg.AssetExecutionContext,
    config: SceneRefConfig,
    scene_store: SceneStoreResource,
    lineage: LineageResource,
):  # Dagster derives the outputs (value + checks) from the decorator
    """Read one capture at a commit and describe it; the checks say whether it is usable."""
    store = scene_store.get_store()
    scene = read_nvs_scene(store, config.ref or scene_store.branch, context.partition_key)
    model = scene.model
    return dg.MaterializeResult(
        value=scene.to_dict(),
        data_version=dg.DataVersion(scene.content_hash),
        metadata=metadata(
            {
                "lakefs_repository": scene.repository,
                "lakefs_ref": scene.ref,
                "lakefs_commit": scene.commit_id,
                "scene_uri": scene.uri(scene.paths.prefix),
                "store": scene_store.kind,
                "git_sha": lineage.code_version(),
                "images": len(scene.images),
                "image_bytes": sum(i.size_bytes for i in scene.images),
                "model_files": [
                    {"path": o.path, "checksum": o.checksum, "size_bytes": o.size_bytes}
                    for o in scene.model_files
                ],
                "model": markdown_table(
                    [
                        "format",
                        "cameras",
                        "registered images",
                        "points",
                        "observations",
                        "reproj. px",
                    ],
                    [
                        [
                            model.format,
                            ", ".join(model.camera_models),
                            model.registered_images,
                            model.points,
                            model.observations,
                            model.mean_reprojection_error_px,
                        ]
                    ],
                )
                if model
                else "no readable model",
                "missing_images": scene.missing_images,
                "problems": scene.problems,
            }
        ),
        check_results=[check_result(o) for o in check_nvs_scene(scene)],
    )
