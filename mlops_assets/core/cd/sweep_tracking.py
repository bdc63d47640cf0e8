"""A sweep's MLflow lineage, and what ``cd/model`` reads back from it.

`run_sweep` opens one parent run per sweep (tags: the caller's, e.g. the Dagster run id; params:
the search space, budget, pruner and fixed settings; dataset inputs: the tiles' lakeFS commits),
runs the workers (each trial a nested child run: params, per-epoch metrics, state, duration), then
records the study's best params and value on the parent with three plots as images (optimisation
history, parameter importances, parallel coordinates; `optuna.visualization.matplotlib`).

`latest_sweep` finds the newest finished parent run of a preset (of one study, or of any) and
returns its best configuration as `TrainConfig` overrides plus the run id and study name a model
version is tagged with. Only a sweep of the same preset: the best params of a ``tiny`` sweep
(its decoder widths, say) are no answer for a ``default`` model.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from PIL import Image

from mlops_assets.core.cd.config import TrainConfig
from mlops_assets.core.cd.dataset import TileRef
from mlops_assets.core.cd.records import SWEEP_RUN_TAG, SWEEP_STUDY_TAG, SweepRecord
from mlops_assets.core.cd.sweep import (
    ATTR_RUN,
    ParamRange,
    StudyIdentity,
    SweepConfig,
    SweepError,
    TrackingTarget,
    TrialCallback,
    TrialOutcome,
    WorkerJob,
    apply,
    default_params,
    end_trial_runs,
    fail_stale_trials,
    finished,
    open_storage,
    overrides,
    prepare_study,
    run_workers,
    started,
    worker_threads,
)
from mlops_assets.core.redact import redact_uri
from mlops_assets.core.tracking import DatasetRef, Tracker

#: Tags of a sweep's parent run (what `latest_sweep` searches by) and of the model it tunes.
KIND_TAG = "mlops.kind"
SWEEP_KIND = "cd-sweep"
STUDY_TAG = "optuna.study_name"
PRESET_TAG = "preset"  # the preset the sweep's trials start from
BEST_TAG = "mlops.sweep.best_overrides"
#: Tags a model version trained from a sweep's best params carries.
MODEL_SWEEP_RUN_TAG = SWEEP_RUN_TAG  # defined beside CDModelRecord, which writes it
MODEL_SWEEP_STUDY_TAG = SWEEP_STUDY_TAG


@dataclass(frozen=True)
class TrialRow:
    """One finished trial of the study, for tables."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    epochs: int
    seconds: float | None
    run_id: str


