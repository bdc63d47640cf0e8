"""Keep serving whatever version a registry alias points to, without a restart.

`AliasFollower` polls the registry; when the alias has moved it loads the new version and swaps
it in only once it has loaded (requests in flight finish on the version they started with, and a
version that fails to load leaves the old one serving). Nothing outside has to restart anything:
promotion in ``cd/registered_model`` moves ``champion``, and the server follows within one poll.

`build_app` answers MLflow's scoring protocol (``/invocations``, ``/ping``, ``/health``,
``/version``) with MLflow's own request parsing (``mlflow.pyfunc.scoring_server.invocations``),
so a client of ``mlflow models serve`` works unchanged. Errors are JSON ``{"error_code",
"message"}`` with their HTTP status; an unexpected one is logged here with its traceback and
answered 500 without it.
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
            except Exception as exc:  # registry unreachable: keep serving what we have
                self.last_error = f"registry lookup failed: {redact_text(str(exc))}"
                _log.warning("%s@%s: %s", self.name, self.alias, self.last_error)
                return False
            if target is None:
                self.last_error = f"no version of {self.name!r} under alias {self.alias!r}"
                return False
            version, run_id = target
            if self.current is not None and self.current.version == version:
                self.last_error = None
                return False
            try:
                model = self._load(version)
            except Exception as exc:
                self.last_error = f"v{version} failed to load: {redact_text(str(exc))}"
                # The message, redacted; not the traceback, whose frames may hold credentials.
                _log.error("%s@%s: %s", self.name, self.alias, self.last_error)
                return False
            before = None if self.current is None else self.current.version
            self.current = ServedVersion(version, run_id, model, time.time())
            self.last_error = None
            _log.info("%s@%s: serving v%s (was %s)", self.name, self.alias, version, before)
            return True

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
    from mlops_assets.core.tracking import Tracker, load_pyfunc_model

    tracker = Tracker(tracking_uri, "serving")

    def resolve() -> tuple[str, str] | None:
        found = tracker.version_by_alias(name, alias)
        return None if found is None else (str(found.version), str(found.run_id))

    def load(version: str) -> Any:
        return load_pyfunc_model(tracker, f"models:/{name}/{version}")

    return AliasFollower(name, alias, resolve, load)


def build_app(follower: AliasFollower) -> Any:
    """The FastAPI app: MLflow's scoring protocol over the follower's current version."""
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

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
        served = follower.current  # one version for the whole request
        if served is None:
            return error(503, "TEMPORARILY_UNAVAILABLE", follower.last_error or "no model yet")
        data = await request.body()
        content_type = request.headers.get("content-type") or ""
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
