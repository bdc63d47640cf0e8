"""``cd/sweep``: an Optuna study of the CD U-Net's settings on every labelled scene's tiles.

The logic is `mlops_assets.core.cd.sweep_tracking.run_sweep`; this module turns the run config
into the core's configs, logs progress, and shows the top trials, best params and history plot.
"""

import enum
from typing import Any

import dagster as dg
from pydantic import Field

from mlops_assets import keys
from mlops_assets.assets.cd.config import EXPERIMENT, PRESET_FIELD, Device, Preset
from mlops_assets.assets.cd.model import training_sets, without_evaluation_scenes
from mlops_assets.assets.common import ProgressLog, image_md, markdown_table, metadata
from mlops_assets.core.cd.config import TrainConfig, preset
from mlops_assets.core.cd.records import SweepRecord, tiles_by_scene
from mlops_assets.resources.failures import failure_on
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.resources.outputs import OutputStoreResource
from mlops_assets.resources.scene_store import SceneStoreResource
from mlops_assets.resources.sweeps import OptunaStorageResource
from mlops_assets.scale import gpu_op_tags

KEY = keys.CD_SWEEP


class Pruner(enum.StrEnum):
    """Stops hopeless trials from each epoch's validation F1: median, hyperband, or none."""

    median = "median"
    hyperband = "hyperband"
    none = "none"


class SearchRange(dg.Config):
    """One searched setting: low..high (log: on a log scale), or a list of choices."""

    low: float | None = Field(default=None, description="Least value.")
    high: float | None = Field(default=None, description="Greatest value.")
    log: bool = Field(default=False, description="Sample on a log scale (low > 0).")
    choices: list[float] | None = Field(
        default=None, description="Values to choose from instead (augment: 1 = on, 0 = off)."
    )


class SweepRunConfig(dg.Config):
    """How ``cd/sweep`` searches: the preset sets each trial's epochs and model size."""

    preset: Preset = PRESET_FIELD
    study_name: str | None = Field(
        default=None, description="Study to create or resume (default: cd-unet-<preset>)."
    )
    n_trials: int = Field(default=20, description="Trials this run adds to the study.")
    timeout_s: float | None = Field(default=None, description="No trial starts after this.")
    n_workers: int = Field(default=1, description="Processes evaluating trials at once.")
    epochs: int | None = Field(default=None, description="Epochs per trial (default: preset's).")
    pruner: Pruner = Field(default=Pruner.median, description=Pruner.__doc__)
    pruner_startup_trials: int = Field(
        default=2, description="Median pruner: trials that must finish before any is pruned."
    )
    pruner_warmup_epochs: int = Field(
        default=0, description="Median pruner: a trial is never pruned in its first epochs."
    )
    seed: int = Field(
        default=0, description="Seed of the TPE sampler (trial n's draws: seeded by seed and n)."
    )
    search_space: dict[str, SearchRange] | None = Field(
        default=None,
        description="learning_rate, weight_decay, batch_size, encoder_depth, decoder_width, "
        "dice_weight, augment (default: all, around the preset's values).",
    )
    exclude_scenes: list[str] | None = Field(
        default=None,
        description="Removed: the scenes in eval/scenes.json are never swept on; setting this "
        "fails the run.",
    )
    device: Device | None = Field(default=None, description=Device.__doc__)
    num_threads: int | None = Field(default=None, description="PyTorch CPU threads per worker.")

    def to_core(self) -> tuple[TrainConfig, Any]:
        """The base training config and the core `SweepConfig`; a `SweepError` when invalid."""
        from mlops_assets.core.cd.sweep import SweepConfig, SweepError

        if self.exclude_scenes is not None:
            raise SweepError(
                "exclude_scenes was removed: list the scenes no model may train on in "
                "eval/scenes.json (the evaluation set); cd/sweep leaves them out, as cd/model does"
            )
        if self.epochs is not None and self.epochs < 1:
            raise SweepError(f"epochs {self.epochs} must be >= 1")
        try:
            base = preset(
                TrainConfig,
                self.preset.value,
                epochs=self.epochs,
                device=None if self.device is None else self.device.value,
                num_threads=self.num_threads,
            )
        except ValueError as exc:  # TrainConfig's own checks (num_threads < 0 ...)
            raise SweepError(str(exc)) from None
        space = None
        if self.search_space is not None:
            space = {k: v.model_dump(exclude_none=True) for k, v in self.search_space.items()}
        sweep = SweepConfig(
            study_name=self.study_name or f"cd-unet-{self.preset.value}",
            n_trials=self.n_trials,
            timeout_s=self.timeout_s,
            n_workers=self.n_workers,
            pruner=self.pruner.value,
            pruner_startup_trials=self.pruner_startup_trials,
            pruner_warmup_epochs=self.pruner_warmup_epochs,
            seed=self.seed,
            space=space,
        )
        return base, sweep


