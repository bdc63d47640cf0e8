"""A small HTTP double of the lakeFS REST API (and of its S3 gateway's read path) for tests.

No lakeFS server runs on the test machines, so `LakeFSStore` is exercised end to end against this:
a real HTTP server that speaks the routes, query parameters, status codes and JSON bodies of lakeFS
(``/api/v1``, bodies built from ``lakefs_sdk``'s own models) and delegates the semantics to
`EmbeddedStore`, so both legs of the contract suite share one behaviour. It checks HTTP basic
auth, decodes chunked uploads while streaming them, pages listings like lakeFS (``after`` /
``amount``), and serves ``GET``/``HEAD`` with ``Range`` on ``/<repository>/<ref>/<path>`` as the S3
gateway does, so GDAL's ``/vsis3/`` can read rasters from it. Only what the pipeline uses exists.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from lakefs_sdk.models.branch_creation import BranchCreation
from lakefs_sdk.models.commit import Commit as ApiCommit
from lakefs_sdk.models.commit_creation import CommitCreation
from lakefs_sdk.models.commit_list import CommitList
from lakefs_sdk.models.diff import Diff
from lakefs_sdk.models.diff_list import DiffList
from lakefs_sdk.models.find_merge_base_result import FindMergeBaseResult
from lakefs_sdk.models.merge import Merge
from lakefs_sdk.models.merge_result import MergeResult
from lakefs_sdk.models.object_stats import ObjectStats
from lakefs_sdk.models.object_stats_list import ObjectStatsList
from lakefs_sdk.models.pagination import Pagination
from lakefs_sdk.models.ref import Ref
from lakefs_sdk.models.ref_list import RefList
from lakefs_sdk.models.repository import Repository
from lakefs_sdk.models.repository_creation import RepositoryCreation
from lakefs_sdk.models.repository_list import RepositoryList
from lakefs_sdk.models.reset_creation import ResetCreation
from lakefs_sdk.models.tag_creation import TagCreation

from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.core.store.types import (
    AlreadyExistsError,
    Change,
    Commit,
    DirtyBranchError,
    InvalidNameError,
    MergeConflictError,
    MergeStrategy,
    NoChangesError,
    NotFoundError,
    ObjectStat,
    StoreError,
)


class _HTTPError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


def _message(status: int, text: str) -> _HTTPError:
    return _HTTPError(status, json.dumps({"message": text}))


class _ChunkedReader:
    """Reads a request body (Content-Length or chunked transfer encoding) as a stream."""

    def __init__(self, rfile: Any, length: int | None) -> None:
        self._rfile = rfile
        self._left = length  # None: chunked
        self._chunk_left = 0
        self._done = False

    def read(self, size: int = -1) -> bytes:
        if self._done:
            return b""
        if self._left is not None:
            n = self._left if size < 0 else min(size, self._left)
            data = self._rfile.read(n) if n else b""
            self._left -= len(data)
            self._done = self._left == 0
            return data
        if self._chunk_left == 0:
            line = self._rfile.readline().strip()
            self._chunk_left = int(line.split(b";")[0], 16)
            if self._chunk_left == 0:
                while self._rfile.readline().strip():  # trailers
                    pass
                self._done = True
                return b""
        n = self._chunk_left if size < 0 else min(size, self._chunk_left)
        data = self._rfile.read(n)
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            self._rfile.readline()  # CRLF after the chunk
        return data


@dataclass
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[..., Any]


class LakeFSDouble:
    """Serves the lakeFS API for every repository under one embedded-store root."""

    def __init__(self, root: Path, access_key_id: str, secret_access_key: str) -> None:
        self.root = root
        self.credentials = (access_key_id, secret_access_key)
        self.requests: list[str] = []  # "METHOD /path" of every request, for assertions
        # Faults to inject: [method, path regex, status, times left]; branches protected by a
        # lakeFS branch protection rule (uploads, deletes, resets and commits refused, merges not).
        self.faults: list[list[Any]] = []
        self.protected: set[str] = set()
        self._stores: dict[str, EmbeddedStore] = {}
        self._server: ThreadingHTTPServer | None = None
        self._routes = [
            _Route("GET", re.compile(r"^/repositories$"), self._list_repositories),
            _Route("POST", re.compile(r"^/repositories$"), self._create_repository),
            _Route("GET", re.compile(r"^/repositories/(?P<repo>[^/]+)$"), self._get_repository),
            _Route(
                "GET", re.compile(r"^/repositories/(?P<repo>[^/]+)/branches$"), self._list_branches
            ),
            _Route(
                "POST", re.compile(r"^/repositories/(?P<repo>[^/]+)/branches$"), self._create_branch
            ),
            _Route(
                "GET",
                re.compile(r"^/repositories/(?P<repo>[^/]+)/branches/(?P<b>[^/]+)$"),
                self._get_branch,
            ),
            _Route(
                "DELETE",
                re.compile(r"^/repositories/(?P<repo>[^/]+)/branches/(?P<b>[^/]+)$"),
                self._delete_branch,
            ),
            _Route(
                "PUT",
                re.compile(r"^/repositories/(?P<repo>[^/]+)/branches/(?P<b>[^/]+)$"),
                self._reset,
            ),
            _Route(
                "GET",
                re.compile(r"^/repositories/(?P<repo>[^/]+)/branches/(?P<b>[^/]+)/diff$"),
                self._diff_branch,
            ),
            _Route(
                "POST",
                re.compile(r"^/repositories/(?P<repo>[^/]+)/branches/(?P<b>[^/]+)/commits$"),
                self._commit,
            ),
            _Route(
                "POST",
                re.compile(r"^/repositories/(?P<repo>[^/]+)/branches/(?P<b>[^/]+)/objects$"),
                self._upload,
            ),
            _Route(
                "DELETE",
                re.compile(r"^/repositories/(?P<repo>[^/]+)/branches/(?P<b>[^/]+)/objects$"),
                self._delete_object,
            ),
            _Route(
                "GET",
                re.compile(r"^/repositories/(?P<repo>[^/]+)/commits/(?P<c>[^/]+)$"),
                self._get_commit,
            ),
            _Route(
                "GET",
                re.compile(r"^/repositories/(?P<repo>[^/]+)/refs/(?P<ref>[^/]+)/commits$"),
                self._log,
            ),
            _Route(
                "GET",
                re.compile(
                    r"^/repositories/(?P<repo>[^/]+)/refs/(?P<left>[^/]+)/diff/(?P<right>[^/]+)$"
                ),
                self._diff_refs,
            ),
            _Route(
                "GET",
                re.compile(
                    r"^/repositories/(?P<repo>[^/]+)/refs/(?P<src>[^/]+)/merge/(?P<dst>[^/]+)$"
                ),
                self._merge_base,
            ),
            _Route(
                "POST",
                re.compile(
                    r"^/repositories/(?P<repo>[^/]+)/refs/(?P<src>[^/]+)/merge/(?P<dst>[^/]+)$"
                ),
                self._merge,
            ),
            _Route(
                "GET",
                re.compile(r"^/repositories/(?P<repo>[^/]+)/refs/(?P<ref>[^/]+)/objects$"),
                self._get_object,
            ),
            _Route(
                "GET",
                re.compile(r"^/repositories/(?P<repo>[^/]+)/refs/(?P<ref>[^/]+)/objects/stat$"),
                self._stat_object,
            ),
            _Route(
                "GET",
                re.compile(r"^/repositories/(?P<repo>[^/]+)/refs/(?P<ref>[^/]+)/objects/ls$"),
                self._list_objects,
            ),
            _Route("GET", re.compile(r"^/repositories/(?P<repo>[^/]+)/tags$"), self._list_tags),
            _Route("POST", re.compile(r"^/repositories/(?P<repo>[^/]+)/tags$"), self._create_tag),
            _Route(
                "DELETE",
                re.compile(r"^/repositories/(?P<repo>[^/]+)/tags/(?P<t>[^/]+)$"),
                self._delete_tag,
            ),
        ]

    # Server lifecycle ----------------------------------------------------------------------

    def fail_next(self, method: str, path_pattern: str, status: int, times: int = 1) -> None:
        """Answer the next ``times`` matching requests with ``status`` (body unread, closed)."""
        self.faults.append([method, re.compile(path_pattern), status, times])

    def _injected_fault(self, method: str, path: str) -> int | None:
        for fault in self.faults:
            if fault[0] == method and fault[1].search(path) and fault[3] > 0:
                fault[3] -= 1
                return int(fault[2])
        return None

    def _refuse_protected(self, branch: str, action: str) -> None:
        if branch in self.protected:
            raise _message(403, f"cannot {action} protected branch")

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LakeFSDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _dispatch(self) -> None:
                double._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # Dispatch ------------------------------------------------------------------------------

    def _store(self, repo: str) -> EmbeddedStore:
        store = self._stores.get(repo)
        if store is None:
            store = EmbeddedStore(self.root, repo)
            if repo not in self._repository_names():
                raise _message(404, f"repository {repo!r}: not found")
            self._stores[repo] = store
        return store

    def _repository_names(self) -> list[str]:
        return EmbeddedStore.list_repositories(self.root)

    def _authorised(self, handler: BaseHTTPRequestHandler) -> bool:
        header = handler.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return (user, password) == self.credentials
        # The S3 gateway is signed with AWS SigV4 by GDAL; check the access key id it names.
        return f"Credential={self.credentials[0]}/" in header

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        query = parse_qs(url.query, keep_blank_values=True)
        self.requests.append(f"{handler.command} {url.path}")
        try:
            injected = self._injected_fault(handler.command, url.path)
            if injected is not None:
                raise _message(injected, "injected fault: slow down" if injected == 429 else "oops")
            if not self._authorised(handler):
                raise _message(401, "error authenticating request")
            if not url.path.startswith("/api/v1/"):
                self._s3_gateway(handler, url.path)
                return
            path = url.path[len("/api/v1") :]
            for route in self._routes:
                match = route.pattern.match(path)
                if route.method == handler.command and match:
                    params = {k: unquote(v) for k, v in match.groupdict().items()}
                    result = route.handler(handler, query, **params)
                    if result is not None:
                        status, content_type, body = result
                        self._send(handler, status, content_type, body)
                    return
            raise _message(404, f"no route for {handler.command} {path}")
        except _HTTPError as exc:
            # A request body may be left unread: close the connection rather than misread it.
            handler.close_connection = True
            self._send(handler, exc.status, "application/json", exc.body.encode())
        except MergeConflictError:
            body = MergeResult(reference="").to_json()
            self._send(handler, 409, "application/json", body.encode())
        except NotFoundError as exc:
            self._send(
                handler,
                404,
                "application/json",
                json.dumps({"message": f"{exc}: not found"}).encode(),
            )
        except AlreadyExistsError as exc:
            self._send(
                handler,
                409,
                "application/json",
                json.dumps({"message": f"{exc}: not unique"}).encode(),
            )
        except NoChangesError as exc:
            self._send(
                handler,
                400,
                "application/json",
                json.dumps({"message": f"{exc}: no changes"}).encode(),
            )
        except DirtyBranchError as exc:
            body = json.dumps({"message": f"{exc}: uncommitted changes (dirty branch)"})
            self._send(handler, 400, "application/json", body.encode())
        except (InvalidNameError, StoreError, ValueError) as exc:
            self._send(handler, 400, "application/json", json.dumps({"message": str(exc)}).encode())

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        if handler.close_connection:
            handler.send_header("Connection", "close")
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    @staticmethod
    def _json(status: int, model: Any) -> tuple[int, str, bytes]:
        return status, "application/json", model.to_json().encode()

    @staticmethod
    def _body(handler: BaseHTTPRequestHandler) -> dict[str, Any]:
        length = int(handler.headers.get("Content-Length") or 0)
        return json.loads(handler.rfile.read(length) or b"{}")

    @staticmethod
    def _q(query: dict[str, list[str]], name: str, default: str = "") -> str:
        return query.get(name, [default])[0]

    @staticmethod
    def _page(
        items: list[Any], key: Callable[[Any], str], query: dict[str, list[str]]
    ) -> tuple[list[Any], Any]:
        after = LakeFSDouble._q(query, "after")
        amount = int(LakeFSDouble._q(query, "amount") or 100)
        amount = 100 if amount <= 0 else min(amount, 1000)
        remaining = [i for i in items if key(i) > after] if after else items
        page, more = remaining[:amount], len(remaining) > amount
        pagination = Pagination(
            has_more=more,
            next_offset=key(page[-1]) if more else "",
            results=len(page),
            max_per_page=1000,
        )
        return page, pagination

    # Models --------------------------------------------------------------------------------

    @staticmethod
    def _commit_model(c: Commit) -> ApiCommit:
        return ApiCommit.from_dict(
            {
                "id": c.id,
                "parents": list(c.parents),
                "committer": c.committer,
                "message": c.message,
                "creation_date": int(c.creation_date),
                "meta_range_id": "",
                "metadata": c.metadata,
            }
        )

    @staticmethod
    def _stat_model(s: ObjectStat) -> ObjectStats:
        return ObjectStats(
            path=s.path,
            path_type="object",
            physical_address=f"local://{s.checksum}",
            checksum=s.checksum,
            size_bytes=s.size,
            mtime=int(s.mtime),
            content_type=s.content_type,
        )

    @staticmethod
    def _diff_model(c: Change) -> Diff:
        return Diff(type=c.type.value, path=c.path, path_type="object", size_bytes=c.size)

    def _diff_list(
        self, changes: list[Change], query: dict[str, list[str]]
    ) -> tuple[int, str, bytes]:
        page, pagination = self._page(changes, lambda c: c.path, query)
        return self._json(
            200,
            DiffList(pagination=pagination, results=[self._diff_model(c) for c in page]),
        )

    # Handlers ------------------------------------------------------------------------------

    def _list_repositories(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]]
    ) -> Any:
        repos = [self._repo_model(name) for name in self._repository_names()]
        page, pagination = self._page(repos, lambda r: r.id, query)
        return self._json(200, RepositoryList(pagination=pagination, results=page))

    def _repo_model(self, name: str) -> Repository:
        return Repository(
            id=name,
            creation_date=0,
            default_branch=self._store(name).default_branch(),
            storage_namespace=f"local://{name}",
        )

    def _create_repository(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]]
    ) -> Any:
        creation = RepositoryCreation.from_dict(self._body(handler))
        if creation.name in self._repository_names():
            raise _message(409, f"repository {creation.name!r} already exists: not unique")
        EmbeddedStore(self.root, creation.name).ensure_repository(creation.default_branch or "main")
        return self._json(201, self._repo_model(creation.name))

    def _get_repository(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str
    ) -> Any:
        return self._json(200, self._repo_model(repo))

    def _list_branches(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str
    ) -> Any:
        refs = [Ref(id=k, commit_id=v) for k, v in self._store(repo).list_branches().items()]
        page, pagination = self._page(refs, lambda r: r.id, query)
        return self._json(200, RefList(pagination=pagination, results=page))

    def _create_branch(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str
    ) -> Any:
        creation = BranchCreation.from_dict(self._body(handler))
        commit_id = self._store(repo).create_branch(creation.name, creation.source)
        return 201, "text/html", commit_id.encode()

    def _get_branch(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str, b: str
    ) -> Any:
        branches = self._store(repo).list_branches()
        if b not in branches:
            raise NotFoundError(f"branch {b!r}")
        return self._json(200, Ref(id=b, commit_id=branches[b]))

    def _delete_branch(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str, b: str
    ) -> Any:
        self._store(repo).delete_branch(b)
        return 204, "application/json", b""

    def _reset(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str, b: str
    ) -> Any:
        creation = ResetCreation.from_dict(self._body(handler))
        self._refuse_protected(b, "write to")
        store = self._store(repo)
        if creation.type == "reset":
            store.reset(b)
        elif creation.type in ("common_prefix", "object"):
            store.reset(b, creation.path or "")
        else:
            raise _message(400, "unknown reset type")
        return 204, "application/json", b""

    def _diff_branch(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str, b: str
    ) -> Any:
        return self._diff_list(self._store(repo).uncommitted(b, self._q(query, "prefix")), query)

    def _commit(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str, b: str
    ) -> Any:
        creation = CommitCreation.from_dict(self._body(handler))
        self._refuse_protected(b, "commit to")
        commit = self._store(repo).commit(
            b, creation.message, creation.metadata or {}, allow_empty=bool(creation.allow_empty)
        )
        return self._json(201, self._commit_model(commit))

    def _upload(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str, b: str
    ) -> Any:
        self._refuse_protected(b, "write to")
        length = handler.headers.get("Content-Length")
        if "multipart/form-data" in (handler.headers.get("Content-Type") or ""):
            raise _message(400, "this double accepts only raw (application/octet-stream) uploads")
        reader = _ChunkedReader(handler.rfile, int(length) if length is not None else None)
        content_type = handler.headers.get("Content-Type") or "application/octet-stream"
        stat = self._store(repo).put(b, self._q(query, "path"), reader, content_type)  # type: ignore[arg-type]
        return self._json(201, self._stat_model(stat))

    def _delete_object(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str, b: str
    ) -> Any:
        self._refuse_protected(b, "write to")
        self._store(repo).delete(b, self._q(query, "path"))
        return 204, "application/json", b""

    def _get_commit(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str, c: str
    ) -> Any:
        return self._json(200, self._commit_model(self._store(repo).get_commit(c)))

    def _log(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str, ref: str
    ) -> Any:
        prefixes = query.get("prefixes") or None
        commits = list(self._store(repo).log(ref, prefixes=prefixes))
        after = self._q(query, "after")
        if after:
            ids = [c.id for c in commits]
            commits = commits[ids.index(after) + 1 :] if after in ids else []
        amount = int(self._q(query, "amount") or 100)
        amount = 100 if amount <= 0 else min(amount, 1000)
        page, more = commits[:amount], len(commits) > amount and self._q(query, "limit") != "true"
        pagination = Pagination(
            has_more=more,
            next_offset=page[-1].id if more else "",
            results=len(page),
            max_per_page=1000,
        )
        results = [self._commit_model(c) for c in page]
        return self._json(200, CommitList(pagination=pagination, results=results))

    def _diff_refs(
        self,
        handler: BaseHTTPRequestHandler,
        query: dict[str, list[str]],
        repo: str,
        left: str,
        right: str,
    ) -> Any:
        if self._q(query, "type", "three_dot") != "two_dot":
            raise _message(400, "this double implements only type=two_dot diffs")
        return self._diff_list(self._store(repo).diff(left, right, self._q(query, "prefix")), query)

    def _merge_base(
        self,
        handler: BaseHTTPRequestHandler,
        query: dict[str, list[str]],
        repo: str,
        src: str,
        dst: str,
    ) -> Any:
        store = self._store(repo)
        result = FindMergeBaseResult(
            source_commit_id=store.resolve(src),
            destination_commit_id=store.resolve(dst),
            base_commit_id=store.merge_base(src, dst),
        )
        return self._json(200, result)

    def _merge(
        self,
        handler: BaseHTTPRequestHandler,
        query: dict[str, list[str]],
        repo: str,
        src: str,
        dst: str,
    ) -> Any:
        merge = Merge.from_dict(self._body(handler))
        if merge.strategy not in (None, "", "source-wins", "dest-wins"):
            raise _message(400, f"invalid merge strategy {merge.strategy!r}")
        strategy = MergeStrategy(merge.strategy) if merge.strategy else None
        ref = self._store(repo).merge(src, dst, merge.message, merge.metadata or {}, strategy)
        return self._json(200, MergeResult(reference=ref))

    def _get_object(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str, ref: str
    ) -> Any:
        self._stream(handler, self._store(repo), ref, self._q(query, "path"))

    def _stat_object(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str, ref: str
    ) -> Any:
        return self._json(
            200, self._stat_model(self._store(repo).stat(ref, self._q(query, "path")))
        )

    def _list_objects(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str, ref: str
    ) -> Any:
        store = self._store(repo)
        prefix = self._q(query, "prefix")
        if self._q(query, "delimiter") == "/":
            items: list[ObjectStats] = [
                ObjectStats(
                    path=p, path_type="common_prefix", physical_address="", checksum="", mtime=0
                )
                for p in store.list_prefixes(ref, prefix)
            ]
            items += [
                self._stat_model(s)
                for s in store.list(ref, prefix)
                if "/" not in s.path[len(prefix) :]
            ]
            items.sort(key=lambda o: o.path)
        else:
            items = [self._stat_model(s) for s in store.list(ref, prefix)]
        page, pagination = self._page(items, lambda o: o.path, query)
        return self._json(200, ObjectStatsList(pagination=pagination, results=page))

    def _list_tags(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str
    ) -> Any:
        refs = [Ref(id=k, commit_id=v) for k, v in self._store(repo).list_tags().items()]
        page, pagination = self._page(refs, lambda r: r.id, query)
        return self._json(200, RefList(pagination=pagination, results=page))

    def _create_tag(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str
    ) -> Any:
        creation = TagCreation.from_dict(self._body(handler))
        commit_id = self._store(repo).create_tag(creation.id, creation.ref)
        return self._json(201, Ref(id=creation.id, commit_id=commit_id))

    def _delete_tag(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], repo: str, t: str
    ) -> Any:
        self._store(repo).delete_tag(t)
        return 204, "application/json", b""

    # Object bytes (REST API and S3 gateway) ------------------------------------------------

    def _s3_gateway(self, handler: BaseHTTPRequestHandler, path: str) -> None:
        parts = unquote(path).lstrip("/").split("/", 2)
        if len(parts) < 3:
            raise _HTTPError(400, "<Error><Code>InvalidRequest</Code></Error>")
        repo, ref, key = parts
        try:
            self._stream(handler, self._store(repo), ref, key)
        except (NotFoundError, _HTTPError):
            body = "<Error><Code>NoSuchKey</Code></Error>"
            raise _HTTPError(404, body) from None

    def _stream(
        self, handler: BaseHTTPRequestHandler, store: EmbeddedStore, ref: str, path: str
    ) -> None:
        stat = store.stat(ref, path)
        start, end = 0, stat.size - 1
        status = 200
        header = handler.headers.get("Range")
        if header:
            match = re.match(r"bytes=(\d*)-(\d*)$", header.strip())
            if not match:
                raise _message(416, "invalid range")
            if match.group(1):
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else stat.size - 1
            else:
                start = max(0, stat.size - int(match.group(2)))
            end = min(end, stat.size - 1)
            if start > end:
                raise _message(416, "range not satisfiable")
            status = 206
        handler.send_response(status)
        handler.send_header("Content-Type", stat.content_type)
        handler.send_header("Content-Length", str(end - start + 1))
        handler.send_header("ETag", f'"{stat.checksum}"')
        handler.send_header("Accept-Ranges", "bytes")
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{end}/{stat.size}")
        handler.end_headers()
        if handler.command == "HEAD":
            return
        # The physical object, unchecked, as a storage backend serves it: the client checks it.
        with store.physical_path(ref, path).open("rb") as stream:
            stream.seek(start)
            for chunk in _chunks(stream, end - start + 1):
                handler.wfile.write(chunk)


def _chunks(stream: Any, length: int, size: int = 1 << 16) -> Iterator[bytes]:
    while length > 0:
        data = stream.read(min(size, length))
        if not data:
            return
        length -= len(data)
        yield data
