"""A `VersionedStore` backed by a real lakeFS server, through the official ``lakefs_sdk`` client.

Every call goes through the SDK's typed API classes, except the two byte streams: the SDK reads a
whole file into memory to upload it and returns whole bodies on download, so ``put`` and ``open``
send the same REST requests (``POST .../objects`` with a raw body, which lakeFS accepts besides
multipart, and ``GET .../objects``) through the SDK's own connection pool with
``preload_content=False``. Rasters are read either from a local cache keyed by the object checksum
or, with ``raster_access="s3_gateway"``, straight from lakeFS's S3 gateway through GDAL's
``/vsis3/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar, cast
from urllib.parse import quote, urlsplit

import urllib3
from lakefs_sdk.api.branches_api import BranchesApi
from lakefs_sdk.api.commits_api import CommitsApi
from lakefs_sdk.api.objects_api import ObjectsApi
from lakefs_sdk.api.refs_api import RefsApi
from lakefs_sdk.api.repositories_api import RepositoriesApi
from lakefs_sdk.api.tags_api import TagsApi
from lakefs_sdk.api_client import ApiClient
from lakefs_sdk.configuration import Configuration
from lakefs_sdk.exceptions import ApiException
from lakefs_sdk.models.branch_creation import BranchCreation
from lakefs_sdk.models.commit_creation import CommitCreation
from lakefs_sdk.models.merge import Merge
from lakefs_sdk.models.object_stats import ObjectStats
from lakefs_sdk.models.repository_creation import RepositoryCreation
from lakefs_sdk.models.reset_creation import ResetCreation
from lakefs_sdk.models.tag_creation import TagCreation
from typing_extensions import override
from urllib3.util import make_headers

from mlops_assets.core.redact import redact_text, redact_uri
from mlops_assets.core.store.base import (
    CHUNK_SIZE,
    RasterLocation,
    VerifyingReader,
    VersionedStore,
)
from mlops_assets.core.store.types import (
    AlreadyExistsError,
    Change,
    ChangeType,
    Commit,
    DirtyBranchError,
    InvalidNameError,
    MergeConflictError,
    MergeStrategy,
    NoChangesError,
    NotFoundError,
    ObjectStat,
    ProtectedBranchError,
    StoreError,
    StoreUnavailableError,
    validate_branch_name,
    validate_path,
    validate_repository_name,
    validate_tag_name,
)

T = TypeVar("T")
_PAGE = 1000


def _api_message(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        message = json.loads(body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.reason or f"HTTP {exc.status}")


def _raise_for_status(status: int, message: str, what: str) -> None:
    """Turn a lakeFS error status into the store's error type."""
    text = f"{what}: {message}"
    lowered = message.lower()
    if status == 403 and "protected branch" in lowered:
        raise ProtectedBranchError(
            f"{text}: the branch is protected (only merges may change it); write to another "
            "branch and merge it, or change the repository's branch protection rules"
        )
    if status == 404:
        raise NotFoundError(text)
    if status == 409:
        raise AlreadyExistsError(text)
    if status == 400 and "no changes" in lowered:
        raise NoChangesError(text)
    if status == 400 and "dirty branch" in lowered:
        raise DirtyBranchError(text)
    if status == 400:
        raise InvalidNameError(text)
    if status in (401, 403):
        raise StoreError(f"{text} (check LAKEFS_ACCESS_KEY_ID / LAKEFS_SECRET_ACCESS_KEY)")
    raise StoreError(f"{text} (HTTP {status})")


#: Statuses worth retrying: throttling (429) and a server or proxy that is restarting or overloaded.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Statuses that say the request was not processed, so any method may be retried (a POST commit or
#: merge that got a 500 or a 504 may have happened: those are retried for idempotent methods only).
_NOT_PROCESSED = frozenset({429, 502, 503})


class _LakeFSRetry(urllib3.Retry):
    """urllib3's retry with exponential backoff and jitter, and a per-method status rule."""

    @override
    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code in _NOT_PROCESSED:
            return True  # the counts (status, total) still bound the attempts
        return super().is_retry(method, status_code, has_retry_after)


