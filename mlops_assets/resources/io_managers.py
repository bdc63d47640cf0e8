"""Storing small asset values (manifests, summaries) as readable JSON files, locally or in S3.

With an S3 output store configured (the production stack) the values live under
``s3://<bucket>/<prefix>/assets`` (`mlops_assets.settings.Settings.assets_url`), so no run state
stays on a worker's disk and any container or machine can run the next step. The paths are
Dagster's `UPathIOManager` layout either way; the S3 objects are read and written with boto3
(dagster-aws's client: credentials from the ``AWS_*`` variables), because s3fs, fsspec's S3
driver, cannot be installed beside the botocore that boto3 1.44 needs.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
from pydantic import Field
from upath import UPath


def _to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


class _JsonIO(dg.UPathIOManager):
    extension = ".json"

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(_to_json(obj))
        tmp.rename(path)  # readers never see a half-written file

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        return json.loads(path.read_text())


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
        return json.loads(body)

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
