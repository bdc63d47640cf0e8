"""The versioned-store interface the whole pipeline reads scenes through.

Two implementations share it: `mlops_assets.core.store.embedded.EmbeddedStore` (a local store with
lakeFS semantics) and `mlops_assets.core.store.lakefs.LakeFSStore` (a real lakeFS server). The
contract tests in ``mlops_assets_tests/core/store`` run the same suite against both.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import io
import re
import uuid
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
    CorruptObjectError,
    MergeStrategy,
    NotFoundError,
    ObjectStat,
    lakefs_uri,
)

#: Chunk size for every streamed copy: large enough to be fast, small enough to stay flat.
CHUNK_SIZE = 1 << 20

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_MD5_RE = re.compile(r"[0-9a-f]{32}")


def checksum_algorithm(checksum: str) -> str | None:
    """The hash a store checksum is made with: ``sha256`` (embedded), ``md5`` (a lakeFS ETag).

    None for a checksum whose content hash cannot be recomputed from the bytes alone (an S3
    multipart ETag, ``<md5 of the part md5s>-<parts>``): only the size can be checked then.
    """
    value = checksum.strip('"').lower()
    if _SHA256_RE.fullmatch(value):
        return "sha256"
    if _MD5_RE.fullmatch(value):
        return "md5"
    return None


class VerifyingReader(io.RawIOBase):
    """Passes a stream through, hashing it; at its end, checks the size and the checksum.

    The check runs when the reader reaches the end of the stream, so whoever reads an object
    whole (`VersionedStore.read_bytes`, `VersionedStore.download`, an export) gets a
    `CorruptObjectError` instead of silently wrong bytes. A reader that seeks reads parts only
    (a ranged read) and is not checked.
    """

    def __init__(
        self, raw: BinaryIO, checksum: str, size: int | None, path: str, where: str
    ) -> None:
        super().__init__()
        self._raw = raw
        self._expected = checksum.strip('"').lower()
        algorithm = checksum_algorithm(checksum)
        self._hash = hashlib.new(algorithm) if algorithm else None
        self._size = size
        self._count = 0
        self._done = False
        self._path = path
        self._where = where

    def readable(self) -> bool:  # noqa: D102 (io.RawIOBase's)
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # noqa: D102
        data = self._raw.read(len(buffer))
        n = len(data)
        if n:
            buffer[:n] = data
            self._count += n
            if self._hash is not None:
                self._hash.update(data)
        elif len(buffer) and not self._done:
            self._finish()
        return n

    def _finish(self) -> None:
        self._done = True
        if self._size is not None and self._count != self._size:
            raise CorruptObjectError(
                self._path,
                self._where,
                f"{self._size} bytes",
                f"{self._count} bytes",
                "the object is truncated" if self._count < self._size else "the object grew",
            )
        if self._hash is not None and self._hash.hexdigest() != self._expected:
            label = "SHA-256" if self._hash.name == "sha256" else "MD5"
            raise CorruptObjectError(
                self._path,
                self._where,
                f"{label} {self._expected}",
                f"{label} {self._hash.hexdigest()}",
            )

    def readall(self) -> bytes:  # noqa: D102 (io.RawIOBase's reads 8 KiB at a time)
        parts: list[bytes] = []
        while chunk := self.read(CHUNK_SIZE):  # the empty read at the end runs the check
            parts.append(chunk)
        return b"".join(parts)

    def seekable(self) -> bool:  # noqa: D102 (io.RawIOBase's)
        return bool(getattr(self._raw, "seekable", lambda: False)())

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:  # noqa: D102
        self._done = True  # a ranged read: no whole-object check
        return self._raw.seek(offset, whence)

    def tell(self) -> int:  # noqa: D102 (io.RawIOBase's)
        return self._raw.tell() if self.seekable() else self._count

    def close(self) -> None:  # noqa: D102 (io.RawIOBase's)
        if not self.closed:
            with contextlib.suppress(Exception):
                self._raw.close()
        super().close()


@dataclass(frozen=True)
class IntegrityProblem:
    """One object whose stored bytes do not match what the store recorded for it."""

    path: str
    where: str  # a commit id (short) or "staged on branch X"
    problem: str

    def __str__(self) -> str:
        return f"{self.path} at {self.where}: {self.problem}"


@dataclass(frozen=True)
class FsckReport:
    """What `VersionedStore.fsck` looked at and what it found."""

    objects: int
    bytes: int
    problems: list[IntegrityProblem] = field(default_factory=lambda: list[IntegrityProblem]())
    method: str = "sha256"

    @property
    def clean(self) -> bool:
        """True when every object checked out."""
        return not self.problems


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
        """Stream ``path`` at ``ref`` into the local file ``destination``, checked on the way.

        The bytes go to a temporary file beside ``destination``, renamed into place once the
        object's checksum matched: a corrupt object or an interrupted copy leaves no file.
        """
        destination.parent.mkdir(parents=True, exist_ok=True)
        part = destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with self.open(ref, path) as stream, part.open("wb") as out:
                while chunk := stream.read(CHUNK_SIZE):
                    out.write(chunk)
            part.replace(destination)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return destination

    def fsck(self, ref: str | None = None) -> FsckReport:
        """Read every object at ``ref`` (default: every branch) back and check it.

        Each object is streamed and its size and checksum compared with what the store
        recorded (an SHA-256 for the embedded store; for lakeFS the ETag when it is an MD5).
        """
        refs = [ref] if ref is not None else sorted(self.list_branches())
        seen: set[tuple[str, str]] = set()
        problems: list[IntegrityProblem] = []
        count = total = 0
        for at in refs:
            commit_id = self.resolve(at)
            for stat in self.list(at):
                key = (stat.path, stat.checksum)
                if key in seen:
                    continue
                seen.add(key)
                count += 1
                total += stat.size
                try:
                    with self.open(at, stat.path) as stream:
                        while stream.read(CHUNK_SIZE):
                            pass
                except CorruptObjectError as exc:
                    problems.append(
                        IntegrityProblem(
                            stat.path,
                            commit_id[:12],
                            f"expected {exc.expected}, the stored bytes have {exc.actual}",
                        )
                    )
                except NotFoundError as exc:
                    problems.append(IntegrityProblem(stat.path, commit_id[:12], f"missing: {exc}"))
        return FsckReport(count, total, problems, method="size and checksum, read back")
