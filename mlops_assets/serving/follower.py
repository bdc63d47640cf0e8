"""Keep serving whatever version a registry alias points to, without a restart.

`AliasFollower` polls the registry; when the alias has moved it loads the new version and swaps
it in only once it has loaded (requests in flight finish on the version they started with, and a
version that fails to load leaves the old one serving). Nothing outside has to restart anything:
promotion in ``cd/registered_model`` moves ``champion``, and the server follows within one poll.

Each distinct problem (no such model or alias, a registry that does not answer, a version that
fails to load) is logged once, redacted, when it first appears, and shown on ``/health`` and
``/version`` for as long as it lasts: a server started with a mistyped ``NAME@ALIAS`` says so in
its log, not only with a 503.

`build_app` answers MLflow's scoring protocol (``/invocations``, ``/ping``, ``/health``,
``/version``) with MLflow's own request parsing (``mlflow.pyfunc.scoring_server.invocations``),
so a client of ``mlflow models serve`` works unchanged. A body over ``max_body_bytes`` is
answered 413 before it is read (from its Content-Length, or as soon as a chunked body passes the
limit): MLflow parses the whole JSON into Python objects, several times the body's size, before
the model can check anything. Errors are JSON ``{"error_code", "message"}`` with their HTTP
status; an unexpected one is logged here with its traceback and answered 500 without it.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time,
# and `Request` is imported inside `build_app`.
import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlops_assets.core.redact import redact_text

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedVersion:
    """The version being served and when it was loaded."""

    version: str
    run_id: str
    model: Any  # an mlflow.pyfunc.PyFuncModel
    loaded_at: float  # time.time()


#: Where the alias points now: (version, run id), or None when it points nowhere.
Resolver = Callable[[], tuple[str, str] | None]
#: Loads one version (its number) as a pyfunc model.
Loader = Callable[[str], Any]

#: Largest /invocations body read by default: 64 MiB. MLflow parses the whole JSON into Python
#: objects, up to about 25 bytes of them per body byte: a 62 MiB body of 4-byte numbers such as
#: ``0.5,`` took the server from 0.9 to 2.4 GiB peak RSS, so with one request at a time it stays
#: under 2.5 GiB whatever the body holds. A full `MAX_PIXELS` request (1 Mpx, 4 bands of uint16
#: values) is 62 MiB of JSON and peaked at 1.7 GiB (``python -m benchmarks --only serving-rss``).
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
#: Requests read and predicted at once by default; the others wait, their bodies unread. One:
#: inference already uses every core (torch), and each parsed body can take 1.5 GiB.
DEFAULT_MAX_CONCURRENT = 1


class AliasNotServableError(LookupError):
    """The alias names no version, or the model does not exist; the message says which."""


class AliasFollower:
    """The model under ``name@alias``, reloaded when the alias moves."""

    def __init__(self, name: str, alias: str, resolve: Resolver, load: Loader) -> None:
        self.name = name
        self.alias = alias
        self._resolve = resolve
        self._load = load
        self.current: ServedVersion | None = None  # replaced whole: readers need no lock
        self.last_error: str | None = None
        self.last_poll: float | None = None
        self._lock = threading.Lock()  # one poll at a time

    def poll(self) -> bool:
        """Look the alias up; load and swap in the version it names if new. True if swapped."""
        with self._lock:
            self.last_poll = time.time()
            try:
                target = self._resolve()
            except AliasNotServableError as exc:  # a mistyped name or alias, or a deleted alias
                return self._failed(redact_text(str(exc)))
            except Exception as exc:  # registry unreachable: keep serving what we have
                return self._failed(f"registry lookup failed: {redact_text(str(exc))}")
            if target is None:
                return self._failed(f"no version of {self.name!r} under alias {self.alias!r}")
            version, run_id = target
            if self.current is not None and self.current.version == version:
                self.last_error = None
                return False
            try:
                model = self._load(version)
            except Exception as exc:
                # The message, redacted; not the traceback, whose frames may hold credentials.
                return self._failed(f"v{version} failed to load: {redact_text(str(exc))}")
            before = None if self.current is None else self.current.version
            self.current = ServedVersion(version, run_id, model, time.time())
            self.last_error = None
            _log.info("%s@%s: serving v%s (was %s)", self.name, self.alias, version, before)
            return True

    def _failed(self, message: str) -> bool:
        """Record why this poll served nothing new; log it once, when it first appears."""
        if message != self.last_error:
            serving = "nothing" if self.current is None else f"v{self.current.version}"
            _log.warning("%s@%s: %s (serving %s)", self.name, self.alias, message, serving)
        self.last_error = message
        return False

    def follow(self, interval: float, stop: threading.Event) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            self.poll()
            stop.wait(interval)

    def status(self) -> dict[str, Any]:
        """What ``/version`` shows."""
        import mlflow

        current = self.current
        return {
            "model": self.name,
            "alias": self.alias,
            "version": None if current is None else current.version,
            "run_id": None if current is None else current.run_id,
            "loaded_at": None if current is None else current.loaded_at,
            "last_poll": self.last_poll,
            "last_error": self.last_error,
            "mlflow": mlflow.__version__,
        }


def registry_follower(tracking_uri: str, name: str, alias: str) -> AliasFollower:
    """A follower of ``name@alias`` in the registry at ``tracking_uri``."""
    from mlops_assets.core.tracking import AliasNotFoundError, Tracker, load_pyfunc_model

    tracker = Tracker(tracking_uri, "serving")

    def resolve() -> tuple[str, str] | None:
        try:
            found = tracker.require_alias(name, alias)
        except AliasNotFoundError as exc:  # says whether the model or the alias is missing
            raise AliasNotServableError(str(exc)) from None
        return str(found.version), str(found.run_id)

    def load(version: str) -> Any:
        return load_pyfunc_model(tracker, f"models:/{name}/{version}")

    return AliasFollower(name, alias, resolve, load)


def build_app(
    follower: AliasFollower,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
) -> Any:
    """The FastAPI app: MLflow's scoring protocol over the follower's current version.

    ``/invocations`` answers 413 to a body over ``max_body_bytes`` without reading it, and
    reads and predicts at most ``max_concurrent`` requests at a time (the others queue).
    """
    import json
    import traceback

    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    app = FastAPI(title=f"{follower.name}@{follower.alias}")

    def error(status: int, code: str, message: str) -> Response:
        body = json.dumps({"error_code": code, "message": message})
        return Response(body, status_code=status, media_type="application/json")

    async def health() -> Response:
        if follower.current is None:
            reason = follower.last_error or "no model loaded yet"
            return error(503, "TEMPORARILY_UNAVAILABLE", reason)
        return Response("\n", status_code=200, media_type="application/json")

    app.get("/ping")(health)
    app.get("/health")(health)

    @app.get("/version")
    async def version() -> Response:  # pyright: ignore[reportUnusedFunction]
        return Response(json.dumps(follower.status()), media_type="application/json")

    # Requests past the first `max_concurrent` wait here with their bodies unread (in the
    # socket, not in memory), so the server holds at most that many parsed bodies at a time.
    slots = asyncio.Semaphore(max_concurrent)

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return too_large()  # refused before a byte of it is read
        async with slots:
            served = follower.current  # one version for the whole request
            if served is None:
                return error(503, "TEMPORARILY_UNAVAILABLE", follower.last_error or "no model yet")
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.stream():  # a chunked body has no Content-Length
                size += len(chunk)
                if size > max_body_bytes:
                    return too_large()
                chunks.append(chunk)
            data = b"".join(chunks)
            del chunks
            return await answer(served, data, request.headers.get("content-type") or "")

    def too_large() -> Response:
        return error(
            413,
            "REQUEST_LIMIT_EXCEEDED",
            f"request body over this server's limit of {max_body_bytes} bytes "
            "(--max-body-mb): send fewer or smaller windows per request",
        )

    async def answer(served: ServedVersion, data: bytes, content_type: str) -> Response:
        try:
            result = await asyncio.to_thread(
                scoring_server.invocations,
                data,
                content_type,
                served.model,
                served.model.metadata.get_input_schema(),
            )
        except MlflowException as exc:
            return error(exc.get_http_status_code(), str(exc.error_code), exc.message)
        except Exception:
            _log.error("unexpected error in /invocations:\n%s", traceback.format_exc())
            return error(500, "INTERNAL_ERROR", "unexpected error; see the server's log")
        return Response(
            result.response,
            status_code=result.status,
            media_type=result.mimetype,
            headers={"X-Model-Version": served.version},
        )

    return app