def lakefs_retry(attempts: int = 4, backoff_s: float = 0.25, max_backoff_s: float = 8.0) -> Any:
    """The client's retry policy: ``attempts`` retries on 429/5xx and dropped connections.

    The waits grow as ``backoff_s * 2**n`` (capped at ``max_backoff_s``) plus up to ``backoff_s``
    of random jitter, and a ``Retry-After`` header is honoured. Reads (a response cut short) are
    retried for idempotent methods only; bodies are never resent (see ``LakeFSStore._raw``).
    """
    return _LakeFSRetry(
        total=attempts,
        connect=min(attempts, 2),
        read=min(attempts, 2),
        status=attempts,
        other=0,
        backoff_factor=backoff_s,
        backoff_max=max_backoff_s,
        backoff_jitter=backoff_s,
        status_forcelist=RETRY_STATUSES,
        respect_retry_after_header=True,
        raise_on_status=False,  # the last answer reaches _raise_for_status, which names it
    )


class _Body:
    """A file-like upload body that reads in fixed chunks (so urllib3 streams it)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def read(self, size: int = CHUNK_SIZE) -> bytes:
        return self._stream.read(min(size, CHUNK_SIZE) if size > 0 else CHUNK_SIZE)


class LakeFSStore(VersionedStore):
    """A `VersionedStore` on a lakeFS server."""

    def __init__(
        self,
        endpoint: str,
        access_key_id: str,
        secret_access_key: str,
        repository: str,
        storage_namespace: str | None = None,
        raster_access: Literal["cache", "s3_gateway"] = "cache",
        cache_dir: str | Path | None = None,
        timeout_s: float = 60.0,
        verify_etags: bool = True,
        retry_attempts: int = 4,
    ) -> None:
        super().__init__(validate_repository_name(repository))
        endpoint = endpoint.rstrip("/")
        if not urlsplit(endpoint).scheme:
            endpoint = f"http://{endpoint}"
        self.endpoint = endpoint.removesuffix("/api/v1")
        self._shown_endpoint = redact_uri(self.endpoint)  # for messages: never a secret
        self.storage_namespace = storage_namespace or f"local://{repository}"
        self.raster_access = raster_access
        self.cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "lakefs"
        self.timeout_s = timeout_s
        # An ETag that is not the content's MD5 (an object store encrypting with SSE-KMS) would
        # fail every download: such a deployment turns the content check off (sizes stay checked).
        self.verify_etags = verify_etags
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        config = Configuration(
            host=f"{self.endpoint}/api/v1", username=access_key_id, password=secret_access_key
        )
        # lakefs_sdk passes `retries` to urllib3's PoolManager (typed None, used as Retry | bool).
        config.retries = lakefs_retry(retry_attempts) if retry_attempts > 0 else False  # pyright: ignore[reportAttributeAccessIssue]
        self._client = ApiClient(config)
        self._repos = RepositoriesApi(self._client)
        self._branches = BranchesApi(self._client)
        self._commits = CommitsApi(self._client)
        self._refs = RefsApi(self._client)
        self._objects = ObjectsApi(self._client)
        self._tags = TagsApi(self._client)

    def __repr__(self) -> str:  # never show the credentials
        return f"LakeFSStore(endpoint={self._shown_endpoint!r}, repository={self.repository!r})"

    # Plumbing ------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, _request_timeout=self.timeout_s, **kwargs)
        except ApiException as exc:
            _raise_for_status(int(exc.status or 0), _api_message(exc), what)
            raise  # unreachable: _raise_for_status always raises
        except urllib3.exceptions.HTTPError as exc:
            raise StoreUnavailableError(
                f"{what}: lakeFS at {self._shown_endpoint} unreachable: {redact_text(str(exc))}"
            ) from exc

    def _paginate(
        self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Iterator[Any]:
        after = ""
        while True:
            page = self._call(what, fn, *args, after=after, amount=_PAGE, **kwargs)
            yield from page.results
            if not page.pagination.has_more:
                return
            after = page.pagination.next_offset

    def _raw(self, method: str, route: str, query: Mapping[str, str], **kwargs: Any) -> Any:
        """A request the SDK cannot stream, sent through the SDK's own pool and credentials."""
        url = f"{self.endpoint}/api/v1{route}?" + "&".join(
            f"{k}={quote(v, safe='')}" for k, v in query.items()
        )
        headers = make_headers(basic_auth=f"{self._access_key_id}:{self._secret_access_key}")
        headers.update(kwargs.pop("headers", {}))
        pool = self._client.rest_client.pool_manager
        if "body" in kwargs:
            # A streamed body cannot be sent twice: only a refused connection is retried here;
            # a failed upload fails the step, whose RetryPolicy writes the object again.
            kwargs.setdefault("retries", urllib3.Retry(total=2, connect=2, read=0, status=0))
        try:
            response = pool.request(
                method,
                url,
                headers=headers,
                preload_content=False,
                timeout=urllib3.Timeout(connect=self.timeout_s, read=self.timeout_s),
                **kwargs,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise StoreUnavailableError(
                f"{method} {route}: lakeFS at {self._shown_endpoint} unreachable: "
                f"{redact_text(str(exc))}"
            ) from exc
        if response.status >= 300:
            body = response.read()
            response.release_conn()
            try:
                message = str(json.loads(body or b"{}").get("message") or response.reason)
            except ValueError:
                message = str(response.reason)
            _raise_for_status(response.status, message, f"{method} {route} {dict(query)}")
        return response

    @staticmethod
    def _stat(obj: Any) -> ObjectStat:
        return ObjectStat(
            path=obj.path,
            size=int(obj.size_bytes or 0),
            checksum=obj.checksum,
            mtime=float(obj.mtime),
            content_type=obj.content_type or "application/octet-stream",
        )

    @staticmethod
    def _commit(obj: Any) -> Commit:
        return Commit(
            id=obj.id,
            parents=tuple(obj.parents or ()),
            message=obj.message,
            metadata=dict(obj.metadata or {}),
            committer=obj.committer or "",
            creation_date=float(obj.creation_date),
        )

    @staticmethod
    def _change(diff: Any) -> Change | None:
        kinds = {
            "added": ChangeType.ADDED,
            "removed": ChangeType.REMOVED,
            "changed": ChangeType.CHANGED,
        }
        if diff.path_type != "object" or diff.type not in kinds:
            return None
        return Change(diff.path, kinds[diff.type], diff.size_bytes)

    # Repository and refs -------------------------------------------------------------------

    @override
    def ensure_repository(self, default_branch: str = "main") -> None:
        validate_branch_name(default_branch)
        try:
            self._call("get repository", self._repos.get_repository, self.repository)
        except NotFoundError:
            creation = RepositoryCreation(
                name=self.repository,
                storage_namespace=self.storage_namespace,
                default_branch=default_branch,
            )
            with contextlib.suppress(AlreadyExistsError):  # created meanwhile by someone else
                self._call("create repository", self._repos.create_repository, creation)

    @override
    def default_branch(self) -> str:
        repo = self._call("get repository", self._repos.get_repository, self.repository)
        return str(repo.default_branch)

    @override
    def resolve(self, ref: str) -> str:
        return self.get_commit(ref).id

    @override
    def create_branch(self, name: str, source: str) -> str:
        validate_branch_name(name)
        creation = BranchCreation(name=name, source=source)
        self._call(
            f"create branch {name!r}", self._branches.create_branch, self.repository, creation
        )
        return self.resolve(name)

    @override
    def delete_branch(self, name: str) -> None:
        self._call(f"delete branch {name!r}", self._branches.delete_branch, self.repository, name)

    @override
    def list_branches(self) -> dict[str, str]:
        refs = self._paginate("list branches", self._branches.list_branches, self.repository)
        return {r.id: r.commit_id for r in refs}

    @override
    def create_tag(self, name: str, ref: str) -> str:
        validate_tag_name(name)
        creation = TagCreation(id=name, ref=ref)
        tag = self._call(f"create tag {name!r}", self._tags.create_tag, self.repository, creation)
        return str(tag.commit_id)

    @override
    def delete_tag(self, name: str) -> None:
        self._call(f"delete tag {name!r}", self._tags.delete_tag, self.repository, name)

    @override
    def list_tags(self) -> dict[str, str]:
        refs = self._paginate("list tags", self._tags.list_tags, self.repository)
        return {r.id: r.commit_id for r in refs}

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
        route = f"/repositories/{quote(self.repository)}/branches/{quote(branch, safe='')}/objects"
        with contextlib.ExitStack() as stack:
            headers = {"Content-Type": content_type}
            if isinstance(source, Path):
                headers["Content-Length"] = str(source.stat().st_size)
                stream: BinaryIO = stack.enter_context(source.open("rb"))
            else:
                stream = source
            response = self._raw("POST", route, {"path": path}, body=_Body(stream), headers=headers)
            payload = response.read()
            response.release_conn()
        return self._stat(ObjectStats.from_json(payload.decode()))

    @contextlib.contextmanager
    def _open(self, ref: str, path: str) -> Generator[BinaryIO, None, None]:
        validate_path(path)
        route = f"/repositories/{quote(self.repository)}/refs/{quote(ref, safe='')}/objects"
        response = self._raw("GET", route, {"path": path})
        try:
            # lakeFS sends the object's recorded checksum as its ETag: check the bytes against it.
            etag = str(response.headers.get("ETag") or "") if self.verify_etags else ""
            length = response.headers.get("Content-Length")
            yield cast(
                BinaryIO,
                VerifyingReader(
                    cast(BinaryIO, response),
                    etag,
                    int(length) if length and length.isdigit() else None,
                    path,
                    f"ref {ref!r}",
                ),
            )
        finally:
            response.release_conn()

    @override
    def open(self, ref: str, path: str) -> contextlib.AbstractContextManager[BinaryIO]:
        return self._open(ref, path)

    @override
    def stat(self, ref: str, path: str) -> ObjectStat:
        validate_path(path)
        obj = self._call(
            f"stat {path!r} at {ref!r}", self._objects.stat_object, self.repository, ref, path
        )
        return self._stat(obj)

    @override
    def list(self, ref: str, prefix: str = "") -> Iterator[ObjectStat]:
        for obj in self._paginate(
            f"list {prefix!r} at {ref!r}",
            self._objects.list_objects,
            self.repository,
            ref,
            prefix=prefix,
        ):
            if obj.path_type == "object":
                yield self._stat(obj)

    @override
    def list_prefixes(self, ref: str, prefix: str = "") -> list[str]:
        found = self._paginate(
            f"list {prefix!r} at {ref!r}",
            self._objects.list_objects,
            self.repository,
            ref,
            prefix=prefix,
            delimiter="/",
        )
        return sorted(obj.path for obj in found if obj.path_type == "common_prefix")

    @override
    def delete(self, branch: str, path: str) -> None:
        validate_path(path)
        self._call(
            f"delete {path!r} on {branch!r}",
            self._objects.delete_object,
            self.repository,
            branch,
            path,
        )

    @override
    def uncommitted(self, branch: str, prefix: str = "") -> list[Change]:
        diffs = self._paginate(
            f"uncommitted changes on {branch!r}",
            self._branches.diff_branch,
            self.repository,
            branch,
            prefix=prefix,
        )
        return [c for c in map(self._change, diffs) if c is not None]

    @override
    def reset(self, branch: str, prefix: str = "") -> None:
        creation = (
            ResetCreation(type="common_prefix", path=prefix)
            if prefix
            else ResetCreation(type="reset")
        )
        self._call(
            f"reset {branch!r}", self._branches.reset_branch, self.repository, branch, creation
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
        creation = CommitCreation(
            message=message, metadata=dict(metadata or {}), allow_empty=allow_empty
        )
        commit = self._call(
            f"commit on branch {branch!r}", self._commits.commit, self.repository, branch, creation
        )
        return self._commit(commit)

    @override
    def get_commit(self, ref: str) -> Commit:
        page = self._call(
            f"resolve ref {ref!r}",
            self._refs.log_commits,
            self.repository,
            ref,
            amount=1,
            limit=True,
        )
        if not page.results:
            raise NotFoundError(f"ref {ref!r} not found in repository {self.repository!r}")
        return self._commit(page.results[0])

    @override
    def log(
        self, ref: str, prefixes: list[str] | None = None, limit: int | None = None
    ) -> Iterator[Commit]:
        kwargs: dict[str, Any] = {"prefixes": prefixes} if prefixes else {}
        for count, commit in enumerate(
            self._paginate(f"log {ref!r}", self._refs.log_commits, self.repository, ref, **kwargs)
        ):
            if limit is not None and count >= limit:
                return
            yield self._commit(commit)

    @override
    def diff(self, left: str, right: str, prefix: str = "") -> list[Change]:
        diffs = self._paginate(
            f"diff {left!r}..{right!r}",
            self._refs.diff_refs,
            self.repository,
            left,
            right,
            prefix=prefix,
            type="two_dot",
        )
        return [c for c in map(self._change, diffs) if c is not None]

    @override
    def merge_base(self, source: str, destination: str) -> str:
        result = self._call(
            f"merge base of {source!r} and {destination!r}",
            self._refs.find_merge_base,
            self.repository,
            source,
            destination,
        )
        return str(result.base_commit_id)

    @override
    def merge(
        self,
        source: str,
        destination: str,
        message: str | None = None,
        metadata: Mapping[str, str] | None = None,
        strategy: MergeStrategy | None = None,
    ) -> str:
        merge = Merge(
            message=message or f"Merge '{source}' into '{destination}'",
            metadata=dict(metadata or {}),
            strategy=MergeStrategy(strategy).value if strategy else None,
        )
        what = f"merge {source!r} into {destination!r}"
        try:
            result = self._call(
                what, self._refs.merge_into_branch, self.repository, source, destination, merge
            )
        except AlreadyExistsError as exc:  # lakeFS answers 409 for a conflict
            raise MergeConflictError(
                source, destination, self._conflicts(source, destination)
            ) from exc
        return str(result.reference)

    def _conflicts(self, source: str, destination: str) -> list[str]:
        """The paths changed on both sides since the merge base (lakeFS's 409 omits them)."""
        base = self.merge_base(source, destination)
        ours = {c.path for c in self.diff(base, destination)}
        theirs = {c.path for c in self.diff(base, source)}
        conflicts: list[str] = []
        for path in sorted(ours & theirs):
            src = self.stat(source, path).checksum if self.exists(source, path) else None
            dst = self.stat(destination, path).checksum if self.exists(destination, path) else None
            if src != dst:
                conflicts.append(path)
        return conflicts

    # Raster access -------------------------------------------------------------------------

    @override
    def raster_location(self, ref: str, path: str) -> RasterLocation:
        if self.raster_access == "s3_gateway":
            commit_id = self.resolve(ref)
            self.stat(commit_id, path)  # fail here, with a clear message, if it is missing
            parts = urlsplit(self.endpoint)
            return RasterLocation(
                f"/vsis3/{self.repository}/{commit_id}/{path}",
                {
                    "AWS_S3_ENDPOINT": parts.netloc,
                    "AWS_HTTPS": "YES" if parts.scheme == "https" else "NO",
                    "AWS_VIRTUAL_HOSTING": "FALSE",
                    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
                },
                aws_credentials=(self._access_key_id, self._secret_access_key),
            )
        stat = self.stat(ref, path)
        suffix = Path(path).suffix
        cached = self.cache_dir / stat.checksum.replace("/", "_") / f"object{suffix}"
        if not cached.exists():
            cached.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=cached.parent, suffix=".part")
            os.close(fd)
            try:
                self.download(ref, path, Path(tmp_name))
                Path(tmp_name).replace(cached)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
        return RasterLocation(str(cached))
