"""A local versioned store with lakeFS semantics: content-addressed objects plus SQLite metadata.

Layout under ``root``::

    objects/ab/cdef...    immutable object content, named by its SHA-256 (read-only files)
    tmp/                  uploads in flight; renamed into objects/ once complete
    store.db              repositories, commits, trees, branches, tags and staging areas

Several processes may use one root at once. Object files are written to ``tmp/`` and renamed into
place (atomic, idempotent since the name is the content hash); every metadata change runs in one
``BEGIN IMMEDIATE`` SQLite transaction (WAL mode), so commits and merges are serialised and a branch
head only moves from the value the transaction read.

What is read is what was written: `open` hashes an object as it streams and fails at its end if
the SHA-256 differs from the object's name (`CorruptObjectError`, naming the path, the commit and
both checksums); `raster_location`, which hands GDAL a file to read by random access, hashes the
file once before its first use and remembers that it did (table ``verified_objects``, keyed by the
file's size, mtime, ctime and inode, so any later write to the file makes it hash again). Every
upload renames its freshly hashed bytes over the object file even when one exists already, so
ingesting the original file again repairs a corrupt object. `fsck` hashes every object the
repository references; `collect_garbage` removes objects that no commit and no staged change
references, and uploads abandoned in ``tmp/``, once they are older than a grace period.

Semantics follow lakeFS (graveler): reading a branch includes its staged changes, ``branch@``
reads the committed state only; a ref is a commit id or unique prefix, a branch or a tag, then
``~N`` (first parent, N times) and ``^N`` (N-th parent) operators; a merge always writes a merge
commit whose parents are the destination head and the source commit; a conflict is a path whose
content differs between the two sides after both changed it since the merge base.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import re
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple, cast

from typing_extensions import override

from mlops_assets.core.store.base import (
    CHUNK_SIZE,
    FsckReport,
    IntegrityProblem,
    RasterLocation,
    VerifyingReader,
    VersionedStore,
)
from mlops_assets.core.store.types import (
    AlreadyExistsError,
    Change,
    ChangeType,
    Commit,
    CorruptObjectError,
    DirtyBranchError,
    InvalidNameError,
    MergeConflictError,
    MergeStrategy,
    NoChangesError,
    NotFoundError,
    ObjectStat,
    validate_branch_name,
    validate_path,
    validate_repository_name,
    validate_tag_name,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS repositories (
    name TEXT PRIMARY KEY,
    default_branch TEXT NOT NULL,
    creation_date REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS commits (
    repository TEXT NOT NULL,
    id TEXT NOT NULL,
    parents TEXT NOT NULL,
    tree TEXT NOT NULL,
    message TEXT NOT NULL,
    metadata TEXT NOT NULL,
    committer TEXT NOT NULL,
    creation_date REAL NOT NULL,
    generation INTEGER NOT NULL,
    PRIMARY KEY (repository, id)
);
CREATE TABLE IF NOT EXISTS trees (id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS tree_entries (
    tree TEXT NOT NULL,
    path TEXT NOT NULL,
    checksum TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    content_type TEXT NOT NULL,
    PRIMARY KEY (tree, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS branches (
    repository TEXT NOT NULL,
    name TEXT NOT NULL,
    commit_id TEXT NOT NULL,
    PRIMARY KEY (repository, name)
);
CREATE TABLE IF NOT EXISTS tags (
    repository TEXT NOT NULL,
    name TEXT NOT NULL,
    commit_id TEXT NOT NULL,
    PRIMARY KEY (repository, name)
);
CREATE TABLE IF NOT EXISTS staging (
    repository TEXT NOT NULL,
    branch TEXT NOT NULL,
    path TEXT NOT NULL,
    checksum TEXT,  -- NULL marks a staged deletion (a tombstone)
    size INTEGER,
    mtime REAL,
    content_type TEXT,
    PRIMARY KEY (repository, branch, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS verified_objects (
    checksum TEXT PRIMARY KEY,
    file_key TEXT NOT NULL  -- size:mtime_ns:ctime_ns:inode of the object file when it was hashed
) WITHOUT ROWID;
"""

_EMPTY_TREE = hashlib.sha256(b"").hexdigest()
_HEX_RE = re.compile(r"^[0-9a-fA-F]{1,64}$")
_MODIFIER_RE = re.compile(r"([~^])(\d*)")


class _Entry(NamedTuple):
    checksum: str
    size: int
    mtime: float
    content_type: str

    @property
    def identity(self) -> tuple[str, int, str]:
        """What makes two entries "the same content" (lakeFS compares size, ETag, type)."""
        return (self.checksum, self.size, self.content_type)


