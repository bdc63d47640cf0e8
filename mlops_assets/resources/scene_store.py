"""The scene store as a Dagster resource: one interface, an embedded and a lakeFS implementation.

Assets declare ``scene_store: SceneStoreResource`` and never know which one they got.
`scene_store_resource` builds the resource from `Settings.store_spec` (the one place a
`StoreSpec` is filled in, which the CLI opens too), field by field: `EmbeddedSceneStore` by
default, `LakeFSSceneStore` when ``LAKEFS_ENDPOINT`` is set, with the endpoint and credentials as
`EnvVar` fields, resolved at run time and never logged. Each rebuilds its `StoreSpec` from its
fields the same way and opens it through `mlops_assets.core.store.factory.open_store`.
"""

from __future__ import annotations

import abc
import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from mlops_assets.core.scenes.checks import CheckLimits
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.factory import StoreSpec, open_store
from mlops_assets.settings import STORE_ENV_VARS

if TYPE_CHECKING:
    from mlops_assets.settings import Settings

# `StoreSpec` fields that are paths; Dagster config holds them as strings.
_PATH_FIELDS = frozenset(
    name
    for name, hint in typing.get_type_hints(StoreSpec).items()
    if Path in (hint, *typing.get_args(hint))
)


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

    # Fields named otherwise than the `StoreSpec` field they carry: resource field -> spec field.
    spec_aliases: ClassVar[Mapping[str, str]] = {}

    _store: VersionedStore | None = PrivateAttr(default=None)

    @classmethod
    def spec_fields(cls) -> dict[str, str]:
        """Each field of this resource that a `StoreSpec` has, by resource field name."""
        spec_names = {f.name for f in dataclasses.fields(StoreSpec)}
        pairs = ((name, cls.spec_aliases.get(name, name)) for name in cls.model_fields)
        return {name: spec_name for name, spec_name in pairs if spec_name in spec_names}

    @classmethod
    def from_spec(cls, spec: StoreSpec, **fields: Any) -> SceneStoreResource:
        """The resource for ``spec``: the fields in `STORE_ENV_VARS` become `dg.EnvVar`."""
        impl = LakeFSSceneStore if spec.kind == "lakefs" else EmbeddedSceneStore
        for name, spec_name in impl.spec_fields().items():
            value = getattr(spec, spec_name)
            if spec_name in STORE_ENV_VARS:
                value = dg.EnvVar(STORE_ENV_VARS[spec_name])
            elif isinstance(value, Path):
                value = str(value)
            fields[name] = value
        return impl(**fields)

    def spec(self) -> StoreSpec:
        """The store this resource opens: its spec fields, carried over one by one."""
        values = {
            spec_name: _spec_value(spec_name, getattr(self, name))
            for name, spec_name in self.spec_fields().items()
        }
        return StoreSpec(**values)

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

    spec_aliases: ClassVar[Mapping[str, str]] = {"root": "embedded_root"}

    root: str = Field(description="Directory of the embedded store (under MLOPS_HOME).")

    @property
    def kind(self) -> str:
        """Always ``embedded``."""
        return "embedded"


class LakeFSSceneStore(SceneStoreResource):
    """A lakeFS server, through lakefs_sdk."""

    spec_aliases: ClassVar[Mapping[str, str]] = {"endpoint": "lakefs_endpoint"}

    # Resolved in a run, these may hold secrets (the URL ``user:password@``): never in a repr.
    endpoint: str = Field(description="lakeFS URL, e.g. http://lakefs:8000", repr=False)
    access_key_id: str = Field(description="lakeFS access key id (use EnvVar).", repr=False)
    secret_access_key: str = Field(description="lakeFS secret access key (use EnvVar).", repr=False)
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


def _spec_value(name: str, value: Any) -> Any:
    return Path(value) if name in _PATH_FIELDS and value is not None else value


def scene_store_resource(settings: Settings) -> SceneStoreResource:
    """The scene-store resource for ``settings`` (the endpoint and credentials stay `EnvVar`s)."""
    return SceneStoreResource.from_spec(
        settings.store_spec(credentials=False),
        branch=settings.main_branch,
        outputs_branch=settings.outputs_branch,
        max_pixels=settings.max_pixels,
    )
