"""The scene store as a Dagster resource: one interface, an embedded and a lakeFS implementation.

Assets declare ``scene_store: SceneStoreResource`` and never know which one they got;
`scene_store_resource` binds `EmbeddedSceneStore` by default and `LakeFSSceneStore` when
``LAKEFS_ENDPOINT`` is set (its credentials are `EnvVar` fields, resolved at run time and never
logged). Both open their store through `mlops_assets.core.store.factory.open_store`, as the CLI
does.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from mlops_assets.core.scenes.checks import CheckLimits
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.factory import StoreSpec, open_store

if TYPE_CHECKING:
    from mlops_assets.settings import Settings


# Dagster resources subclass ConfigurableResource unparameterised, as its API intends.
class SceneStoreResource(dg.ConfigurableResource, abc.ABC):  # pyright: ignore[reportMissingTypeArgument]
    """Access to the versioned scene repository."""

    repository: str = Field(default="scenes", description="Repository holding the scenes.")
    branch: str = Field(default="main", description="Branch the pipeline reads scenes from.")
    outputs_branch: str = Field(
        default="outputs", description="Branch the pipeline writes its outputs to."
    )
    max_pixels: int | None = Field(
        default=None,
        description="Pixel budget of the raw-scene checks (cd/scene, nvs/scene, ingest_scene): "
        "rasters and photos over it are refused before decoding. Unset: 2^31 for rasters, "
        "2^26 for photos. Set from MLOPS_MAX_PIXELS, which `mlops-assets ingest` reads too.",
    )

    _store: VersionedStore | None = PrivateAttr(default=None)

    @abc.abstractmethod
    def spec(self) -> StoreSpec:
        """The store this resource opens."""

    def _open(self) -> VersionedStore:
        return open_store(self.spec())

    @property
    @abc.abstractmethod
    def kind(self) -> str:
        """``embedded`` or ``lakefs``, for metadata."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Build the client once per run (or sensor tick)."""
        self._store = self._open()

    def check_limits(self) -> CheckLimits:
        """What the raw-scene checks of scenes read through this resource may decode."""
        return CheckLimits.with_max_pixels(self.max_pixels)

    def get_store(self) -> VersionedStore:
        """The store client: the run's own, or a fresh one outside a run."""
        return self._store if self._store is not None else self._open()


class EmbeddedSceneStore(SceneStoreResource):
    """The embedded store: content-addressed objects and SQLite under ``root``."""

    root: str = Field(description="Directory of the embedded store (under MLOPS_HOME).")

    @property
    def kind(self) -> str:
        """Always ``embedded``."""
        return "embedded"

    def spec(self) -> StoreSpec:
        """The embedded store under ``root``."""
        return StoreSpec(repository=self.repository, embedded_root=Path(self.root))


class LakeFSSceneStore(SceneStoreResource):
    """A lakeFS server, through lakefs_sdk."""

    endpoint: str = Field(description="lakeFS URL, e.g. http://lakefs:8000")
    access_key_id: str = Field(description="lakeFS access key id (use EnvVar).")
    secret_access_key: str = Field(description="lakeFS secret access key (use EnvVar).")
    storage_namespace: str | None = Field(
        default=None, description="Namespace for a repository this resource creates."
    )
    raster_access: Literal["cache", "s3_gateway"] = Field(
        default="cache",
        description="Read rasters from a local checksum-keyed cache, or via GDAL /vsis3/.",
    )
    cache_dir: str | None = Field(default=None, description="Cache directory for 'cache'.")

    @property
    def kind(self) -> str:
        """Always ``lakefs``."""
        return "lakefs"

    def spec(self) -> StoreSpec:
        """The lakeFS repository at ``endpoint`` (credentials never in its repr)."""
        return StoreSpec(
            repository=self.repository,
            lakefs_endpoint=self.endpoint,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            storage_namespace=self.storage_namespace,
            raster_access=self.raster_access,
            cache_dir=None if self.cache_dir is None else Path(self.cache_dir),
        )


def scene_store_resource(settings: Settings) -> SceneStoreResource:
    """The scene-store resource for ``settings`` (lakeFS credentials stay `EnvVar`s)."""
    common: dict[str, Any] = {
        "repository": settings.repository,
        "branch": settings.main_branch,
        "outputs_branch": settings.outputs_branch,
        "max_pixels": settings.max_pixels,
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
