"""Where derived artefacts (tiles) are published: a local directory, or S3 via dagster-aws."""

from __future__ import annotations

import abc
from pathlib import Path

import dagster as dg
from pydantic import Field

from mlops_assets.core.outputs import LocalOutputStore, OutputStore, S3OutputStore


# Dagster resources subclass ConfigurableResource unparameterised, as its API intends.
class OutputStoreResource(dg.ConfigurableResource, abc.ABC):  # pyright: ignore[reportMissingTypeArgument]
    """An immutable, key-addressed store of artefact directories."""

    cache_dir: str = Field(description="Local directory for artefacts fetched from the store.")

    @abc.abstractmethod
    def get_output_store(self) -> OutputStore:
        """The core store."""

    @property
    @abc.abstractmethod
    def kind(self) -> str:
        """``local`` or ``s3``."""

    def fetch(self, key: str) -> Path:
        """A local directory holding the artefact ``key``."""
        return self.get_output_store().fetch(key, Path(self.cache_dir))


class LocalOutputStoreResource(OutputStoreResource):
    """Artefacts under a local directory (the embedded default: MLOPS_HOME/outputs)."""

    root: str = Field(description="Directory holding published artefacts.")

    @property
    def kind(self) -> str:
        """``local``."""
        return "local"

    def get_output_store(self) -> OutputStore:
        """A `LocalOutputStore` at ``root``."""
        return LocalOutputStore(self.root)


class S3OutputStoreResource(OutputStoreResource):
    """Artefacts in an S3 bucket (MinIO in the production stack), through dagster-aws.

    The client is dagster-aws's ``S3Resource`` (credentials from the usual ``AWS_*`` variables),
    built when the store is used: importing dagster-aws costs about half a second, which every
    load of the code location would otherwise pay.
    """

    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO); unset: AWS S3."
    )
    bucket: str = Field(description="Bucket holding published artefacts.")
    prefix: str = Field(default="", description="Key prefix inside the bucket.")

    @property
    def kind(self) -> str:
        """``s3``."""
        return "s3"

    def get_output_store(self) -> OutputStore:
        """An `S3OutputStore` over the dagster-aws client."""
        from dagster_aws.s3 import S3Resource

        client = S3Resource(endpoint_url=self.endpoint_url).get_client()
        return S3OutputStore(client, self.bucket, self.prefix)
