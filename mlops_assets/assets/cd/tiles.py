"""``cd/tiles``: a scene aligned onto its pre image's grid, cut into normalised windows."""

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
from PIL import Image

from mlops_assets import keys
from mlops_assets.assets.cd.config import TilesConfig
from mlops_assets.assets.common import image_md, markdown_table, metadata, record_type
from mlops_assets.core.cd.raster import AlignedPair, AlignmentError, open_aligned
from mlops_assets.core.cd.records import TilesRecord
from mlops_assets.core.cd.tiles import (
    GRID_PIXEL,
    TileIndex,
    judge_alignment,
    tile_key,
    tile_scene,
)
from mlops_assets.core.scenes.cd import CDScene
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.partitions import cd_scenes
from mlops_assets.resources.failures import failure_on
from mlops_assets.resources.outputs import OutputStoreResource
from mlops_assets.resources.scene_store import SceneStoreResource
from mlops_assets.retries import EXTERNAL_RETRY

KEY = keys.CD_TILES
NONEMPTY_CHECK = "tiles_nonempty"
BALANCE_CHECK = "label_balance"
RESIDUAL_CHECK = "alignment_residual"


def open_scene(
    scene: CDScene, store: VersionedStore, resampling: str
) -> contextlib.AbstractContextManager[AlignedPair]:
    """The ``cd/scene`` rasters at its commit, post on pre's grid (errors name the files)."""
    commit, paths = scene.commit_id, scene.paths
    prefix = f"{scene.scene_id}/"
    return open_aligned(
        store.raster_location(commit, paths.pre),
        store.raster_location(commit, paths.post),
        store.raster_location(commit, paths.label) if scene.label else None,
        resampling=resampling,
        names=(prefix + "pre.tif", prefix + "post.tif", prefix + "label.tif"),
        pixel_grid=scene.grid == GRID_PIXEL,
    )


def _tile(
    scene: CDScene, store_resource: SceneStoreResource, config: TilesConfig, work: Path
) -> TileIndex:
    store = store_resource.get_store()
    commit, paths = scene.commit_id, scene.paths
    sources = {"pre": store.uri(commit, paths.pre), "post": store.uri(commit, paths.post)}
    if scene.label:
        sources["label"] = store.uri(commit, paths.label)
    core = config.to_core()
    with open_scene(scene, store, core.resampling) as pair:
        return tile_scene(pair, work, core, scene.scene_id, scene.repository, commit, sources)


