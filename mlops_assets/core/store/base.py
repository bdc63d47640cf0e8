"""The versioned-store interface the whole pipeline reads scenes through.

Two implementations share it: `mlops_assets.core.store.embedded.EmbeddedStore` (a local store with
lakeFS semantics) and `mlops_assets.core.store.lakefs.LakeFSStore` (a real lakeFS server). The
contract tests in ``mlops_assets_tests/core/store`` run the same suite against both.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import rasterio
import rasterio.io
from rasterio.session import AWSSession

from mlops_assets.core.store.types import (
    Change,
    Commit,
    MergeStrategy,
    NotFoundError,
    ObjectStat,
    lakefs_uri,
)

#: Chunk size for every streamed copy: large enough to be fast, small enough to stay flat.
CHUNK_SIZE = 1 << 20


@dataclass(frozen=True)
class RasterLocation:
    """Where GDAL can read an object without the object being loaded into memory.

    ``path`` is a local file path or a GDAL virtual path (``/vsis3/...``). `open` sets up GDAL
    (options and, for S3, an AWS session) and opens it; the credentials stay out of ``repr``.
    """

    path: str
    gdal_options: Mapping[str, str] = field(default_factory=lambda: dict[str, str]())
    aws_credentials: tuple[str, str] | None = field(default=None, repr=False)

    @contextlib.contextmanager
    def open(self) -> Generator[rasterio.io.DatasetReader, None, None]:
        """Open the raster for (windowed) reading."""
        session = None
        if self.aws_credentials is not None:
            key, secret = self.aws_credentials
            session = AWSSession(
                aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1"
            )
        # Env's keyword parameters are untyped; the options are plain GDAL config strings.
        options: dict[str, Any] = dict(self.gdal_options)
        with rasterio.Env(session=session, **options), rasterio.open(self.path) as src:
            yield src


class VersionedStore(abc.ABC):
    """A repository of versioned objects with lakeFS semantics, bound to one repository."""

    def __init__(self, repository: str) -> None:
        self.repository = repository

    def uri(self, ref: str, path: str) -> str:
        """A ``lakefs://`` URI for ``path`` at ``ref`` (pass a commit id to pin it)."""
        return lakefs_uri(self.repository, ref, path)

    # Repository and refs -------------------------------------------------------------------

    @abc.abstractmethod
    def ensure_repository(self, default_branch: str = "main") -> None:
        """Create the repository with an initial commit on ``default_branch`` if it is missing."""

    @abc.abstractmethod
    def default_branch(self) -> str:
        """The repository's default branch."""

    @abc.abstractmethod
    def resolve(self, ref: str) -> str:
        """The commit id ``ref`` points to (for a branch: its head commit)."""

    @abc.abstractmethod
    def create_branch(self, name: str, source: str) -> str:
        """Create branch ``name`` at ``source`` (any ref); return its head commit id."""

    @abc.abstractmethod
    def delete_branch(self, name: str) -> None:
        """Delete branch ``name`` (its commits stay reachable through other refs)."""

    @abc.abstractmethod
    def list_branches(self) -> dict[str, str]:
        """Every branch name mapped to its head commit id."""

    @abc.abstractmethod
    def create_tag(self, name: str, ref: str) -> str:
        """Tag the commit ``ref`` resolves to; return that commit id."""

    @abc.abstractmethod
    def delete_tag(self, name: str) -> None:
        """Delete tag ``name``."""

    @abc.abstractmethod
    def list_tags(self) -> dict[str, str]:
        """Every tag name mapped to its commit id."""

    # Objects -------------------------------------------------------------------------------

    @abc.abstractmethod
    def put(
        self,
        branch: str,
        path: str,
        source: BinaryIO | Path,
        content_type: str = "application/octet-stream",
    ) -> ObjectStat:
        """Stage ``source`` (a file path or a readable binary stream) at ``path`` on ``branch``.

        The content is streamed in chunks: a file of any size never sits whole in memory.
        """

    @abc.abstractmethod
    def open(self, ref: str, path: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """Open ``path`` at ``ref`` for streamed reading."""

    @abc.abstractmethod
    def stat(self, ref: str, path: str) -> ObjectStat:
        """Size, checksum and modification time of ``path`` at ``ref``."""

    @abc.abstractmethod
    def list(self, ref: str, prefix: str = "") -> Iterator[ObjectStat]:
        """Every object under ``prefix`` at ``ref``, in path order."""

    @abc.abstractmethod
    def list_prefixes(self, ref: str, prefix: str = "") -> list[str]:
        """The distinct "directories" directly under ``prefix`` (each ends with ``/``)."""

    @abc.abstractmethod
    def delete(self, branch: str, path: str) -> None:
        """Stage the removal of ``path`` on ``branch``."""

    @abc.abstractmethod
    def uncommitted(self, branch: str, prefix: str = "") -> list[Change]:
        """The staged changes on ``branch`` under ``prefix``, in path order."""

    @abc.abstractmethod
    def reset(self, branch: str, prefix: str = "") -> None:
        """Discard the staged changes on ``branch`` under ``prefix`` (all of them if empty)."""

    # History -------------------------------------------------------------------------------

    @abc.abstractmethod
    def commit(
        self,
        branch: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
        allow_empty: bool = False,
    ) -> Commit:
        """Commit the staged changes on ``branch``; raise `NoChangesError` if there are none."""

    @abc.abstractmethod
    def get_commit(self, ref: str) -> Commit:
        """The commit ``ref`` resolves to."""

    @abc.abstractmethod
    def log(
        self, ref: str, prefixes: list[str] | None = None, limit: int | None = None
    ) -> Iterator[Commit]:
        """Commits reachable from ``ref``, newest first.

        With ``prefixes``, only commits that changed something under one of them.
        """

    @abc.abstractmethod
    def diff(self, left: str, right: str, prefix: str = "") -> list[Change]:
        """What changed from ``left`` to ``right`` (two-dot: compares the two snapshots)."""

    @abc.abstractmethod
    def merge_base(self, source: str, destination: str) -> str:
        """The best common ancestor of ``source`` and ``destination`` (as git merge-base)."""

    @abc.abstractmethod
    def merge(
        self,
        source: str,
        destination: str,
        message: str | None = None,
        metadata: Mapping[str, str] | None = None,
        strategy: MergeStrategy | None = None,
    ) -> str:
        """Merge ``source`` (any ref) into branch ``destination``; return the merge commit id.

        A path changed on both sides since the merge base is a conflict: without a strategy the
        merge raises `MergeConflictError` naming the paths and changes nothing.
        """

    # Raster access -------------------------------------------------------------------------

    @abc.abstractmethod
    def raster_location(self, ref: str, path: str) -> RasterLocation:
        """Somewhere GDAL can read ``path`` at ``ref`` by window, without loading it whole."""

    # Conveniences built on the primitives above ---------------------------------------------

    def read_bytes(self, ref: str, path: str) -> bytes:
        """The whole content of a (small) object."""
        with self.open(ref, path) as stream:
            return stream.read()

    def exists(self, ref: str, path: str) -> bool:
        """Whether ``path`` exists at ``ref``."""
        try:
            self.stat(ref, path)
        except NotFoundError:
            return False
        return True

    def download(self, ref: str, path: str, destination: Path) -> Path:
        """Stream ``path`` at ``ref`` into the local file ``destination``."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        with self.open(ref, path) as stream, destination.open("wb") as out:
            while chunk := stream.read(CHUNK_SIZE):
                out.write(chunk)
        return destination
