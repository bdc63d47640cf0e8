"""MLflow, as every model family uses it: experiments, runs, registered versions and aliases.

The embedded default keeps MLflow in ``sqlite:///<MLOPS_HOME>/mlflow.db`` with artifacts under
``<MLOPS_HOME>/mlartifacts``; the production stack points ``MLFLOW_TRACKING_URI`` at an MLflow
server. Both go through `Tracker`, which talks to MLflow only through an explicit `MlflowClient`
and the tracking URI it was given (never the process-global one), so two trackers in one process
do not interfere.

Model versions are promoted with aliases only (``challenger``, ``champion``); stages are never
used.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
import mlflow
import requests
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils
from PIL import Image

from mlops_assets.core.redact import redact_text, redact_uri

__all__ = ["CHALLENGER", "CHAMPION", "redact_uri"]  # re-exported: callers import them from here

# Defined apart (no MLflow import there) for the code location; re-exported here.
from mlops_assets.core.aliases import CHALLENGER as CHALLENGER
from mlops_assets.core.aliases import CHAMPION as CHAMPION


class TrackingError(RuntimeError):
    """MLflow is unreachable, or refuses what was asked of it."""


class AliasNotFoundError(TrackingError):
    """A registered model has no version under the requested alias."""


_SUPPRESS_URL_PRINTING = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
#: The tag MLflow nests a run under its parent by.
PARENT_RUN_TAG = "mlflow.parentRunId"


@contextlib.contextmanager
def _no_url_printing() -> Generator[None]:
    """Keep MLflow from printing run and experiment URLs (they embed the tracking URI's secrets).

    MLflow writes "View run ... at: <tracking URI>/#/..." to stdout when a run on a tracking
    server ends; Dagster stores stdout as the step's compute log. The URL the pipeline records
    itself (`Tracker.run_url`) is redacted.
    """
    saved = os.environ.get(_SUPPRESS_URL_PRINTING)
    os.environ[_SUPPRESS_URL_PRINTING] = "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_SUPPRESS_URL_PRINTING, None)
        else:
            os.environ[_SUPPRESS_URL_PRINTING] = saved


@dataclass(frozen=True)
class DatasetRef:
    """A commit-pinned input of a run (``lakefs://repo/commit/path``), logged as a dataset."""

    name: str
    digest: str
    uri: str
    context: str = "train"  # train | validation | ...


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate may be registered and promoted, and why."""

    passed: bool
    reason: str
    candidate: float
    champion: float | None
    champion_version: str | None


def gate(
    candidate: float,
    champion: float | None,
    minimum: float,
    tolerance: float,
    metric: str = "f1",
    champion_version: str | None = None,
) -> GateDecision:
    """Pass if ``candidate`` reaches ``minimum`` and trails the champion by <= ``tolerance``."""
    if candidate != candidate or candidate < minimum:  # NaN never passes
        reason = f"{metric} {candidate:.4f} is below the minimum {minimum:.4f}"
        return GateDecision(False, reason, candidate, champion, champion_version)
    if champion is not None and candidate < champion - tolerance:
        reason = (
            f"{metric} {candidate:.4f} is worse than champion v{champion_version} "
            f"({champion:.4f}) by more than the tolerance {tolerance:.4f}"
        )
        return GateDecision(False, reason, candidate, champion, champion_version)
    against = (
        f"champion v{champion_version} has {champion:.4f}, tolerance {tolerance:.4f}"
        if champion is not None
        else "no champion yet"
    )
    reason = f"{metric} {candidate:.4f} >= minimum {minimum:.4f}; {against}"
    return GateDecision(True, reason, candidate, champion, champion_version)


class Tracker:
    """One MLflow tracking server (or SQLite file) and one experiment in it."""

    def __init__(
        self, tracking_uri: str, experiment: str, artifact_root: Path | None = None
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment
        self.artifact_root = artifact_root
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None

    def _lock(self) -> contextlib.AbstractContextManager[Any]:
        """A file lock for a SQLite store (a new one initialised by two processes breaks)."""
        if not self.tracking_uri.startswith("sqlite:///"):
            return contextlib.nullcontext()
        db = Path(self.tracking_uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        return filelock.FileLock(str(db) + ".lock", timeout=120)

    @property
    def client(self) -> MlflowClient:
        """The MLflow client, created on first use (for SQLite: creating the schema, locked)."""
        if self._client is None:
            with self._lock():
                client = MlflowClient(
                    tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
                )
                if self.is_local:
                    client.search_experiments(max_results=1)  # creates/migrates the schema now
                self._client = client
        return self._client

    @property
    def is_local(self) -> bool:
        """True for a SQLite (or file) store written by this process directly."""
        return not self.tracking_uri.startswith(("http://", "https://", "databricks"))

    def check_reachable(self, timeout: float = 5.0) -> None:
        """Fail fast, with the address, when a tracking server does not answer."""
        if self.is_local:
            return
        url = self.tracking_uri.rstrip("/") + "/health"
        try:
            response = requests.get(url, timeout=timeout)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise TrackingError(
                f"MLflow tracking server {redact_uri(self.tracking_uri)} is unreachable: "
                f"{type(exc).__name__}: {redact_text(str(exc))}"
            ) from exc

    def experiment_id(self) -> str:
        """The experiment's id, creating it (artifacts under ``artifact_root``) on first use."""
        if self._experiment_id is not None:
            return self._experiment_id
        self.check_reachable()
        client = self.client  # before the lock: creating it takes the lock itself
        with self._lock():
            found = client.get_experiment_by_name(self.experiment_name)
            if found is not None:
                self._experiment_id = str(found.experiment_id)
                return self._experiment_id
            location = None
            if self.artifact_root is not None:
                location = (self.artifact_root / self.experiment_name).resolve().as_uri()
            try:
                self._experiment_id = str(
                    client.create_experiment(self.experiment_name, artifact_location=location)
                )
            except MlflowException:  # created concurrently by another process
                found = client.get_experiment_by_name(self.experiment_name)
                if found is None:
                    raise
                self._experiment_id = str(found.experiment_id)
        return self._experiment_id

    @contextlib.contextmanager
    def run(
        self, name: str, tags: Mapping[str, str], parent_run_id: str | None = None
    ) -> Generator[str]:
        """A run that ends FINISHED when the block completes and FAILED when it raises.

        With ``parent_run_id`` it is nested under that run (MLflow's UI shows it as a child).
        """
        tags = dict(tags) | ({PARENT_RUN_TAG: parent_run_id} if parent_run_id else {})
        run = self.client.create_run(self.experiment_id(), run_name=name, tags=tags)
        run_id = run.info.run_id
        try:
            yield run_id
        except BaseException:
            with _no_url_printing():
                self.client.set_terminated(run_id, "FAILED")
            raise
        with _no_url_printing():
            self.client.set_terminated(run_id, "FINISHED")

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log ``params`` (values stringified, 100 per batch as MLflow allows)."""
        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Log ``metrics`` at ``step`` in one request."""
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
        )

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Set run tags in one request."""
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_datasets(self, run_id: str, datasets: Sequence[DatasetRef]) -> None:
        """Record commit-pinned inputs, shown under the run's Datasets."""
        inputs = [
            DatasetInput(
                Dataset(
                    name=d.name,
                    digest=d.digest[:36],
                    source_type="lakefs",
                    source=json.dumps({"uri": d.uri}),
                ),
                tags=[InputTag("mlflow.data.context", d.context)],
            )
            for d in datasets
        ]
        if inputs:
            self.client.log_inputs(run_id, datasets=inputs)

    def log_image(self, run_id: str, image: Image.Image, path: str) -> None:
        """An image artifact shown in the run's Artifacts tab."""
        self.client.log_image(run_id, image, artifact_file=path)

    def log_artifact(self, run_id: str, path: Path, directory: str | None = None) -> None:
        """A file artifact, under ``directory`` in the run's artifacts."""
        self.client.log_artifact(run_id, str(path), directory)

    def log_dict(self, run_id: str, value: Any, path: str) -> None:
        """A JSON artifact."""
        self.client.log_dict(run_id, value, path)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        """A text artifact (Markdown, plain text)."""
        self.client.log_text(run_id, text, path)

    def run_url(self, run_id: str, ui_url: str) -> str:
        """The MLflow UI page of a run, without any secret ``ui_url`` carries (it is stored)."""
        base = redact_uri(ui_url.rstrip("/"))
        return f"{base}/#/experiments/{self.experiment_id()}/runs/{run_id}"

    # Registry ----------------------------------------------------------------------------------

    def version_by_alias(self, name: str, alias: str) -> ModelVersion | None:
        """The version of ``name`` under ``alias``, or None when there is none."""
        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def require_alias(
        self, name: str, alias: str, producer: str = "cd/registered_model"
    ) -> ModelVersion:
        """The version under ``alias``; `AliasNotFoundError` naming what exists otherwise.

        ``producer`` is the asset that registers ``name``, named in the message.
        """
        version = self.version_by_alias(name, alias)
        if version is not None:
            return version
        try:
            aliases = self.client.get_registered_model(name).aliases
        except MlflowException:
            raise AliasNotFoundError(
                f"registered model {name!r} does not exist in {redact_uri(self.tracking_uri)}: "
                f"materialise {producer} first"
            ) from None
        known = ", ".join(f"{a}->v{v}" for a, v in sorted(aliases.items())) or "none"
        raise AliasNotFoundError(
            f"registered model {name!r} has no version under alias {alias!r} (aliases: {known})"
        )

    def register(
        self, name: str, model_uri: str, run_id: str, tags: Mapping[str, str], description: str
    ) -> ModelVersion:
        """The version of ``name`` made from a logged model: found if it exists, else created.

        Idempotent: a retried registration (the step failed after MLflow created the version,
        e.g. the server went away before the answer or before the aliases were set) finds the
        version its run already produced instead of creating a second one. A server that does
        not answer fails fast with its (redacted) address, before anything is created.
        """
        self.check_reachable()
        model_id = model_uri.removeprefix("models:/")
        try:
            try:
                self.client.get_registered_model(name)
            except MlflowException:
                with contextlib.suppress(MlflowException):  # created concurrently
                    self.client.create_registered_model(name)
            existing = self.version_of_run(name, run_id, model_id)
            if existing is not None:
                return existing
            # Resolve the logged model here: the registry store would look a ``models:/m-...``
            # URI up through the process-global tracking URI, not this client's.
            source = self.client.get_logged_model(model_id).artifact_location
            return self.client.create_model_version(
                name=name,
                source=source,
                run_id=run_id,
                model_id=model_id,
                tags={k: str(v) for k, v in tags.items()},
                description=description,
            )
        except MlflowException as exc:
            raise TrackingError(
                f"registering {name!r} on MLflow tracking server "
                f"{redact_uri(self.tracking_uri)} failed: {redact_text(str(exc))}"
            ) from exc

    def version_of_run(self, name: str, run_id: str, model_id: str) -> ModelVersion | None:
        """The (first) version of ``name`` registered from this run's logged model, if any."""
        quoted = name.replace("'", "\\'")
        found = self.client.search_model_versions(f"name = '{quoted}' and run_id = '{run_id}'")
        same = [v for v in found if getattr(v, "model_id", None) in (None, model_id)]
        return min(same, key=lambda v: int(v.version)) if same else None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point ``alias`` at ``version`` (idempotent: setting it again changes nothing)."""
        try:
            self.client.set_registered_model_alias(name, alias, version)
        except MlflowException as exc:
            raise TrackingError(
                f"setting alias {alias!r} of {name!r} v{version} on MLflow tracking server "
                f"{redact_uri(self.tracking_uri)} failed: {redact_text(str(exc))}"
            ) from exc

    def run_metric(self, run_id: str, key: str) -> float | None:
        """The last logged value of ``key`` in a run."""
        value = self.client.get_run(run_id).data.metrics.get(key)
        return None if value is None else float(value)


_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def _fluent_uris(uri: str) -> Generator[None]:
    """Point MLflow's fluent API at ``uri`` for the block, then put everything back as it was.

    ``mlflow.set_tracking_uri`` also writes ``os.environ``, and "restoring" through the setters
    would pin what were defaults (an unset registry URI follows each client's tracking URI; a set
    one does not). So the module state itself is saved and restored, with the variables.
    """
    saved_env = {name: os.environ.get(name) for name in _URI_VARIABLES}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def log_pyfunc(
    tracker: Tracker,
    run_id: str,
    code_path: Path,
    artifacts: Mapping[str, str],
    pip_requirements: Sequence[str],
    signature: Any,
    input_example: Any = None,
    code_paths: Sequence[str] = (),
) -> str:
    """Log a models-from-code pyfunc in ``run_id``; return its ``models:/m-...`` URI.

    ``code_paths`` are copied into the model and put on ``sys.path`` when it loads.
    """
    with (
        _no_url_printing(),
        _fluent_uris(tracker.tracking_uri),
        mlflow.start_run(run_id=run_id),
    ):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(code_path),
            artifacts=dict(artifacts),
            pip_requirements=list(pip_requirements),
            signature=signature,
            input_example=input_example,
            code_paths=list(code_paths) or None,
        )
    return info.model_uri


def load_pyfunc(tracker: Tracker, model_uri: str) -> Any:
    """The Python model object behind a pyfunc URI (``models:/name@alias`` works)."""
    with _fluent_uris(tracker.tracking_uri):
        return mlflow.pyfunc.load_model(model_uri).unwrap_python_model()


def load_pyfunc_model(tracker: Tracker, model_uri: str) -> Any:
    """The `mlflow.pyfunc.PyFuncModel` at ``model_uri`` (schema enforcement included)."""
    with _fluent_uris(tracker.tracking_uri):
        return mlflow.pyfunc.load_model(model_uri)
