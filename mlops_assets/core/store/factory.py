"""The one place a `VersionedStore` is built: the embedded store or lakeFS, from a `StoreSpec`.

`mlops_assets.settings.Settings.store_spec` is the one place a `StoreSpec` is filled in from the
deployment's settings; the CLI opens that spec here, and the Dagster resource
(`mlops_assets.resources.scene_store.scene_store_resource`) is built from it field by field and
opens the spec it rebuilds here too. Which kind of store a spec describes is `StoreSpec.kind`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mlops_assets.core.store.base import VersionedStore

RasterAccess = Literal["cache", "s3_gateway"]


@dataclass(frozen=True)
class StoreSpec:
    """Which store to open: lakeFS when ``lakefs_endpoint`` is set, else the embedded one."""

    repository: str
    embedded_root: Path | None = None  # the embedded store's directory
    lakefs_endpoint: str | None = None
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    storage_namespace: str | None = None  # for a repository the store creates
    raster_access: RasterAccess = "cache"  # local checksum-keyed cache, or GDAL /vsis3/
    cache_dir: Path | None = None

    @property
    def kind(self) -> Literal["embedded", "lakefs"]:
        """``lakefs`` when an endpoint is set, else ``embedded``."""
        return "lakefs" if self.lakefs_endpoint else "embedded"


def open_store(spec: StoreSpec) -> VersionedStore:
    """The store ``spec`` describes (lakefs_sdk is imported only when a lakeFS store opens)."""
    if spec.kind == "embedded":
        from mlops_assets.core.store.embedded import EmbeddedStore

        if spec.embedded_root is None:
            raise ValueError("an embedded store needs embedded_root")
        return EmbeddedStore(spec.embedded_root, spec.repository)
    from mlops_assets.core.store.lakefs import LakeFSStore

    options = dataclasses.asdict(spec)  # the other fields are LakeFSStore's keyword arguments
    del options["embedded_root"]
    return LakeFSStore(endpoint=options.pop("lakefs_endpoint"), **options)
