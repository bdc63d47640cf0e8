"""Server processes for the production-stack tests: ``mlflow server`` that a test can kill.

Built on `mlops_assets_tests.processes.ServerProcess`: its own process group (stopping it stops
its workers too) and a log file that a failed start quotes.
"""

from __future__ import annotations

from pathlib import Path

from mlops_assets_tests.processes import BIN, ServerProcess, free_port


class MlflowServer(ServerProcess):
    """``mlflow server`` with a backend store and proxied artifacts; startable again after a kill.

    The backend URI goes through ``MLFLOW_BACKEND_STORE_URI`` (not the command line), as in
    docker/compose.yaml, and the port stays the same across restarts.
    """

    def __init__(self, backend_uri: str, artifacts: str, log: Path, env: dict[str, str]) -> None:
        self.backend_uri = backend_uri
        self.artifacts = artifacts
        self.port = free_port()
        argv = [str(BIN / "mlflow"), "server", f"--artifacts-destination={artifacts}"]
        argv += ["--serve-artifacts", "--host=127.0.0.1", f"--port={self.port}", "--workers=1"]
        env = {
            **env,
            "MLFLOW_BACKEND_STORE_URI": backend_uri,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        address = f"http://127.0.0.1:{self.port}"
        super().__init__(argv, address, log, env, name="mlflow server")