@dataclass(frozen=True)
class _Resolved:
    commit_id: str
    staging_branch: str | None  # set when reading a plain branch: staged changes are visible


def _identity(entry: _Entry | None) -> tuple[str, int, str] | None:
    return None if entry is None else entry.identity


def _prefix_upper(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    return prefix + "\U0010ffff"


def _file_key(stat: os.stat_result) -> str:
    """What changes whenever a file's bytes are written (ctime cannot be set back by hand)."""
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ObjectGcReport:
    """What `EmbeddedStore.collect_garbage` removed (or would remove, on a dry run)."""

    objects: int
    bytes: int
    partial_uploads: int


class EmbeddedStore(VersionedStore):
    """A `VersionedStore` on the local file system, for laptops, tests and CI."""

    def __init__(self, root: str | Path, repository: str, committer: str = "mlops-assets") -> None:
        super().__init__(validate_repository_name(repository))
        self.root = Path(root)
        self.committer = committer
        self._objects = self.root / "objects"
        self._tmp = self.root / "tmp"
        self._db_path = self.root / "store.db"
        self._initialised = False

    # Plumbing ------------------------------------------------------------------------------

    def _init(self) -> None:
        if self._initialised:
            return
        self._objects.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._db_path, timeout=60, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
        finally:
            conn.close()
        self._initialised = True

    @contextlib.contextmanager
    def _tx(self, write: bool = False) -> Generator[sqlite3.Connection, None, None]:
        """A transaction: ``BEGIN IMMEDIATE`` for writes, a consistent snapshot for reads."""
        self._init()
        conn = sqlite3.connect(self._db_path, timeout=60, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=60000")
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _object_path(self, checksum: str) -> Path:
        return self._objects / checksum[:2] / checksum[2:]

    def _require_repository(self, conn: sqlite3.Connection) -> str:
        row = conn.execute(
            "SELECT default_branch FROM repositories WHERE name = ?", (self.repository,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"repository {self.repository!r} not found in {self.root}")
        return str(row[0])

    def _branch_head(self, conn: sqlite3.Connection, branch: str) -> str:
        self._require_repository(conn)
        row = conn.execute(
            "SELECT commit_id FROM branches WHERE repository = ? AND name = ?",
            (self.repository, branch),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"branch {branch!r} not found in repository {self.repository!r}")
        return str(row[0])

    def _commit_row(self, conn: sqlite3.Connection, commit_id: str) -> tuple[Commit, str, int]:
        row = conn.execute(
            "SELECT id, parents, tree, message, metadata, committer, creation_date, generation "
            "FROM commits WHERE repository = ? AND id = ?",
            (self.repository, commit_id),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"commit {commit_id!r} not found in repository {self.repository!r}")
        commit = Commit(
            id=row[0],
            parents=tuple(json.loads(row[1])),
            message=row[3],
            metadata=dict(json.loads(row[4])),
            committer=row[5],
            creation_date=row[6],
        )
        return commit, str(row[2]), int(row[7])

    def _resolve(self, conn: sqlite3.Connection, ref: str) -> _Resolved:
        self._require_repository(conn)
        if not ref or any(ch.isspace() for ch in ref):
            raise InvalidNameError(f"invalid ref {ref!r}")
        cut = min((i for i in (ref.find("~"), ref.find("^")) if i >= 0), default=len(ref))
        base, modifiers = ref[:cut], ref[cut:]
        committed_only = base.endswith("@")
        if committed_only:
            base = base[:-1]
        commit_id: str | None = None
        branch: str | None = None
        if _HEX_RE.match(base):
            rows = conn.execute(
                "SELECT id FROM commits WHERE repository = ? AND id >= ? AND id < ? LIMIT 2",
                (self.repository, base.lower(), _prefix_upper(base.lower())),
            ).fetchall()
            if len(rows) == 1:
                commit_id = str(rows[0][0])
        if commit_id is None:
            row = conn.execute(
                "SELECT commit_id FROM branches WHERE repository = ? AND name = ?",
                (self.repository, base),
            ).fetchone()
            if row is not None:
                commit_id, branch = str(row[0]), base
        if commit_id is None:
            row = conn.execute(
                "SELECT commit_id FROM tags WHERE repository = ? AND name = ?",
                (self.repository, base),
            ).fetchone()
            if row is not None:
                commit_id = str(row[0])
        if commit_id is None:
            raise NotFoundError(
                f"ref {ref!r} not found in repository {self.repository!r} "
                "(not a branch, tag or commit id)"
            )
        if committed_only and branch is None:
            raise InvalidNameError(f"invalid ref {ref!r}: '@' only applies to a branch")
        consumed = "".join(m.group(0) for m in _MODIFIER_RE.finditer(modifiers))
        if consumed != modifiers:
            raise InvalidNameError(f"invalid ref {ref!r}: unknown modifier {modifiers!r}")
        for op, count in _MODIFIER_RE.findall(modifiers):
            n = int(count) if count else 1
            if op == "~":
                for _ in range(n):
                    commit_id = self._nth_parent(conn, commit_id, 1, ref)
            elif n > 0:
                commit_id = self._nth_parent(conn, commit_id, n, ref)
        staging_branch = (
            branch if (branch is not None and not modifiers and not committed_only) else None
        )
        return _Resolved(commit_id, staging_branch)

    def _nth_parent(self, conn: sqlite3.Connection, commit_id: str, n: int, ref: str) -> str:
        commit, _, _ = self._commit_row(conn, commit_id)
        if len(commit.parents) < n:
            raise NotFoundError(f"ref {ref!r} not found: commit {commit_id[:12]} has no parent {n}")
        return commit.parents[n - 1]

    def _tree_entries(
        self, conn: sqlite3.Connection, tree: str, prefix: str = ""
    ) -> dict[str, _Entry]:
        rows = conn.execute(
            "SELECT path, checksum, size, mtime, content_type FROM tree_entries "
            "WHERE tree = ? AND path >= ? AND path < ? ORDER BY path",
            (tree, prefix, _prefix_upper(prefix)),
        ).fetchall()
        return {r[0]: _Entry(r[1], r[2], r[3], r[4]) for r in rows}

    def _staged(
        self, conn: sqlite3.Connection, branch: str, prefix: str = ""
    ) -> dict[str, _Entry | None]:
        rows = conn.execute(
            "SELECT path, checksum, size, mtime, content_type FROM staging "
            "WHERE repository = ? AND branch = ? AND path >= ? AND path < ? ORDER BY path",
            (self.repository, branch, prefix, _prefix_upper(prefix)),
        ).fetchall()
        return {r[0]: (None if r[1] is None else _Entry(r[1], r[2], r[3], r[4])) for r in rows}

    def _view(self, conn: sqlite3.Connection, ref: str, prefix: str = "") -> dict[str, _Entry]:
        """Every entry visible at ``ref`` under ``prefix`` (with staged changes for a branch)."""
        resolved = self._resolve(conn, ref)
        _, tree, _ = self._commit_row(conn, resolved.commit_id)
        entries = self._tree_entries(conn, tree, prefix)
        if resolved.staging_branch is not None:
            for path, entry in self._staged(conn, resolved.staging_branch, prefix).items():
                if entry is None:
                    entries.pop(path, None)
                else:
                    entries[path] = entry
        return dict(sorted(entries.items()))

    def _write_tree(self, conn: sqlite3.Connection, entries: Mapping[str, _Entry]) -> str:
        digest = hashlib.sha256()
        for path in sorted(entries):
            e = entries[path]
            digest.update(f"{path}\0{e.checksum}\0{e.size}\0{e.content_type}\n".encode())
        tree = digest.hexdigest() if entries else _EMPTY_TREE
        if conn.execute("SELECT 1 FROM trees WHERE id = ?", (tree,)).fetchone() is None:
            conn.executemany(
                "INSERT OR REPLACE INTO tree_entries VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (tree, p, e.checksum, e.size, e.mtime, e.content_type)
                    for p, e in entries.items()
                ],
            )
            conn.execute("INSERT INTO trees VALUES (?)", (tree,))
        return tree

    def _write_commit(
        self,
        conn: sqlite3.Connection,
        parents: list[str],
        tree: str,
        message: str,
        metadata: Mapping[str, str],
    ) -> Commit:
        generation = 1 + max((self._commit_row(conn, p)[2] for p in parents), default=0)
        now = time.time()
        body = json.dumps(
            {
                "parents": parents,
                "tree": tree,
                "message": message,
                "metadata": dict(metadata),
                "committer": self.committer,
                "date": now,
                "nonce": uuid.uuid4().hex,
            },
            sort_keys=True,
        )
        commit_id = hashlib.sha256(body.encode()).hexdigest()
        conn.execute(
            "INSERT INTO commits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.repository,
                commit_id,
                json.dumps(parents),
                tree,
                message,
                json.dumps(dict(metadata), sort_keys=True),
                self.committer,
                now,
                generation,
            ),
        )
        return Commit(commit_id, tuple(parents), message, dict(metadata), self.committer, now)

    @staticmethod
    def _changes(before: Mapping[str, _Entry], after: Mapping[str, _Entry]) -> list[Change]:
        changes: list[Change] = []
        for path in sorted(set(before) | set(after)):
            old, new = before.get(path), after.get(path)
            if old is None and new is not None:
                changes.append(Change(path, ChangeType.ADDED, new.size))
            elif new is None and old is not None:
                changes.append(Change(path, ChangeType.REMOVED, old.size))
            elif old is not None and new is not None and old.identity != new.identity:
                changes.append(Change(path, ChangeType.CHANGED, new.size))
        return changes

    # Repository and refs -------------------------------------------------------------------

    @staticmethod
    def list_repositories(root: str | Path) -> list[str]:
        """The names of the repositories stored under ``root``."""
        db = Path(root) / "store.db"
        if not db.exists():
            return []
        conn = sqlite3.connect(db, timeout=60)
        try:
            return [str(r[0]) for r in conn.execute("SELECT name FROM repositories ORDER BY name")]
        finally:
            conn.close()

    @override
    def ensure_repository(self, default_branch: str = "main") -> None:
        validate_branch_name(default_branch)
        with self._tx(write=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM repositories WHERE name = ?", (self.repository,)
            ).fetchone()
            if exists:
                return
            conn.execute(
                "INSERT INTO repositories VALUES (?, ?, ?)",
                (self.repository, default_branch, time.time()),
            )
            tree = self._write_tree(conn, {})
            commit = self._write_commit(conn, [], tree, "Repository created", {})
            conn.execute(
                "INSERT INTO branches VALUES (?, ?, ?)",
                (self.repository, default_branch, commit.id),
            )

    @override
    def default_branch(self) -> str:
        with self._tx() as conn:
            return self._require_repository(conn)

    @override
    def resolve(self, ref: str) -> str:
        with self._tx() as conn:
            return self._resolve(conn, ref).commit_id

    @override
    def create_branch(self, name: str, source: str) -> str:
        validate_branch_name(name)
        with self._tx(write=True) as conn:
            commit_id = self._resolve(conn, source).commit_id
            exists = conn.execute(
                "SELECT 1 FROM branches WHERE repository = ? AND name = ?", (self.repository, name)
            ).fetchone()
            if exists:
                raise AlreadyExistsError(
                    f"branch {name!r} already exists in repository {self.repository!r}"
                )
            conn.execute(
                "INSERT INTO branches VALUES (?, ?, ?)", (self.repository, name, commit_id)
            )
            return commit_id

    @override
    def delete_branch(self, name: str) -> None:
        with self._tx(write=True) as conn:
            default = self._require_repository(conn)
            self._branch_head(conn, name)
            if name == default:
                raise InvalidNameError(f"cannot delete the default branch {name!r}")
            conn.execute(
                "DELETE FROM branches WHERE repository = ? AND name = ?", (self.repository, name)
            )
            conn.execute(
                "DELETE FROM staging WHERE repository = ? AND branch = ?", (self.repository, name)
            )

    @override
    def list_branches(self) -> dict[str, str]:
        with self._tx() as conn:
            self._require_repository(conn)
            rows = conn.execute(
                "SELECT name, commit_id FROM branches WHERE repository = ? ORDER BY name",
                (self.repository,),
            ).fetchall()
            return {str(r[0]): str(r[1]) for r in rows}

    @override
    def create_tag(self, name: str, ref: str) -> str:
        validate_tag_name(name)
        with self._tx(write=True) as conn:
            commit_id = self._resolve(conn, ref).commit_id
            exists = conn.execute(
                "SELECT 1 FROM tags WHERE repository = ? AND name = ?", (self.repository, name)
            ).fetchone()
            if exists:
                raise AlreadyExistsError(
                    f"tag {name!r} already exists in repository {self.repository!r}"
                )
            conn.execute("INSERT INTO tags VALUES (?, ?, ?)", (self.repository, name, commit_id))
            return commit_id

    @override
    def delete_tag(self, name: str) -> None:
        with self._tx(write=True) as conn:
            self._require_repository(conn)
            cur = conn.execute(
                "DELETE FROM tags WHERE repository = ? AND name = ?", (self.repository, name)
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"tag {name!r} not found in repository {self.repository!r}")

    @override
    def list_tags(self) -> dict[str, str]:
        with self._tx() as conn:
            self._require_repository(conn)
            rows = conn.execute(
                "SELECT name, commit_id FROM tags WHERE repository = ? ORDER BY name",
                (self.repository,),
            ).fetchall()
            return {str(r[0]): str(r[1]) for r in rows}

    # Objects -------------------------------------------------------------------------------

    @override
    def put(
        self,
        branch: str,
        path: str,
        source: BinaryIO | Path,
        content_type: str = "application/octet-stream",
    ) -> ObjectStat:
        validate_path(path)
        with self._tx() as conn:  # fail before streaming anything to a missing branch
            self._branch_head(conn, branch)
        checksum, size, file_key = self._ingest(source)
        entry = _Entry(checksum, size, time.time(), content_type)
        with self._tx(write=True) as conn:
            self._branch_head(conn, branch)
            conn.execute(
                "INSERT OR REPLACE INTO staging VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.repository, branch, path, *entry),
            )
            conn.execute(
                "INSERT OR REPLACE INTO verified_objects VALUES (?, ?)", (checksum, file_key)
            )
        return ObjectStat(path, size, checksum, entry.mtime, content_type)

    def _ingest(self, source: BinaryIO | Path) -> tuple[str, int, str]:
        """Stream ``source`` into the object store; return its SHA-256, size and file key.

        The new bytes always replace the object file, also when one with that name exists: the
        bytes were hashed on the way in, the existing file may have rotted since it was written.
        """
        self._init()
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
        tmp = Path(tmp_name)
        try:
            with contextlib.ExitStack() as stack:
                out = stack.enter_context(os.fdopen(fd, "wb"))
                stream: BinaryIO = (
                    stack.enter_context(source.open("rb")) if isinstance(source, Path) else source
                )
                while chunk := stream.read(CHUNK_SIZE):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            checksum = digest.hexdigest()
            final = self._object_path(checksum)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp.chmod(0o444)
            tmp.replace(final)
            file_key = _file_key(final.stat())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return checksum, size, file_key

    def _lookup(self, ref: str, path: str) -> tuple[_Entry, str]:
        """The entry of ``path`` at ``ref`` and where it lives (a short commit id, or staging)."""
        validate_path(path)
        with self._tx() as conn:
            resolved = self._resolve(conn, ref)
            if resolved.staging_branch is not None:
                staged = conn.execute(
                    "SELECT checksum, size, mtime, content_type FROM staging "
                    "WHERE repository = ? AND branch = ? AND path = ?",
                    (self.repository, resolved.staging_branch, path),
                ).fetchone()
                if staged is not None:
                    if staged[0] is None:
                        raise NotFoundError(f"object {path!r} not found at {ref!r} (deleted)")
                    return _Entry(*staged), f"branch {resolved.staging_branch!r} (uncommitted)"
            _, tree, _ = self._commit_row(conn, resolved.commit_id)
            row = conn.execute(
                "SELECT checksum, size, mtime, content_type FROM tree_entries "
                "WHERE tree = ? AND path = ?",
                (tree, path),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"object {path!r} not found at ref {ref!r}")
            return _Entry(*row), f"commit {resolved.commit_id[:12]}"

    def _object_file(self, entry: _Entry, path: str, where: str) -> Path:
        file = self._object_path(entry.checksum)
        if not file.exists():
            raise CorruptObjectError(
                path, where, f"SHA-256 {entry.checksum}", "no object file", f"{file} is missing"
            )
        return file

    @override
    def open(self, ref: str, path: str) -> contextlib.AbstractContextManager[BinaryIO]:
        entry, where = self._lookup(ref, path)
        raw = self._object_file(entry, path, where).open("rb")
        reader = VerifyingReader(cast(BinaryIO, raw), entry.checksum, entry.size, path, where)
        return cast(contextlib.AbstractContextManager[BinaryIO], reader)

    def physical_path(self, ref: str, path: str) -> Path:
        """The object file behind ``path`` at ``ref``, unchecked (lakeFS's physical address).

        For callers that serve ranges of it (the lakeFS double in the tests); everything else
        reads through `open` or `raster_location`, which check the bytes.
        """
        entry, _ = self._lookup(ref, path)
        return self._object_path(entry.checksum)

    def verify_object(self, checksum: str, path: str, where: str) -> Path:
        """Hash the object file once (or trust an unchanged file hashed before); return it."""
        file = self._object_path(checksum)
        try:
            key = _file_key(file.stat())
        except FileNotFoundError:
            raise CorruptObjectError(
                path, where, f"SHA-256 {checksum}", "no object file", f"{file} is missing"
            ) from None
        with self._tx() as conn:
            row = conn.execute(
                "SELECT file_key FROM verified_objects WHERE checksum = ?", (checksum,)
            ).fetchone()
        if row is not None and row[0] == key:
            return file
        actual = _sha256_file(file)
        if actual != checksum:
            raise CorruptObjectError(path, where, f"SHA-256 {checksum}", f"SHA-256 {actual}")
        with self._tx(write=True) as conn:
            conn.execute("INSERT OR REPLACE INTO verified_objects VALUES (?, ?)", (checksum, key))
        return file

    @override
    def stat(self, ref: str, path: str) -> ObjectStat:
        e, _ = self._lookup(ref, path)
        return ObjectStat(path, e.size, e.checksum, e.mtime, e.content_type)

    @override
    def list(self, ref: str, prefix: str = "") -> Iterator[ObjectStat]:
        with self._tx() as conn:
            view = self._view(conn, ref, prefix)
        for path, e in view.items():
            yield ObjectStat(path, e.size, e.checksum, e.mtime, e.content_type)

    @override
    def list_prefixes(self, ref: str, prefix: str = "") -> list[str]:
        found: set[str] = set()
        for stat in self.list(ref, prefix):
            rest = stat.path[len(prefix) :]
            if "/" in rest:
                found.add(prefix + rest.split("/", 1)[0] + "/")
        return sorted(found)

    @override
    def delete(self, branch: str, path: str) -> None:
        validate_path(path)
        with self._tx(write=True) as conn:
            head = self._branch_head(conn, branch)
            staged = self._staged(conn, branch, path)
            _, tree, _ = self._commit_row(conn, head)
            committed = conn.execute(
                "SELECT 1 FROM tree_entries WHERE tree = ? AND path = ?", (tree, path)
            ).fetchone()
            if (path in staged and staged[path] is None) or (path not in staged and not committed):
                raise NotFoundError(f"object {path!r} not found on branch {branch!r}")
            if committed:
                conn.execute(
                    "INSERT OR REPLACE INTO staging VALUES (?, ?, ?, NULL, NULL, NULL, NULL)",
                    (self.repository, branch, path),
                )
            else:
                conn.execute(
                    "DELETE FROM staging WHERE repository = ? AND branch = ? AND path = ?",
                    (self.repository, branch, path),
                )

    @override
    def uncommitted(self, branch: str, prefix: str = "") -> list[Change]:
        with self._tx() as conn:
            head = self._branch_head(conn, branch)
            _, tree, _ = self._commit_row(conn, head)
            committed = self._tree_entries(conn, tree, prefix)
            staged_view = self._view(conn, branch, prefix)
        return self._changes(committed, staged_view)

    @override
    def reset(self, branch: str, prefix: str = "") -> None:
        with self._tx(write=True) as conn:
            self._branch_head(conn, branch)
            conn.execute(
                "DELETE FROM staging "
                "WHERE repository = ? AND branch = ? AND path >= ? AND path < ?",
                (self.repository, branch, prefix, _prefix_upper(prefix)),
            )

    # History -------------------------------------------------------------------------------

    @override
    def commit(
        self,
        branch: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
        allow_empty: bool = False,
    ) -> Commit:
        if not message.strip():
            raise InvalidNameError("a commit needs a non-empty message")
        with self._tx(write=True) as conn:
            head = self._branch_head(conn, branch)
            _, tree, _ = self._commit_row(conn, head)
            before = self._tree_entries(conn, tree)
            after = self._view(conn, branch)
            if not allow_empty and not self._changes(before, after):
                raise NoChangesError(
                    f"commit on branch {branch!r}: no changes (nothing staged differs from "
                    f"{head[:12]})"
                )
            new_tree = self._write_tree(conn, after)
            commit = self._write_commit(conn, [head], new_tree, message, metadata or {})
            conn.execute(
                "UPDATE branches SET commit_id = ? WHERE repository = ? AND name = ?",
                (commit.id, self.repository, branch),
            )
            conn.execute(
                "DELETE FROM staging WHERE repository = ? AND branch = ?", (self.repository, branch)
            )
            return commit

    @override
    def get_commit(self, ref: str) -> Commit:
        with self._tx() as conn:
            return self._commit_row(conn, self._resolve(conn, ref).commit_id)[0]

    @override
    def log(
        self, ref: str, prefixes: list[str] | None = None, limit: int | None = None
    ) -> Iterator[Commit]:
        with self._tx() as conn:
            start = self._resolve(conn, ref).commit_id
            out: list[Commit] = []
            seen = {start}
            commit, tree, generation = self._commit_row(conn, start)
            heap = [(-generation, -commit.creation_date, start)]
            while heap and (limit is None or len(out) < limit):
                _, _, commit_id = heapq.heappop(heap)
                commit, tree, _ = self._commit_row(conn, commit_id)
                if prefixes is None or self._touches(conn, commit, tree, prefixes):
                    out.append(commit)
                for parent in commit.parents:
                    if parent not in seen:
                        seen.add(parent)
                        parent_commit, _, parent_gen = self._commit_row(conn, parent)
                        heapq.heappush(heap, (-parent_gen, -parent_commit.creation_date, parent))
        yield from out

    def _touches(
        self, conn: sqlite3.Connection, commit: Commit, tree: str, prefixes: list[str]
    ) -> bool:
        parent_tree = (
            self._commit_row(conn, commit.parents[0])[1] if commit.parents else _EMPTY_TREE
        )
        return any(
            self._changes(
                self._tree_entries(conn, parent_tree, prefix),
                self._tree_entries(conn, tree, prefix),
            )
            for prefix in prefixes
        )

    @override
    def diff(self, left: str, right: str, prefix: str = "") -> list[Change]:
        with self._tx() as conn:
            before = self._view(conn, left, prefix)
            after = self._view(conn, right, prefix)
        return self._changes(before, after)

    def _merge_base(self, conn: sqlite3.Connection, a: str, b: str) -> str | None:
        ancestors_a: set[str] = set()
        stack = [a]
        while stack:
            commit_id = stack.pop()
            if commit_id not in ancestors_a:
                ancestors_a.add(commit_id)
                stack.extend(self._commit_row(conn, commit_id)[0].parents)
        commit, _, generation = self._commit_row(conn, b)
        heap = [(-generation, -commit.creation_date, b)]
        seen = {b}
        while heap:
            _, _, commit_id = heapq.heappop(heap)
            if commit_id in ancestors_a:
                return commit_id
            for parent in self._commit_row(conn, commit_id)[0].parents:
                if parent not in seen:
                    seen.add(parent)
                    parent_commit, _, parent_gen = self._commit_row(conn, parent)
                    heapq.heappush(heap, (-parent_gen, -parent_commit.creation_date, parent))
        return None

    @override
    def merge_base(self, source: str, destination: str) -> str:
        with self._tx() as conn:
            a = self._resolve(conn, source).commit_id
            b = self._resolve(conn, destination).commit_id
            base = self._merge_base(conn, a, b)
        if base is None:
            raise NotFoundError(f"{source!r} and {destination!r} share no history")
        return base

    @override
    def merge(
        self,
        source: str,
        destination: str,
        message: str | None = None,
        metadata: Mapping[str, str] | None = None,
        strategy: MergeStrategy | None = None,
    ) -> str:
        strategy = MergeStrategy(strategy) if strategy is not None else None
        with self._tx(write=True) as conn:
            dest_head = self._branch_head(conn, destination)
            if self._staged(conn, destination):
                raise DirtyBranchError(
                    f"merge into {destination!r}: the branch has uncommitted changes "
                    "(dirty branch); commit or reset them first"
                )
            source_commit = self._resolve(conn, source).commit_id
            if source_commit == dest_head:
                raise NoChangesError(
                    f"merge {source!r} into {destination!r}: no changes (same commit)"
                )
            base = self._merge_base(conn, source_commit, dest_head)
            if base is None:
                raise NotFoundError(
                    f"merge {source!r} into {destination!r}: the refs share no history"
                )
            base_entries = self._tree_entries(conn, self._commit_row(conn, base)[1])
            source_entries = self._tree_entries(conn, self._commit_row(conn, source_commit)[1])
            result = self._tree_entries(conn, self._commit_row(conn, dest_head)[1])
            conflicts: list[str] = []
            source_changed = 0
            for change in self._changes(base_entries, source_entries):
                source_changed += 1
                base_entry = base_entries.get(change.path)
                src_entry = source_entries.get(change.path)
                dst_entry = result.get(change.path)
                if _identity(dst_entry) == _identity(base_entry) or (
                    strategy is MergeStrategy.SOURCE_WINS
                ):
                    take = src_entry
                elif _identity(dst_entry) == _identity(src_entry) or (
                    strategy is MergeStrategy.DEST_WINS
                ):
                    take = dst_entry
                else:
                    conflicts.append(change.path)
                    continue
                if take is None:
                    result.pop(change.path, None)
                else:
                    result[change.path] = take
            if conflicts:
                raise MergeConflictError(source, destination, conflicts)
            if source_changed == 0:
                raise NoChangesError(
                    f"merge {source!r} into {destination!r}: no changes since the merge base"
                )
            tree = self._write_tree(conn, result)
            merged_metadata = dict(metadata or {})
            merged_metadata[".lakefs.merge.strategy"] = strategy.value if strategy else "default"
            commit = self._write_commit(
                conn,
                [dest_head, source_commit],
                tree,
                message or f"Merge '{source}' into '{destination}'",
                merged_metadata,
            )
            conn.execute(
                "UPDATE branches SET commit_id = ? WHERE repository = ? AND name = ?",
                (commit.id, self.repository, destination),
            )
            return commit.id

    # Raster access -------------------------------------------------------------------------

    @override
    def raster_location(self, ref: str, path: str) -> RasterLocation:
        entry, where = self._lookup(ref, path)
        return RasterLocation(str(self.verify_object(entry.checksum, path, where)))

    # Integrity and garbage -------------------------------------------------------------------

    def _referenced(
        self, conn: sqlite3.Connection, every_repository: bool = False
    ) -> dict[str, tuple[str, str]]:
        """Every checksum a commit or a staged change references, with one (path, where).

        Repositories under one root share their objects: garbage collection asks for all of
        them (``every_repository``), `fsck` for this repository's.
        """
        staged_sql = "SELECT checksum, path, branch FROM staging WHERE checksum IS NOT NULL"
        committed_sql = (
            "SELECT e.checksum, e.path, c.id FROM tree_entries e JOIN commits c ON c.tree = e.tree"
        )
        if not every_repository:
            staged_sql += " AND repository = :repo"
            committed_sql += " WHERE c.repository = :repo"
        committed_sql += " ORDER BY c.creation_date"  # the newest commit names an object
        found: dict[str, tuple[str, str]] = {}
        for checksum, path, branch in conn.execute(staged_sql, {"repo": self.repository}):
            found.setdefault(str(checksum), (str(path), f"branch {branch!r} (uncommitted)"))
        for checksum, path, commit_id in conn.execute(committed_sql, {"repo": self.repository}):
            found[str(checksum)] = (str(path), f"commit {str(commit_id)[:12]}")
        return found

    @override
    def fsck(self, ref: str | None = None) -> FsckReport:
        """Hash every object the store references (``ref``: only those visible at ``ref``)."""
        with self._tx() as conn:
            if ref is None:
                wanted = self._referenced(conn)
            else:
                commit_id = self._resolve(conn, ref).commit_id
                wanted = {
                    e.checksum: (path, f"commit {commit_id[:12]}")
                    for path, e in self._view(conn, ref).items()
                }
        problems: list[IntegrityProblem] = []
        total = 0
        for checksum, (path, where) in sorted(wanted.items(), key=lambda kv: kv[1]):
            file = self._object_path(checksum)
            try:
                total += file.stat().st_size
                key = _file_key(file.stat())
                actual = _sha256_file(file)
            except FileNotFoundError:
                problems.append(IntegrityProblem(path, where, f"object file {file} is missing"))
                continue
            if actual != checksum:
                problems.append(
                    IntegrityProblem(
                        path,
                        where,
                        f"expected SHA-256 {checksum}, the stored bytes have SHA-256 {actual}",
                    )
                )
                continue
            with self._tx(write=True) as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO verified_objects VALUES (?, ?)", (checksum, key)
                )
        return FsckReport(len(wanted), total, problems, method="SHA-256 of every object")

    def collect_garbage(self, grace_s: float, dry_run: bool = False) -> ObjectGcReport:
        """Remove objects no commit or staged change references, older than ``grace_s``.

        Uploads left in ``tmp/`` by killed writers go too. The grace period protects uploads in
        flight: an object is written before the staged change that references it. A candidate
        is first moved aside and only deleted if it is still the old file, so an upload that
        renames the same bytes into place meanwhile keeps its object.
        """
        self._init()
        cutoff = time.time() - grace_s
        with self._tx() as conn:
            referenced = set(self._referenced(conn, every_repository=True))
        removed = freed = partial = 0
        for file in sorted(self._tmp.iterdir()):
            with contextlib.suppress(FileNotFoundError):
                if file.stat().st_mtime < cutoff:
                    partial += 1
                    if not dry_run:
                        file.unlink()
        for directory in sorted(p for p in self._objects.iterdir() if p.is_dir()):
            for file in sorted(directory.iterdir()):
                checksum = directory.name + file.name
                try:
                    info = file.stat()
                except FileNotFoundError:
                    continue
                if checksum in referenced or info.st_mtime >= cutoff:
                    continue
                if not dry_run:
                    aside = self._tmp / f"gc-{uuid.uuid4().hex}"
                    try:
                        file.replace(aside)
                    except FileNotFoundError:
                        continue
                    if aside.stat().st_mtime >= cutoff:  # re-uploaded meanwhile: put it back
                        aside.replace(file)
                        continue
                    aside.unlink()
                    with self._tx(write=True) as conn:
                        conn.execute("DELETE FROM verified_objects WHERE checksum = ?", (checksum,))
                removed += 1
                freed += info.st_size
        return ObjectGcReport(removed, freed, partial)