@dataclass
class SweepResult:
    """What a sweep did and found."""

    study_name: str
    run_id: str  # the parent MLflow run
    storage: str  # redacted
    new_study: bool
    best_value: float
    best_number: int
    best_params: dict[str, Any]
    best_overrides: dict[str, Any]  # TrainConfig fields
    evaluated: list[TrialOutcome]  # by this sweep
    trials: list[TrialRow]  # every finished trial of the study
    data_commits: dict[str, str]
    plots: dict[str, Image.Image] = field(default_factory=lambda: dict[str, Image.Image]())
    notes: list[str] = field(default_factory=lambda: list[str]())

    def top(self, n: int = 10) -> list[TrialRow]:
        """The ``n`` best complete trials, best first."""
        done = [t for t in self.trials if t.state == "COMPLETE" and t.value is not None]
        return sorted(done, key=lambda t: (-(t.value or 0.0), t.number))[:n]

    def record(self, git_sha: str) -> SweepRecord:
        """What ``cd/sweep`` hands on."""
        return SweepRecord(
            study_name=self.study_name,
            run_id=self.run_id,
            storage=self.storage,
            best_value=self.best_value,
            best_trial=self.best_number,
            best_params=self.best_params,
            best_overrides=self.best_overrides,
            lakefs_commits=self.data_commits,
            git_sha=git_sha,
        )

    def counts(self) -> dict[str, int]:
        """How many of this sweep's trials completed, were pruned or failed."""
        states = [o.state for o in self.evaluated]
        return {s.lower(): states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")}


def _rows(trials: Sequence[FrozenTrial]) -> list[TrialRow]:
    return [
        TrialRow(
            number=t.number,
            state=t.state.name,
            value=t.value,
            params=dict(t.params),
            epochs=int(t.user_attrs.get("epochs_run", len(t.intermediate_values))),
            seconds=None if t.duration is None else t.duration.total_seconds(),
            run_id=str(t.user_attrs.get(ATTR_RUN, "")),
        )
        for t in trials
    ]


def _figure_image(plot: Callable[[], Any]) -> Image.Image:
    """Render an `optuna.visualization.matplotlib` plot to an image and free the figure."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never a GUI window from a step
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():  # the matplotlib backend is "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = plot()
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.set_size_inches(8, 5)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def study_plots(study: optuna.Study) -> tuple[dict[str, Image.Image], list[str]]:
    """History, importances and parallel coordinates; the plots left out, and why."""
    from optuna.visualization import matplotlib as vis

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots: dict[str, Image.Image] = {}
    notes: list[str] = []
    if not complete:
        return plots, ["no plots: no trial completed"]
    plots["history"] = _figure_image(lambda: vis.plot_optimization_history(study))
    varied = [n for n in complete[0].params if len({str(t.params.get(n)) for t in complete}) > 1]
    if len(complete) >= 2 and varied:
        plots["importances"] = _figure_image(lambda: vis.plot_param_importances(study))
        plots["parallel_coordinates"] = _figure_image(lambda: vis.plot_parallel_coordinate(study))
    else:
        notes.append(
            "no importance or parallel-coordinate plot: they need two complete trials whose "
            f"params differ ({len(complete)} complete)"
        )
    return plots, notes


def _datasets(refs: Sequence[TileRef]) -> list[DatasetRef]:
    """Each scene's tile set, commit-pinned, as `cd/model` logs it."""
    indices = {r.index.scene_id: r.index for r in refs}
    found: list[DatasetRef] = []
    for _, index in sorted(indices.items()):
        scene = f"lakefs://{index.repository}/{index.commit_id}/cd/{index.scene_id}"
        uri = index.sources["pre"].rsplit("/", 1)[0] if "pre" in index.sources else scene
        digest = f"{index.commit_id[:16]}-{index.config_hash}"
        found.append(DatasetRef(name=f"cd/tiles/{index.scene_id}", digest=digest, uri=uri))
    return found


@dataclass(frozen=True)
class PreparedSweep:
    """A checked sweep whose study exists (created or resumed), with its parent run's inputs."""

    refs: tuple[TileRef, ...]
    base: TrainConfig
    sweep: SweepConfig
    storage_url: str
    space: dict[str, ParamRange]
    identity: StudyIdentity
    new_study: bool
    target_trials: int
    abandoned: tuple[int, ...]  # running trials of killed workers, failed on joining
    tags: dict[str, str]  # the parent run's, beside the caller's
    params: dict[str, Any]
    datasets: list[DatasetRef]

    @property
    def run_name(self) -> str:
        """The parent run's name."""
        return f"cd-sweep-{self.sweep.study_name}"


def prepare_sweep(
    refs: Sequence[TileRef],
    base: TrainConfig,
    sweep: SweepConfig,
    storage_url: str,
    git_sha: str,
    *,
    preset: str = "",
) -> PreparedSweep:
    """Check the sweep, open the storage, create or resume the study (trial 0 enqueued if new).

    ``refs`` are the tiles to sweep on: the caller leaves the evaluation scenes out (the one
    held-out mechanism, ``eval/scenes.json``). ``preset`` (the preset ``base`` came from) tags
    the parent run: `latest_sweep` reads only a sweep of the model's preset.

    Every refusal (no tiles, unreachable storage, a study on other data or another space) is a
    `SweepError` raised here, before any MLflow run exists. Resuming fails the study's abandoned
    trials first (`fail_stale_trials`).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kept = list(refs)
    if not kept:
        raise SweepError("no tiles to sweep on")
    space = sweep.resolved_space(base)
    identity = StudyIdentity.of(kept, base, space, git_sha)
    study, new = prepare_study(open_storage(storage_url), sweep.study_name, identity)
    abandoned = tuple(fail_stale_trials(study))
    target = len(started(study)) + sweep.n_trials
    if new:
        study.enqueue_trial(default_params(base, space), user_attrs={"default": True})
    tags = {
        KIND_TAG: SWEEP_KIND,
        STUDY_TAG: sweep.study_name,
        "optuna.storage": redact_uri(storage_url),
        "git_sha": git_sha,
        "lakefs.commits": json.dumps(identity.data_commits, sort_keys=True),
        **({PRESET_TAG: preset} if preset else {}),
    }
    params = {
        **{f"space.{k}": r.describe() for k, r in space.items()},
        "n_trials": sweep.n_trials,
        "timeout_s": sweep.timeout_s,
        "n_workers": sweep.n_workers,
        "pruner": sweep.pruner,
        "sampler": f"TPE(seed={sweep.seed}, per trial)",
        "resumed": not new,
        **{f"fixed.{k}": v for k, v in json.loads(identity.fixed).items()},
    }
    return PreparedSweep(
        tuple(kept),
        base,
        sweep,
        storage_url,
        space,
        identity,
        new,
        target,
        abandoned,
        tags,
        params,
        _datasets(kept),
    )


def execute_sweep(
    prepared: PreparedSweep,
    tracker: Tracker,
    parent_run_id: str,
    *,
    child_tags: Mapping[str, str],
    on_trial: TrialCallback | None = None,
) -> SweepResult:
    """Evaluate trials under the open parent run; log the best params and plots on it.

    No trial completing is a `SweepError`; a diverging trial is only FAILED.
    """
    sweep, base = prepared.sweep, prepared.base
    trial_base = dataclasses.replace(
        base, overlay_images=0, num_threads=worker_threads(base, sweep.n_workers)
    )
    target = TrackingTarget(
        tracker.tracking_uri,
        tracker.experiment_name,
        None if tracker.artifact_root is None else str(tracker.artifact_root),
        parent_run_id,
        dict(child_tags),
    )
    deadline = None if sweep.timeout_s is None else time.time() + sweep.timeout_s
    if prepared.abandoned:
        joined = optuna.load_study(
            study_name=sweep.study_name, storage=open_storage(prepared.storage_url)
        )
        end_trial_runs(joined, prepared.abandoned, target)
    jobs = [
        WorkerJob(
            prepared.storage_url,
            sweep.study_name,
            prepared.refs,
            trial_base,
            prepared.space,
            sweep,
            prepared.target_trials,
            deadline,
            target,
            worker=k,
        )
        for k in range(sweep.n_workers)
    ]
    evaluated = run_workers(jobs, on_trial)
    study = optuna.load_study(
        study_name=sweep.study_name, storage=open_storage(prepared.storage_url)
    )
    result = _summarise(study, prepared, parent_run_id, evaluated)
    _log_best(tracker, parent_run_id, result)
    return result


def run_sweep(
    refs: Sequence[TileRef],
    base: TrainConfig,
    sweep: SweepConfig,
    storage_url: str,
    tracker: Tracker,
    *,
    tags: Mapping[str, str],
    git_sha: str,
    preset: str = "",
    on_trial: TrialCallback | None = None,
) -> SweepResult:
    """`prepare_sweep`, then `execute_sweep` under a parent run opened with `Tracker.run`.

    For callers without Dagster (benchmarks, scripts); the asset opens the parent run through
    its MLflow resource's tracked-run helper instead.
    """
    prepared = prepare_sweep(refs, base, sweep, storage_url, git_sha, preset=preset)
    with tracker.run(prepared.run_name, {**tags, **prepared.tags}) as parent:
        tracker.log_params(parent, prepared.params)
        tracker.log_datasets(parent, prepared.datasets)
        child_tags = {**tags, "git_sha": git_sha}
        return execute_sweep(prepared, tracker, parent, child_tags=child_tags, on_trial=on_trial)


def _summarise(
    study: optuna.Study,
    prepared: PreparedSweep,
    parent: str,
    evaluated: list[TrialOutcome],
) -> SweepResult:
    sweep = prepared.sweep
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        states = [o.state for o in evaluated]
        reasons = sorted({o.reason for o in evaluated if o.state == "FAIL" and o.reason})
        raise SweepError(
            f"study {sweep.study_name!r}: no trial completed ({states.count('FAIL')} failed, "
            f"{states.count('PRUNED')} pruned"
            + (f"; first failure: {reasons[0]}" if reasons else "")
            + ")"
        )
    best = study.best_trial
    assert best.value is not None
    plots, notes = study_plots(study)
    if prepared.abandoned:
        numbers = ", ".join(str(n) for n in prepared.abandoned)
        notes.append(f"trial(s) {numbers} of a killed worker (no heartbeat) recorded FAILED")
    return SweepResult(
        study_name=sweep.study_name,
        run_id=parent,
        storage=redact_uri(prepared.storage_url),
        new_study=prepared.new_study,
        best_value=best.value,
        best_number=best.number,
        best_params=dict(best.params),
        best_overrides=_jsonable(overrides(best.params, prepared.base)),
        evaluated=evaluated,
        trials=_rows(finished(study)),
        data_commits=prepared.identity.data_commits,
        plots=plots,
        notes=notes,
    )


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _log_best(tracker: Tracker, parent: str, result: SweepResult) -> None:
    tracker.log_params(parent, {f"best.{k}": v for k, v in result.best_params.items()})
    counts = result.counts()
    tracker.log_metrics(
        parent,
        {
            "best_value": result.best_value,
            "best_trial": result.best_number,
            "trials_total": len(result.trials),
            **{f"trials_{k}": v for k, v in counts.items()},
        },
        step=0,
    )
    best_run = next((t.run_id for t in result.trials if t.number == result.best_number), "")
    tracker.set_tags(
        parent,
        {
            BEST_TAG: json.dumps(result.best_overrides, sort_keys=True),
            "mlops.sweep.best_trial": str(result.best_number),
            "mlops.sweep.best_run_id": best_run,
        },
    )
    tracker.log_dict(parent, [dataclasses.asdict(t) for t in result.trials], "trials.json")
    for name, image in result.plots.items():
        tracker.log_image(parent, image, f"plots/{name}.png")


# Reading a sweep back -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepChoice:
    """The best configuration of a finished sweep, and where it came from."""

    run_id: str
    study_name: str
    value: float
    overrides: dict[str, Any]  # TrainConfig fields

    def apply(self, config: TrainConfig) -> TrainConfig:
        """``config`` with the sweep's best params."""
        return apply(config, self.overrides)

    def config_fields(self) -> dict[str, Any]:
        """The best params as `TrainConfig` field values (sequences as tuples)."""
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.overrides.items()}

    def tags(self) -> dict[str, str]:
        """Tags for the model run and version trained from it."""
        return {MODEL_SWEEP_RUN_TAG: self.run_id, MODEL_SWEEP_STUDY_TAG: self.study_name}