def _tile_or_reuse(
    context: dg.AssetExecutionContext,
    scene: CDScene,
    key: str,
    config: TilesConfig,
    scene_store: SceneStoreResource,
    output_store: OutputStoreResource,
) -> tuple[TileIndex, Image.Image, bool]:
    """The scene's tile index and preview: the published set under ``key``, or a new one.

    A new set is published only when it holds a tile (later assets never find an empty one).
    Returns ``(index, preview, reused)``.
    """
    store = output_store.get_output_store()
    if store.is_published(key):
        directory = output_store.fetch(key)
        context.log.info(f"Tiles for this commit and config already published at {store.uri(key)}")
        return TileIndex.load(directory), Image.open(directory / "preview.png"), True
    Path(output_store.cache_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tiles-", dir=output_store.cache_dir) as tmp:
        label = f"cd/{scene.scene_id} at {scene.commit_id[:12]}: "
        with failure_on(AlignmentError, label=label, allow_retries=False):
            index = _tile(scene, scene_store, config, Path(tmp))
        preview = Image.open(Path(tmp) / "preview.png")
        preview.load()
        if index.tiles:
            store.publish(Path(tmp), key)
    return index, preview, False


def _checks(index: TileIndex, config: TilesConfig) -> list[dg.AssetCheckResult]:
    count = len(index.tiles)
    dropped = ", ".join(f"{n} {why}" for why, n in sorted(index.dropped.items())) or "none"
    fraction = index.label_fraction
    if fraction is None:
        balance_ok, balance = True, "no label: nothing to balance"
    else:
        balance_ok = config.min_label_fraction <= fraction <= config.max_label_fraction
        balance = (
            f"{100 * fraction:.2f}% of labelled pixels changed; allowed "
            f"{100 * config.min_label_fraction:.2f}%..{100 * config.max_label_fraction:.2f}%"
        )
    verdict = judge_alignment(index, config.max_residual_px, config.min_alignment_windows)
    return [
        dg.AssetCheckResult(
            check_name=NONEMPTY_CHECK,
            passed=count > 0,
            severity=dg.AssetCheckSeverity.ERROR,
            description=(
                f"{count} of {index.windows_total} windows kept; dropped: {dropped}"
                if count
                else f"{index.scene_id}: all {index.windows_total} windows dropped "
                f"({dropped}); nothing was published"
            ),
            metadata={"tile_count": count, "windows_total": index.windows_total},
        ),
        dg.AssetCheckResult(
            check_name=BALANCE_CHECK,
            passed=balance_ok,
            severity=dg.AssetCheckSeverity.WARN,
            description=balance,
            metadata=metadata({"label_fraction": fraction}),
        ),
        dg.AssetCheckResult(
            check_name=RESIDUAL_CHECK,
            passed=verdict.status == "pass",
            # Inconclusive is a warning: it never blocks what follows.
            severity=dg.AssetCheckSeverity.WARN
            if verdict.status == "inconclusive"
            else dg.AssetCheckSeverity.ERROR,
            description=verdict.description,
            metadata=metadata(
                {
                    "status": verdict.status,
                    "residual_px": index.alignment_residual_px,
                    "dy_px": index.alignment_dy,
                    "dx_px": index.alignment_dx,
                    "confident_windows": index.alignment_samples,
                    "measured_windows": len(index.alignment_windows),
                    "min_windows": config.min_alignment_windows,
                    "max_residual_px": config.max_residual_px,
                }
            ),
        ),
    ]


def _stats_table(index: TileIndex) -> dg.MetadataValue[Any]:
    rows = [
        [
            band + 1,
            f"{index.pre_stats.mean[band]:.1f}",
            f"{index.pre_stats.std[band]:.1f}",
            f"{index.post_stats.mean[band]:.1f}",
            f"{index.post_stats.std[band]:.1f}",
        ]
        for band in range(index.bands)
    ]
    return markdown_table(["band", "pre mean", "pre std", "post mean", "post std"], rows)


@dg.asset(
    key=KEY,
    ins={"scene": dg.AssetIn(key=keys.CD_SCENE)},
    partitions_def=cd_scenes,
    group_name=keys.CD_GROUP,
    kinds={"numpy", "rasterio"},
    io_manager_key="json_io_manager",
    dagster_type=record_type(TilesRecord),
    retry_policy=EXTERNAL_RETRY,
    check_specs=[
        dg.AssetCheckSpec(
            NONEMPTY_CHECK, asset=KEY, blocking=True, description="At least one window is kept."
        ),
        dg.AssetCheckSpec(
            BALANCE_CHECK,
            asset=KEY,
            description="The share of changed labelled pixels is within the configured range.",
        ),
        dg.AssetCheckSpec(
            RESIDUAL_CHECK,
            asset=KEY,
            blocking=True,
            description="The median shift of post against pre, over the windows with a distinct "
            "phase-correlation peak, is under the limit; too few such windows is inconclusive "
            "(a warning, never blocking).",
        ),
    ],
    description=(
        "The scene's post image warped onto pre's grid and cut into overlapping windows, "
        "normalised per band; published under a key of the scene commit and the tiling config."
    ),
)
def cd_tiles(
    context: dg.AssetExecutionContext,
    config: TilesConfig,
    scene: CDScene,
    scene_store: SceneStoreResource,
    output_store: OutputStoreResource,
):  # Dagster derives the outputs (value + checks) from the decorator
    """Tile one scene (or reuse the identical published tile set) and describe it."""
    key = tile_key(scene.scene_id, scene.commit_id, config.to_core())
    index, preview, reused = _tile_or_reuse(context, scene, key, config, scene_store, output_store)
    uri = output_store.get_output_store().uri(key)
    tiles = TilesRecord(
        scene_id=index.scene_id,
        repository=index.repository,
        commit_id=index.commit_id,
        key=key,
        uri=uri,
        published=bool(index.tiles),
        tile_count=len(index.tiles),
        labelled_tiles=sum(1 for t in index.tiles if t.labelled_pixels),
        has_label=index.has_label,
        config_hash=index.config_hash,
        sources=index.sources,
    )
    return dg.MaterializeResult(
        value=tiles,
        data_version=dg.DataVersion(tiles.data_version),
        metadata=metadata(
            {
                "tile_count": tiles.tile_count,
                "windows_total": index.windows_total,
                "dropped": index.dropped,
                "label_fraction": index.label_fraction,
                "labelled_tiles": tiles.labelled_tiles,
                "alignment_residual_px": index.alignment_residual_px,
                "alignment_confident_windows": index.alignment_samples,
                "padded_tiles": index.padded_tiles,
                "constant_bands": index.constant_bands,
                "tiles_uri": dg.MetadataValue.url(uri) if tiles.published else "not published",
                "output_store": output_store.kind,
                "reused": reused,
                "lakefs_commit": index.commit_id,
                "config": index.config,
                "config_hash": index.config_hash,
                "grid": f"{index.width}x{index.height} "
                + ("pixel grid (no CRS)" if index.grid == GRID_PIXEL else index.crs),
                "band_stats": _stats_table(index),
                "preview": image_md(preview, "pre | post | label"),
            }
        ),
        check_results=_checks(index, config),
    )
