"""The checks a local scene folder passes before it is uploaded, given to the ingest.

`mlops_assets.core.scenes.ingest` uploads whatever folder it is handed and asks a `FolderCheck`
whether the folder is usable; this module supplies the one for each scene kind, so the ingest
never imports the raster and photo validators (`validate_local_cd`, `validate_local_nvs`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from mlops_assets.core.scenes.cd import validate_local_cd
from mlops_assets.core.scenes.checks import CheckLimits
from mlops_assets.core.scenes.ingest import FolderCheck, UploadPlan, plan_upload
from mlops_assets.core.scenes.layout import SceneError, SceneKind
from mlops_assets.core.scenes.nvs import validate_local_nvs


def folder_check(
    kind: SceneKind, limits: CheckLimits | None = None, pixel_grid: bool = False
) -> FolderCheck:
    """The folder check of ``kind`` within ``limits``; ``pixel_grid``: a CD pixel-grid scene."""
    if kind is SceneKind.CD:
        return partial(validate_local_cd, limits=limits, pixel_grid=pixel_grid)
    if pixel_grid:
        raise SceneError(f"a pixel grid applies to cd scenes, not {kind.value}")
    return partial(validate_local_nvs, limits=limits)


def plan_checked(
    kind: SceneKind,
    src: Path,
    scene_id: str,
    limits: CheckLimits | None = None,
    *,
    pixel_grid: bool = False,
    follow_symlinks: bool = False,
) -> UploadPlan:
    """`plan_upload` of ``src`` judged by the folder check of ``kind``."""
    check = folder_check(kind, limits, pixel_grid)
    return plan_upload(kind, src, scene_id, check, follow_symlinks=follow_symlinks)
