"""Deployment settings: the one place that reads the process environment.

Nothing here runs at import. `Settings.from_env` is called by `mlops_assets.definitions` when
Dagster loads the code location and by the CLI when it starts; everything else receives a
`Settings` (or the resources built from it). The embedded default needs no variable at all:
scenes, Dagster and MLflow state live under ``MLOPS_HOME`` (``./.mlops``). Setting
``LAKEFS_ENDPOINT`` switches the scene store to a lakeFS server, ``MLFLOW_TRACKING_URI`` MLflow to a
tracking server, ``MLOPS_OUTPUT_BUCKET`` the tile store to S3, ``MLOPS_OPTUNA_STORAGE`` the sweeps'
study storage to a database; nothing else changes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the stores load where one is opened, not with the code location
    from mlops_assets.core.store.base import VersionedStore
    from mlops_assets.core.store.factory import StoreSpec

StoreKind = Literal["embedded", "lakefs"]
ExecutorKind = Literal["default", "k8s"]  # mlops_assets.scale.build_executor


# The lakeFS credentials, by `StoreSpec` field: read from the environment for the CLI, bound as
# `dg.EnvVar` by the Dagster resource (resolved in the run, never written to its config or logs).
LAKEFS_CREDENTIALS = {
    "access_key_id": "LAKEFS_ACCESS_KEY_ID",
    "secret_access_key": "LAKEFS_SECRET_ACCESS_KEY",
}
# Every `StoreSpec` field the Dagster resource takes from an environment variable: the
# credentials, and the endpoint, which may carry ``user:password@``.
STORE_ENV_VARS = {"lakefs_endpoint": "LAKEFS_ENDPOINT", **LAKEFS_CREDENTIALS}


class SettingsError(ValueError):
    """The environment describes an impossible deployment."""


def _positive_int(env: Mapping[str, str], name: str, default: int, unit: str = "seconds") -> int:
    raw = env.get(name)
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise SettingsError(f"{name}={raw!r}: expected a whole number of {unit} >= 1")
    return int(raw)


@dataclass(frozen=True)
class Settings:
    """Where state lives and which external systems to use."""

    mlops_home: Path
    dagster_home: Path
    repository: str = "scenes"
    main_branch: str = "main"
    outputs_branch: str = "outputs"
    lakefs_endpoint: str | None = None
    lakefs_storage_namespace: str | None = None
    lakefs_raster_access: Literal["cache", "s3_gateway"] = "cache"
    git_sha: str = ""
    dagster_url: str = "http://localhost:3000"
    mlflow_tracking_uri: str | None = None  # None: SQLite under MLOPS_HOME
    mlflow_url: str = "http://localhost:5000"
    output_bucket: str | None = None  # None: tiles under MLOPS_HOME/outputs
    output_prefix: str = ""
    s3_endpoint_url: str | None = None  # AWS_ENDPOINT_URL: MinIO or another S3-compatible server
    sensor_interval_s: int = 30
    # A tick with more changed scenes of one kind than this launches one backfill, not a run each.
    sensor_batch_over: int = 20
    retrain_cron: str = "0 3 * * 1"  # Mondays 03:00
    # ``k8s``: a pod per step (dagster-k8s), GPU steps on GPU nodes; ``default``: one process tree.
    executor: ExecutorKind = "default"
    # Optuna's study storage for cd/sweep: a database URL (postgresql+psycopg2://...), or None
    # for a journal file under MLOPS_HOME.
    optuna_storage: str | None = None
    # MLOPS_MAX_PIXELS: the raw-scene checks' pixel budget, rasters and photos alike, for
    # `ingest` (whose --max-pixels overrides it) and the pipeline's cd/scene and nvs/scene
    # checks; None: the defaults of `mlops_assets.core.scenes.checks.CheckLimits`.
    max_pixels: int | None = None

    @property
    def store_kind(self) -> StoreKind:
        """``lakefs`` when an endpoint is configured, else the embedded store."""
        return self.store_spec(credentials=False).kind

    @property
    def embedded_store_root(self) -> Path:
        """Root directory of the embedded versioned store."""
        return self.mlops_home / "lakefs"

    @property
    def assets_dir(self) -> Path:
        """Where small asset values (JSON manifests) are stored."""
        return self.mlops_home / "assets"

    @property
    def assets_url(self) -> str:
        """Where asset values live: ``s3://<bucket>/<prefix>/assets`` with an S3 output store."""
        if self.output_bucket is None:
            return str(self.assets_dir)
        prefix = "/".join(p for p in self.output_prefix.split("/") if p)
        return f"s3://{self.output_bucket}/{prefix + '/' if prefix else ''}assets"

    @property
    def tracking_uri(self) -> str:
        """MLFLOW_TRACKING_URI, else SQLite under MLOPS_HOME."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlops_home / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> Path | None:
        """Where the embedded MLflow keeps artifacts (a server decides for itself)."""
        return None if self.mlflow_tracking_uri else self.mlops_home / "mlartifacts"

    @property
    def outputs_dir(self) -> Path:
        """Root of the local output store (tiles)."""
        return self.mlops_home / "outputs"

    @property
    def sweep_storage(self) -> str:
        """MLOPS_OPTUNA_STORAGE, else a journal file under MLOPS_HOME."""
        return self.optuna_storage or str(self.mlops_home / "optuna" / "journal.log")

    @property
    def cache_dir(self) -> Path:
        """Local cache for objects read from a remote store."""
        return self.mlops_home / "cache"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> Settings:
        """Read the settings from ``environ`` (default: the process environment)."""
        env = os.environ if environ is None else environ
        base = cwd if cwd is not None else Path.cwd()
        home = Path(env.get("MLOPS_HOME") or base / ".mlops").expanduser()
        if not home.is_absolute():
            home = base / home
        dagster_home = Path(env.get("DAGSTER_HOME") or home / "dagster").expanduser()
        raster_access = env.get("LAKEFS_RASTER_ACCESS", "cache")
        if raster_access not in ("cache", "s3_gateway"):
            raise SettingsError(
                f"LAKEFS_RASTER_ACCESS={raster_access!r}: expected 'cache' or 's3_gateway'"
            )
        executor = env.get("MLOPS_EXECUTOR") or "default"
        if executor not in ("default", "k8s"):
            raise SettingsError(f"MLOPS_EXECUTOR={executor!r}: expected 'default' or 'k8s'")
        return cls(
            mlops_home=home,
            dagster_home=dagster_home,
            repository=env.get("MLOPS_REPOSITORY") or "scenes",
            main_branch=env.get("MLOPS_MAIN_BRANCH") or "main",
            outputs_branch=env.get("MLOPS_OUTPUTS_BRANCH") or "outputs",
            lakefs_endpoint=env.get("LAKEFS_ENDPOINT") or None,
            lakefs_storage_namespace=env.get("LAKEFS_STORAGE_NAMESPACE") or None,
            lakefs_raster_access="s3_gateway" if raster_access == "s3_gateway" else "cache",
            git_sha=env.get("MLOPS_GIT_SHA", ""),
            dagster_url=env.get("MLOPS_DAGSTER_URL") or "http://localhost:3000",
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
            mlflow_url=env.get("MLOPS_MLFLOW_URL") or "http://localhost:5000",
            output_bucket=env.get("MLOPS_OUTPUT_BUCKET") or None,
            output_prefix=env.get("MLOPS_OUTPUT_PREFIX", ""),
            s3_endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
            sensor_interval_s=_positive_int(env, "MLOPS_SENSOR_INTERVAL_S", 30),
            sensor_batch_over=_positive_int(env, "MLOPS_SENSOR_BATCH_SCENES", 20, "scenes"),
            retrain_cron=env.get("MLOPS_RETRAIN_CRON") or "0 3 * * 1",
            executor="k8s" if executor == "k8s" else "default",
            optuna_storage=env.get("MLOPS_OPTUNA_STORAGE") or None,
            max_pixels=_positive_int(env, "MLOPS_MAX_PIXELS", 0, "pixels") or None,
        )

    def store_spec(
        self, environ: Mapping[str, str] | None = None, *, credentials: bool = True
    ) -> StoreSpec:
        """The scene store these settings describe: the one place a `StoreSpec` is filled in.

        The CLI opens it (`open_store`); the Dagster resource is built from it with
        ``credentials=False`` (`mlops_assets.resources.scene_store.scene_store_resource`) and binds
        the fields named in `STORE_ENV_VARS` as `dg.EnvVar` instead. Credentials are read from
        ``environ`` (default: the process environment) only for a lakeFS store.
        """
        from mlops_assets.core.store.factory import StoreSpec

        spec = StoreSpec(
            repository=self.repository,
            embedded_root=self.embedded_store_root,
            lakefs_endpoint=self.lakefs_endpoint,
            storage_namespace=self.lakefs_storage_namespace,
            raster_access=self.lakefs_raster_access,
            cache_dir=self.cache_dir,
        )
        if spec.kind == "embedded" or not credentials:
            return spec
        env = os.environ if environ is None else environ
        keys = {  # spelled out: docker/test_compose.py checks compose sets what is read
            "access_key_id": env.get("LAKEFS_ACCESS_KEY_ID", ""),
            "secret_access_key": env.get("LAKEFS_SECRET_ACCESS_KEY", ""),
        }
        missing = [LAKEFS_CREDENTIALS[field] for field, value in keys.items() if not value]
        if missing:
            raise SettingsError(
                f"LAKEFS_ENDPOINT is set but {' and '.join(missing)} is not: "
                "set the lakeFS credentials, or unset LAKEFS_ENDPOINT to use the embedded store"
            )
        return dataclasses.replace(spec, **keys)

    def open_store(self, environ: Mapping[str, str] | None = None) -> VersionedStore:
        """The scene store these settings describe, opened by the one store factory."""
        from mlops_assets.core.store.factory import open_store

        return open_store(self.store_spec(environ))
