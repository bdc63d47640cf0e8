"""Server processes for tests and benchmarks: started, awaited on an HTTP route, stopped whole.

One implementation of what the MLflow-server fixture, the ``mlflow models serve`` test, the
production-stack tests (`mlops_assets_tests.docker.servers`) and the serving benchmark each did
by hand. It lives here, not in the package (nothing in ``mlops_assets`` starts servers) and not
in ``benchmarks`` (tests do not import benchmarks); benchmarks import it as they already import
`mlops_assets_tests.postgres` and `mlops_assets_tests.docker.servers`. It imports no pytest.

Each server runs in its own process group, so stopping it stops the workers it started, and
logs to a file whose tail a failed start quotes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import requests

#: The folder of this interpreter's console scripts (``mlflow``, ``uvicorn``).
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_group(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 20
) -> None:
    """Stop the process group ``process`` leads (``start_new_session=True``) and wait.

    ``sig`` first; SIGKILL if the group has not exited within ``timeout_s``.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)


class ServerStartError(RuntimeError):
    """The server exited, or did not answer its ready route in time; the log's tail says why."""


class ServerProcess:
    """``argv`` as a server at ``address``, ready once ``address + ready`` answers 2xx.

    Startable again after `stop` (same command, same port).

    ``env`` is added to this process's environment, with this interpreter's scripts first on
    ``PATH`` (``mlflow models serve`` runs ``uvicorn`` from it, as an activated venv has it).
    """

    def __init__(
        self,
        argv: Sequence[str],
        address: str,
        log: Path,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        ready: str = "/health",
    ) -> None:
        self.argv = list(argv)
        self.address = address
        self.ready_url = address + ready
        self.log = log
        self.env = dict(env or {})
        self.name = name or Path(self.argv[0]).name
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120, poll_s: float = 0.25) -> None:
        """Start and wait until ``ready_url`` answers 2xx; `ServerStartError` otherwise."""
        path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped with all it started
                env={**os.environ, "PATH": path, **self.env},
            )
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.ready_url, timeout=2).ok:
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"{self.name} did not come up on {self.ready_url}:\n" + self.log_tail()
                )
            time.sleep(poll_s)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> None:
        """Stop the server and its workers (SIGKILL: as if the machine lost it)."""
        if self.process is not None:
            stop_group(self.process, sig, timeout_s)
        self.process = None

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log."""
        if not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-chars:]

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def mlflow_models_serve(
    model_uri: str, tracking_uri: str, log: Path, port: int | None = None
) -> ServerProcess:
    """``mlflow models serve -m MODEL_URI --env-manager local``, one worker, on a loopback port."""
    port = port or free_port()
    argv = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {"MLFLOW_TRACKING_URI": tracking_uri}
    address = f"http://127.0.0.1:{port}"
    return ServerProcess(argv, address, log, env, "mlflow models serve", ready="/ping")
