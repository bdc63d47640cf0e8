"""Server processes for the production-stack tests: ``mlflow server`` that a test can kill.

Each server runs in its own process group (so stopping it stops its workers too) and logs to a
file that a failed start quotes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from mlops_assets_tests.conftest import free_port

BIN = Path(sys.executable).parent


class MlflowServer:
    """``mlflow server`` with a backend store and proxied artifacts; startable again after a kill.

    The backend URI goes through ``MLFLOW_BACKEND_STORE_URI`` (not the command line), as in
    docker/compose.yaml, and the port stays the same across restarts.
    """

    def __init__(self, backend_uri: str, artifacts: str, log: Path, env: dict[str, str]) -> None:
        self.backend_uri = backend_uri
        self.artifacts = artifacts
        self.log = log
        self.env = env
        self.port = free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120) -> None:
        """Start and wait until ``/health`` answers."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(BIN / "mlflow"),
                    "server",
                    f"--artifacts-destination={self.artifacts}",
                    "--serve-artifacts",
                    "--host=127.0.0.1",
                    f"--port={self.port}",
                    "--workers=1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={
                    **os.environ,
                    **self.env,
                    "MLFLOW_BACKEND_STORE_URI": self.backend_uri,
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                },
            )
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.address}/health", timeout=2).ok:
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"mlflow server did not come up on {self.address}:\n"
                    + self.log.read_text(errors="replace")[-3000:]
                )
            time.sleep(0.25)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server and its workers (SIGKILL: as if the machine lost it)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)
        self.process = None
