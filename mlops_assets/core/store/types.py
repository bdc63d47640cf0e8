"""Value types and errors shared by every versioned-store implementation.

The vocabulary follows lakeFS: a repository holds branches, tags and commits; a *ref* is anything
that resolves to a commit (a branch, a tag, a commit id or prefix, optionally followed by ``~N`` /
``^N`` ancestry operators). Reading a branch includes its uncommitted (staged) changes; reading
``branch@`` or a commit does not.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

# lakeFS's own validation rules (graveler/validate.go), so both stores accept the same names.
REPOSITORY_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")
BRANCH_RE = re.compile(r"^\w[-\w]*$")
_TAG_FORBIDDEN = re.compile(r"(\.\.|//|@\{|[\^:?*\[\\\s\x00-\x1f\x7f])")


class StoreError(Exception):
    """Base class for every error raised by a versioned store."""


class NotFoundError(StoreError):
    """A repository, ref or object does not exist."""


class AlreadyExistsError(StoreError):
    """A branch, tag or repository with that name already exists."""


class NoChangesError(StoreError):
    """A commit or merge would record nothing."""


class DirtyBranchError(StoreError):
    """A merge destination has uncommitted changes."""


class MergeConflictError(StoreError):
    """A merge found paths changed on both sides since the merge base."""

    def __init__(self, source: str, destination: str, paths: list[str]) -> None:
        self.source = source
        self.destination = destination
        self.paths = sorted(paths)
        shown = ", ".join(self.paths[:10]) + (" ..." if len(self.paths) > 10 else "")
        super().__init__(
            f"merge of {source!r} into {destination!r} has {len(self.paths)} conflicting "
            f"path(s), changed on both sides since the merge base: {shown}. "
            "Pass strategy='source-wins' or 'dest-wins' to resolve them."
        )


class InvalidNameError(StoreError, ValueError):
    """A repository, branch, tag or path name breaks the naming rules."""


class StoreUnavailableError(StoreError):
    """The store's server cannot be reached."""


class ProtectedBranchError(StoreError):
    """A write or commit to a branch that a lakeFS branch protection rule allows merges into only.

    Retrying cannot help: write to another branch and merge it (the pipeline's writers do), or
    change the repository's branch protection rules.
    """


class CorruptObjectError(StoreError):
    """An object's bytes no longer match the checksum recorded when it was written."""

    def __init__(self, path: str, where: str, expected: str, actual: str, detail: str = "") -> None:
        self.path = path
        self.where = where
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{path} at {where} is corrupt: expected {expected}, the stored bytes have "
            f"{actual}{f' ({detail})' if detail else ''}; "
            "ingesting the original file again repairs it (`mlops-assets fsck` checks them all)"
        )


class ChangeType(enum.StrEnum):
    """How a path differs between two states."""

    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"


class MergeStrategy(enum.StrEnum):
    """How a merge resolves paths changed on both sides."""

    SOURCE_WINS = "source-wins"
    DEST_WINS = "dest-wins"


@dataclass(frozen=True)
class ObjectStat:
    """One object as seen at a ref."""

    path: str
    size: int
    checksum: str
    mtime: float
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class Change:
    """One path that differs between two states (two refs, or a branch and its staging area)."""

    path: str
    type: ChangeType
    size: int | None = None


@dataclass(frozen=True)
class Commit:
    """A commit: an immutable snapshot of the repository plus its history links."""

    id: str
    parents: tuple[str, ...]
    message: str
    metadata: dict[str, str] = field(default_factory=lambda: dict[str, str]())
    committer: str = ""
    creation_date: float = 0.0


def lakefs_uri(repository: str, ref: str, path: str = "") -> str:
    """A ``lakefs://repository/ref/path`` URI (pass a commit id as ``ref`` to pin it)."""
    return f"lakefs://{repository}/{ref}/{path}"


def validate_repository_name(name: str) -> str:
    """Return ``name`` if it is a valid repository name, else raise `InvalidNameError`."""
    if not REPOSITORY_RE.match(name):
        raise InvalidNameError(
            f"invalid repository name {name!r}: use 3-63 lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    return name


def validate_branch_name(name: str) -> str:
    """Return ``name`` if it is a valid branch name, else raise `InvalidNameError`."""
    if not BRANCH_RE.match(name):
        raise InvalidNameError(
            f"invalid branch name {name!r}: use letters, digits, '_' and '-' only "
            "(no '/', '.' or spaces), starting with a letter, digit or '_'"
        )
    return name


def validate_tag_name(name: str) -> str:
    """Return ``name`` if it is a valid tag name (git check-ref-format rules), else raise."""
    bad = (
        not name
        or name == "@"
        or name.endswith((".", ".lock", "/"))
        or name.startswith("/")
        or _TAG_FORBIDDEN.search(name) is not None
    )
    if bad:
        raise InvalidNameError(f"invalid tag name {name!r}")
    return name


def validate_path(path: str) -> str:
    """Return ``path`` if it is a valid object path, else raise `InvalidNameError`."""
    if not path or path.startswith("/") or "\x00" in path:
        raise InvalidNameError(f"invalid object path {path!r}: must be relative and non-empty")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidNameError(f"invalid object path {path!r}: empty, '.' or '..' segment")
    return path
