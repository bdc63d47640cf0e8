"""``nvs/scene``: a posed multi-view capture pinned to a commit, with its raw-scene checks.

A scene with photos but no ``sparse/`` model is posed here with structure-from-motion (pycolmap,
CPU); the recovered model is committed to the outputs branch, and the scene record says where.
"""

import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from mlops_assets import keys
from mlops_assets.assets.common import (
    SceneRefConfig,
    check_result,
    lakefs_links,
    markdown_table,
    metadata,
    record_type,
)
from mlops_assets.core.nvs.recover import SfMSettings, recover_model_with_sfm
from mlops_assets.core.scenes.nvs import (
    FILES_CHECK,
    MODEL_CHECK,
    NVSScene,
    check_nvs_scene,
    read_nvs_scene,
)
from mlops_assets.partitions import nvs_scenes
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.scene_store import SceneStoreResource
from mlops_assets.retries import EXTERNAL_RETRY

KEY = keys.NVS_SCENE


class NVSSceneConfig(SceneRefConfig):
    """Which version of the scene to read, and how to pose photos that come without a model."""

    sfm: bool = Field(
        default=True,
        description="Pose a scene that has photos but no sparse/ model with structure-from-motion.",
    )
    sfm_min_registered: int = Field(
        default=3, ge=2, description="Fewest photos SfM must register for the scene to pass."
    )
    sfm_max_image_size: int = Field(
        default=1600, description="Longest side (px) SIFT sees; 0 or less: full resolution."
    )
    sfm_num_threads: int = Field(
        default=0, description="CPU threads for SfM; 0 or less: the CPUs this run may use."
    )
    sfm_reuse: bool = Field(
        default=True,
        description="Reuse the model an earlier run published for the same photos and settings.",
    )

    def sfm_settings(self) -> SfMSettings:
        """The core's SfM settings."""
        return SfMSettings(
            min_registered=self.sfm_min_registered,
            max_image_size=self.sfm_max_image_size if self.sfm_max_image_size > 0 else None,
            num_threads=self.sfm_num_threads if self.sfm_num_threads > 0 else None,
            reuse=self.sfm_reuse,
            enabled=self.sfm,
        )


def _model_metadata(scene: NVSScene) -> dict[str, Any]:
    """Where the model lives and, for an SfM model, how it was recovered."""
    location, sfm = scene.model_location, scene.sfm
    values: dict[str, Any] = {
        "model_source": None if location is None else location.source,
        "model_commit": None if location is None else location.commit_id,
        "model_uri": scene.model_uri,
    }
    if sfm is not None and location is not None:
        values |= {
            "outputs_commit": location.commit_id,
            "sfm_registered_images": sfm.registered_images,
            "sfm_images": sfm.images,
            "sfm_unregistered": sfm.unregistered,
            "sfm_mean_reprojection_error_px": sfm.mean_reprojection_error_px,
            "sfm_seconds": sfm.seconds,
            "sfm_reused": sfm.reused,
        }
    return values


def _model_table(scene: NVSScene) -> dg.MetadataValue[Any] | str:
    """The model's format, cameras and sizes as a one-row table."""
    model = scene.model
    if model is None:
        return "no readable model"
    header = ["format", "cameras", "registered images", "points", "observations", "reproj. px"]
    row = [
        model.format,
        ", ".join(model.camera_models),
        model.registered_images,
        model.points,
        model.observations,
        model.mean_reprojection_error_px,
    ]
    return markdown_table(header, [row])


@dg.asset(
    key=KEY,
    partitions_def=nvs_scenes,
    group_name=keys.NVS_GROUP,
    kinds={"lakefs", "colmap"},
    io_manager_key="json_io_manager",
    dagster_type=record_type(NVSScene),
    retry_policy=EXTERNAL_RETRY,
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
            description="sparse/0 holds a COLMAP model pycolmap reads (or, with no sparse/, "
            "structure-from-motion registered enough photos), with supported cameras, at least "
            "one registered image, and every registered image present under images/.",
        ),
    ],
    description="Photos and a COLMAP sparse model of one capture, pinned to a lakeFS commit; "
    "photos without a model are posed with SfM and the model committed to the outputs branch.",
)
def nvs_scene(
    context: dg.AssetExecutionContext,
    config: NVSSceneConfig,
    scene_store: SceneStoreResource,
    lineage: LineageResource,
):  # Dagster derives the outputs (value + checks) from the decorator
    """Read one capture at a commit and describe it; the checks say whether it is usable."""
    store = scene_store.get_store()
    ref = config.resolve(context, scene_store.branch)
    scene = read_nvs_scene(store, ref, context.partition_key, scene_store.check_limits())
    if scene.needs_sfm:
        context.log.info(f"nvs/{scene.scene_id}: no COLMAP model, posing the photos with SfM")
        with tempfile.TemporaryDirectory(prefix="nvs-sfm-") as tmp:
            scene = recover_model_with_sfm(
                store,
                scene,
                Path(tmp),
                outputs_branch=scene_store.outputs_branch,
                base_branch=scene_store.branch,
                settings=config.sfm_settings(),
                metadata={
                    "dagster_run_id": context.run.run_id,
                    "git_sha": lineage.code_version(),
                    **lakefs_links({"Dagster": lineage.run_url(context.run.run_id)}),
                },
            )
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
                "images": len(scene.images),
                "image_bytes": sum(i.size_bytes for i in scene.images),
                "model_files": [
                    {"path": o.path, "checksum": o.checksum, "size_bytes": o.size_bytes}
                    for o in scene.model_files
                ],
                **_model_metadata(scene),
                "model": _model_table(scene),
                "missing_images": scene.missing_images,
                "problems": scene.problems,
            }
        ),
        check_results=[check_result(o) for o in check_nvs_scene(scene)],
    )
