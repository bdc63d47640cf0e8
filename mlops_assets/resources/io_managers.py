"""Storing small asset values (manifests, summaries) as readable JSON files, locally or in S3.

With an S3 output store configured (the production stack) the values live under
``s3://<bucket>/<prefix>/assets`` (`mlops_assets.settings.Settings.assets_url`), so no run state
stays on a worker's disk and any container or machine can run the next step. The paths are
Dagster's `UPathIOManager` layout either way; the S3 objects are read and written with boto3
(dagster-aws's client: credentials from the ``AWS_*`` variables), because s3fs, fsspec's S3
driver, cannot be installed beside the botocore that boto3 1.44 needs.

A typed record (anything with ``to_dict``, e.g. `mlops_assets.core.records.Record`) is stored as
its ``to_dict()``; an input annotated with a record class (``scene: CDScene``, or
``CDScene | None``) is rebuilt with that class's ``from_dict``, so an asset reads attributes.
Other values are plain JSON both ways.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
from pydantic import Field
from upath import UPath


def _to_json(obj: Any) -> str:
    to_dict = getattr(obj, "to_dict", None)
    value = to_dict() if callable(to_dict) else obj
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _from_json(context: dg.InputContext, text: str | bytes) -> Any:
    """The value in ``text``, rebuilt as the record class the input is annotated with, if any."""
    value = json.loads(text)
    record = _record_class(context.dagster_type.typing_type)
    return value if record is None else record.from_dict(value)


def _record_class(annotation: Any) -> Any:
    """``X`` for an annotation ``X`` or ``X | None`` where ``X`` is a class with ``from_dict``."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    for candidate in typing.get_args(annotation) if union else (annotation,):
        if isinstance(candidate, type) and callable(getattr(candidate, "from_dict", None)):
            return candidate
    return None


class _JsonIO(dg.UPathIOManager):
    extension = ".json"

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(_to_json(obj))
        tmp.rename(path)  # readers never see a half-written file

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        return _from_json(context, path.read_text())


class _S3JsonIO(_JsonIO):
    """The same files as S3 objects; one PUT replaces an object whole (no half-written value)."""

    def __init__(self, base_path: UPath, client: Any) -> None:
        super().__init__(base_path=base_path)
        self._client = client

    @staticmethod
    def _location(path: UPath) -> tuple[str, str]:
        parts = urlsplit(str(path))
        return parts.netloc, parts.path.lstrip("/")

    def _missing(self, error: Exception) -> bool:
        code = getattr(error, "response", {}).get("Error", {}).get("Code")
        return code in ("NoSuchKey", "404", "NotFound")

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        bucket, key = self._location(path)
        self._client.put_object(
            Bucket=bucket, Key=key, Body=_to_json(obj).encode(), ContentType="application/json"
        )

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        bucket, key = self._location(path)
        try:
            body = self._client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as error:
            if self._missing(error):
                raise FileNotFoundError(f"{path}: no such object") from None
            raise
        return _from_json(context, body)

    def path_exists(self, path: UPath) -> bool:
        bucket, key = self._location(path)
        try:
            self._client.head_object(Bucket=bucket, Key=key)
        except Exception as error:
            if self._missing(error):
                return False
            raise
        return True

    def unlink(self, path: UPath) -> None:
        bucket, key = self._location(path)
        self._client.delete_object(Bucket=bucket, Key=key)

    def make_directory(self, path: UPath) -> None:
        """S3 has no directories."""

    def _handle_transition_to_partitioned_asset(
        self, context: dg.OutputContext, path: UPath
    ) -> None:
        """A key ``a.json`` and keys under ``a/`` coexist in S3: nothing to remove."""


class JsonIOManager(dg.ConfigurableIOManagerFactory):  # pyright: ignore[reportMissingTypeArgument]
    """One JSON file per asset (and partition) under ``base_dir``: a directory or ``s3://`` URL."""

    base_dir: str = Field(description="Directory, or s3://bucket/prefix, holding the files.")
    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO) for an s3:// base_dir."
    )

    def create_io_manager(self, context: dg.InitResourceContext) -> dg.UPathIOManager:
        """Build the IO manager."""
        if self.base_dir.startswith("s3://"):
            from dagster_aws.s3 import S3Resource  # half a second: only where S3 is used

            client = S3Resource(endpoint_url=self.endpoint_url).get_client()
            return _S3JsonIO(UPath(self.base_dir), client)
        return _JsonIO(base_path=UPath(self.base_dir))
