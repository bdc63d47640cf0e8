"""Scene folders in S3: ``s3://bucket/prefix/`` copied to a local staging folder, then ingested.

`ingest_scene` (CLI ``mlops-assets ingest``, job ``ingest_scene``) checks and uploads local
folders; an ``s3://`` source is first copied, object by object, into a temporary folder with the
same layout, and that folder is ingested. The copy is bounded (objects and bytes), refuses keys
that would escape the folder, and a source that does not exist is one clear `SceneError` naming
it, before anything is written to the store.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import urlsplit

from mlops_assets.core.redact import redact_text
from mlops_assets.core.scenes.layout import SceneError

S3_SCHEME = "s3://"
MAX_OBJECTS = 10_000  # a scene folder holds a few rasters or a few hundred photos
MAX_BYTES = 64 * 2**30


class S3Client(Protocol):
    """The two boto3 S3 client methods this module uses."""

    def get_paginator(self, operation_name: str) -> Any:  # noqa: D102
        ...

    def download_file(self, Bucket: str, Key: str, Filename: str) -> None:  # noqa: D102, N803
        ...


def is_s3_source(source: str) -> bool:
    """Whether ``source`` names an S3 folder rather than a local one."""
    return source.startswith(S3_SCHEME)


@dataclass(frozen=True)
class S3Folder:
    """``s3://bucket/prefix/``, parsed."""

    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def parse(cls, url: str) -> S3Folder:
        """Parse an ``s3://bucket[/prefix]`` URL; `SceneError` if it is not one."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise SceneError(f"{url}: expected s3://bucket/prefix/")
        prefix = parts.path.strip("/")
        return cls(parts.netloc, f"{prefix}/" if prefix else "")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def fetch_s3_folder(
    client: S3Client,
    url: str,
    dest: Path,
    *,
    max_objects: int = MAX_OBJECTS,
    max_bytes: int = MAX_BYTES,
) -> Path:
    """Copy every object under ``url`` into ``dest`` (created); return ``dest``.

    Raises `SceneError` naming the URL when the bucket or the folder does not exist, a key would
    land outside ``dest``, or the folder exceeds ``max_objects`` / ``max_bytes``; nothing else is
    touched. Credentials are the client's (never part of the URL or a message).
    """
    folder = S3Folder.parse(url)
    listed: list[tuple[str, PurePosixPath]] = []
    total = 0
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=folder.bucket, Prefix=folder.prefix
        )
        for page in pages:
            for item in page.get("Contents", []):
                key = str(item["Key"])
                if key.endswith("/"):
                    continue  # a "folder" placeholder object
                relative = PurePosixPath(key[len(folder.prefix) :])
                if relative.is_absolute() or ".." in relative.parts or not relative.parts:
                    raise SceneError(f"{folder}: object key {key!r} escapes the folder; refused")
                listed.append((key, relative))
                total += int(item.get("Size", 0))
                if len(listed) > max_objects or total > max_bytes:
                    raise SceneError(
                        f"{folder}: more than {max_objects} objects or {max_bytes} bytes; "
                        "not a scene folder"
                    )
    except SceneError:
        raise
    except Exception as error:
        code = getattr(error, "response", {}).get("Error", {}).get("Code")
        if code == "NoSuchBucket":
            raise SceneError(f"{folder}: no such bucket {folder.bucket!r}") from None
        raise SceneError(
            f"{folder}: cannot list the folder ({code or type(error).__name__})"
        ) from None
    if not listed:
        raise SceneError(f"{folder}: no such folder (no objects under it)")
    dest.mkdir(parents=True, exist_ok=True)
    for key, relative in listed:
        target = dest.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download_file(folder.bucket, key, str(target))
        except Exception as error:  # denied, dropped connection, disk full: one line, no traceback
            code = getattr(error, "response", {}).get("Error", {}).get("Code")
            raise SceneError(
                f"s3://{folder.bucket}/{key}: cannot download ({code or redact_text(str(error))})"
            ) from None
    return dest


@contextlib.contextmanager
def local_scene_folder(source: str, client: Callable[[], S3Client]) -> Generator[Path]:
    """``source`` as a local folder: itself, or an ``s3://`` folder copied to a temporary one.

    ``client`` builds the S3 client, only when the source is in S3. The copy is deleted when the
    block ends, whatever happened in it.
    """
    if not is_s3_source(source):
        yield Path(source)
        return
    with tempfile.TemporaryDirectory(prefix="mlops-s3-scene-") as staging:
        yield fetch_s3_folder(client(), source, Path(staging) / "scene")
