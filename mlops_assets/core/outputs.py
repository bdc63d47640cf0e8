"""Where derived artefacts (tile sets, previews) are published: a local directory or S3.

Artefacts are immutable directories under a key that names their inputs (scene commit, config
hash), published with a marker file written last: a reader that finds the marker finds a complete
directory, and publishing the same key twice is a no-op.
"""

from __future__ import annotations

import abc
import shutil
import uuid
from pathlib import Path
from typing import Any

MARKER = "index.json"


class OutputStore(abc.ABC):
    """Publish and fetch immutable artefact directories by key."""

    @abc.abstractmethod
    def uri(self, key: str) -> str:
        """Where ``key`` lives, for metadata and lineage."""

    @abc.abstractmethod
    def is_published(self, key: str) -> bool:
        """Whether a complete artefact exists at ``key``."""

    @abc.abstractmethod
    def publish(self, local_dir: Path, key: str) -> None:
        """Publish ``local_dir`` at ``key`` (its marker last); a no-op if already published."""

    @abc.abstractmethod
    def fetch(self, key: str, cache_dir: Path) -> Path:
        """A local directory holding the artefact at ``key``."""


class LocalOutputStore(OutputStore):
    """Artefacts as directories under ``root``; publishing is an atomic rename."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"artefact key {key!r} escapes {self.root}")
        return path

    def uri(self, key: str) -> str:
        """A ``file://`` URI."""
        return self._path(key).as_uri()

    def is_published(self, key: str) -> bool:
        """Whether the directory and its marker exist."""
        return (self._path(key) / MARKER).is_file()

    def publish(self, local_dir: Path, key: str) -> None:
        """Copy next to the target, then rename into place."""
        target = self._path(key)
        if self.is_published(key):
            return
        if not (local_dir / MARKER).is_file():
            raise ValueError(
                f"{local_dir} has no {MARKER}: refusing to publish an incomplete artefact"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.{uuid.uuid4().hex}"
        try:
            shutil.copytree(local_dir, staging)
            staging.rename(target)
        except (OSError, shutil.Error):
            shutil.rmtree(staging, ignore_errors=True)
            if not self.is_published(key):  # not a concurrent publisher that won the race
                raise

    def fetch(self, key: str, cache_dir: Path) -> Path:
        """The artefact's own directory (nothing is copied)."""
        if not self.is_published(key):
            raise FileNotFoundError(f"no published artefact at {self.uri(key)}")
        return self._path(key)


class S3OutputStore(OutputStore):
    """Artefacts as objects under ``s3://bucket/prefix/key/``; the marker is uploaded last."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client  # a boto3 S3 client (dagster-aws S3Resource.get_client())
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _key(self, key: str, name: str = "") -> str:
        parts = [p for p in (self.prefix, key.strip("/"), name) if p]
        return "/".join(parts)

    def uri(self, key: str) -> str:
        """An ``s3://`` URI."""
        return f"s3://{self.bucket}/{self._key(key)}/"

    def is_published(self, key: str) -> bool:
        """Whether the marker object exists."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key, MARKER))
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def publish(self, local_dir: Path, key: str) -> None:
        """Upload every file, the marker last."""
        if self.is_published(key):
            return
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        if local_dir / MARKER not in files:
            raise ValueError(
                f"{local_dir} has no {MARKER}: refusing to publish an incomplete artefact"
            )
        marker = local_dir / MARKER
        for path in [p for p in files if p != marker] + [marker]:
            self.client.upload_file(
                str(path), self.bucket, self._key(key, path.relative_to(local_dir).as_posix())
            )

    def fetch(self, key: str, cache_dir: Path) -> Path:
        """Download once into ``cache_dir`` (keys are immutable, so the cache never goes stale)."""
        target = cache_dir / self.bucket / self._key(key)
        if (target / MARKER).is_file():
            return target
        if not self.is_published(key):
            raise FileNotFoundError(f"no published artefact at {self.uri(key)}")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.{uuid.uuid4().hex}"
        paginator = self.client.get_paginator("list_objects_v2")
        base = self._key(key) + "/"
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                for obj in page.get("Contents", []):
                    dest = staging / obj["Key"][len(base) :]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self.client.download_file(self.bucket, obj["Key"], str(dest))
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if not (target / MARKER).is_file():  # not a concurrent fetch that won the race
                raise
        return target