class _Trials:
    """A progress line per finished trial."""

    def __init__(self, log: Any, total: int) -> None:
        self.line, self.total, self.done = ProgressLog(log), total, 0

    def __call__(self, o: Any) -> None:  # a TrialOutcome
        self.done += 1
        value = "-" if o.value is None else f"{o.value:.4f}"
        self.line(
            f"trial {o.number} ({self.done}/{self.total}): {o.state}, F1 {value}, {o.epochs} "
            f"epoch(s), {o.seconds:.0f} s" + (f" ({o.reason})" if o.reason else "")
        )


@dg.asset(
    key=KEY,
    ins={"tiles": dg.AssetIn(key=keys.CD_TILES, metadata={"allow_missing_partitions": True})},
    group_name=keys.CD_GROUP,
    kinds={"optuna", "mlflow"},
    io_manager_key="json_io_manager",
    pool="gpu",
    # No retry policy: a retried run would add its n_trials again to the study it resumes.
    op_tags=gpu_op_tags(),  # on Kubernetes: a GPU node (mlops_assets.scale)
    description=(
        "An Optuna study (TPE, pruned on validation F1) of the U-Net's settings on every labelled "
        "scene's tiles; each trial an MLflow child run of the sweep's run. cd/model trains with "
        "the best params when its config says params_from: sweep."
    ),
)
def cd_sweep(
    context: dg.AssetExecutionContext,
    config: SweepRunConfig,
    tiles: dict[str, Any] | None,
    output_store: OutputStoreResource,
    scene_store: SceneStoreResource,
    mlflow: MLflowResource,
    lineage: LineageResource,
    optuna_storage: OptunaStorageResource,
) -> dg.MaterializeResult[SweepRecord]:
    """Run or resume the study under a parent MLflow run; show the best trials."""
    # PyTorch, Optuna and MLflow load here, when the step runs, not with the code location.
    from mlops_assets.core.cd.dataset import tile_refs
    from mlops_assets.core.cd.sweep import SweepError
    from mlops_assets.core.cd.sweep_tracking import execute_sweep, prepare_sweep
    from mlops_assets.core.cd.train import TrainingError

    # Never trained on: the evaluation scenes (eval/scenes.json), like cd/model.
    records, _ = without_evaluation_scenes(
        tiles_by_scene(tiles), scene_store, context.log, "cd/sweep"
    )
    tracker = mlflow.reachable_tracker(EXPERIMENT)
    git_sha = lineage.code_version()
    with failure_on(SweepError, TrainingError, allow_retries=False):
        base, sweep = config.to_core()
        sets = training_sets(records, output_store, context.log)
        if not sets:
            raise SweepError("no labelled, published tiles: materialise cd/tiles first")
        refs, url = tile_refs(sets), optuna_storage.storage
        prepared = prepare_sweep(refs, base, sweep, url, git_sha, preset=config.preset.value)
        context.log.info(
            f"study {sweep.study_name!r} in {optuna_storage.display}: "
            f"{'new' if prepared.new_study else 'resumed'}, {sweep.n_trials} trial(s) to add"
        )
        with mlflow.tracked_run(
            context,
            tracker,
            lineage,
            name=prepared.run_name,
            tags=prepared.tags,
            params=prepared.params,
            datasets=prepared.datasets,
        ) as parent:
            child_tags = {"dagster.run_id": context.run.run_id, "git_sha": git_sha}
            result = execute_sweep(
                prepared,
                tracker,
                parent,
                child_tags=child_tags,
                on_trial=_Trials(context.log, sweep.n_trials),
            )
    record = result.record(git_sha)
    run_url = tracker.run_url(result.run_id, mlflow.ui_url)
    return dg.MaterializeResult(
        value=record,
        data_version=dg.DataVersion(result.run_id),
        metadata=_metadata(result, git_sha, run_url),
    )


def _metadata(result: Any, git_sha: str, run_url: str) -> dict[str, Any]:
    """The asset page: the study, its MLflow run, the best trial, the top ten, the history.

    ``result`` is a `mlops_assets.core.cd.sweep_tracking.SweepResult`.
    """
    rows = [
        [t.number, f"{t.value:.4f}", t.epochs, f"{t.seconds or 0:.0f}", _params(t.params)]
        for t in result.top(10)
    ]
    history = result.plots.get("history")
    return metadata(
        {
            "study_name": result.study_name,
            "storage": result.storage,
            "mlflow_run_id": result.run_id,
            "mlflow_run": dg.MetadataValue.url(run_url),
            "best_value": round(result.best_value, 4),
            "best_trial": result.best_number,
            "best_params": result.best_params,
            **{f"trials_{k}": v for k, v in result.counts().items()},
            "trials_in_study": len(result.trials),
            "lakefs_commits": result.data_commits,
            "git_sha": git_sha,
            "top_trials": markdown_table(["trial", "F1", "epochs", "s", "params"], rows),
            **({"notes": "; ".join(result.notes)} if result.notes else {}),
            **({"history": image_md(history, "optimisation history")} if history else {}),
        }
    )


def _params(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