def latest_sweep(tracker: Tracker, study_name: str | None = None, *, preset: str) -> SweepChoice:
    """The newest finished sweep of ``preset`` (of ``study_name``, or of any study).

    Only sweeps whose parent run is tagged with ``preset`` count. A `SweepError` says so when
    there is none, naming the newest finished sweep of another preset if there is one.
    """
    finished_sweep = f"tags.`{KIND_TAG}` = '{SWEEP_KIND}' and attributes.status = 'FINISHED'"
    if study_name:
        finished_sweep += f" and tags.`{STUDY_TAG}` = '{study_name}'"
    newest = ["attributes.start_time DESC"]
    experiment = [tracker.experiment_id()]
    query = f"{finished_sweep} and tags.`{PRESET_TAG}` = '{preset}'"
    runs = tracker.client.search_runs(experiment, query, max_results=1, order_by=newest)
    if not runs:
        which = f"of study {study_name!r} " if study_name else ""
        others = tracker.client.search_runs(
            experiment, finished_sweep, max_results=1, order_by=newest
        )
        found = ""
        if others:
            tags = others[0].data.tags
            found = (
                f" (the newest, of study {tags.get(STUDY_TAG, '?')!r}, tuned preset "
                f"{tags.get(PRESET_TAG, 'unknown')!r}: its best params are not for this preset)"
            )
        raise SweepError(
            f"no finished sweep of preset {preset!r} {which}in MLflow experiment "
            f"{tracker.experiment_name!r}{found}: materialise cd/sweep with preset {preset} first "
            "(or train without params_from: sweep)"
        )
    run = runs[0]
    tags = run.data.tags
    return SweepChoice(
        run_id=run.info.run_id,
        study_name=tags.get(STUDY_TAG, ""),
        value=float(run.data.metrics.get("best_value", float("nan"))),
        overrides=json.loads(tags[BEST_TAG]),
    )
