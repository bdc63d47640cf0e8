"""Storing small asset values (manifests, summaries) as readable JSON files."""

from __future__ import annotations

import json
from typing import Any

import dagster as dg
from pydantic import Field
from upath import UPath


class _JsonIO(dg.UPathIOManager):
    extension = ".json"

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        tmp.rename(path)  # readers never see a half-written file

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        return json.loads(path.read_text())


class JsonIOManager(dg.ConfigurableIOManagerFactory):  # pyright: ignore[reportMissingTypeArgument]
    """One JSON file per asset (and partition) under ``base_dir``."""

    base_dir: str = Field(description="Directory (or fsspec URL) holding the files.")

    def create_io_manager(self, context: dg.InitResourceContext) -> dg.UPathIOManager:
        """Build the IO manager."""
        return _JsonIO(base_path=UPath(self.base_dir))
