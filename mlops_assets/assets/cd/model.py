"""The trained change-detection model and its registered, gated MLflow version.

``cd/model`` trains a U-Net on every labelled scene's tiles and logs the run to MLflow;
``cd/registered_model`` registers it behind the promotion gate and moves the aliases.
"""

import dataclasses
import json
from typing import Any

import dagster as dg

from mlops_assets import keys
from mlops_assets.assets.cd.config import EXPERIMENT, ModelConfig, ParamsFrom, RegistrationConfig
from mlops_assets.assets.common import (
    ProgressLog,
    image_md,
    markdown_table,
    metadata,
    record_type,
)
from mlops_assets.assets.registration import champion_score, gated_registration
from mlops_assets.core.aliases import CHALLENGER, CHAMPION
from mlops_assets.core.cd.records import (
    CDModelRecord,
    CDRegistrationRecord,
    TilesRecord,
    tiles_by_scene,
)
from mlops_assets.core.cd.report import EvaluationReport
from mlops_assets.core.cd.tiles import TileIndex
from mlops_assets.resources.failures import failure_on
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.resources.outputs import OutputStoreResource
from mlops_assets.resources.scene_store import SceneStoreResource
from mlops_assets.retries import EXTERNAL_RETRY, TRAINING_RETRY
from mlops_assets.scale import gpu_op_tags

KEY = keys.CD_MODEL
REGISTERED_KEY = keys.CD_REGISTERED_MODEL
GATE_CHECK = "promotion_gate"
_METRICS = ("f1", "iou", "precision", "recall")


def training_sets(
    tiles: dict[str, TilesRecord], output_store: OutputStoreResource, log: Any
) -> list[tuple[Any, TileIndex]]:
    """The published, labelled tile sets, fetched locally; the rest are logged and skipped."""
    sets: list[tuple[Any, TileIndex]] = []
    for scene_id, record in sorted(tiles.items()):
        if not record.published:
            log.warning(f"cd/{scene_id}: no published tiles (its tile checks failed); skipped")
        elif not record.labelled_tiles:
            log.info(f"cd/{scene_id}: no label; not used for training")
        else:
            directory = output_store.fetch(record.key)
            sets.append((directory, TileIndex.load(directory)))
    return sets


def without_evaluation_scenes(
    records: dict[str, TilesRecord], scene_store: SceneStoreResource, log: Any, asset: str
) -> tuple[dict[str, TilesRecord], Any]:
    """``records`` less the scenes listed in ``eval/scenes.json`` on main, and that set.

    None instead of the set when there are no records (the store is not read).

    Held out scenes are neither trained nor validated on (`mlops_assets.core.scenes.evaluation`).
    """
    from mlops_assets.core.scenes.evaluation import (
        EVALUATION_PATH,
        EvaluationSetError,
        read_evaluation_set,
    )
    from mlops_assets.core.scenes.layout import SceneKind
    from mlops_assets.core.store.types import StoreError

    if not records:  # nothing to train on: cd/model says so, the store is not asked
        return records, None
    # A bad eval/scenes.json fails once; an unreachable store is retried.
    with (
        failure_on(EvaluationSetError, label=f"{asset}: evaluation set: ", allow_retries=False),
        failure_on(StoreError, label=f"{asset}: evaluation set: "),
    ):
        held_out = read_evaluation_set(
            scene_store.get_store(), SceneKind.CD, scene_store.branch, check=False
        )
    for scene_id in sorted(set(records) & set(held_out.scene_ids)):
        log.info(
            f"cd/{scene_id}: held out for evaluation ({EVALUATION_PATH} at "
            f"{held_out.commit_id[:12]}): not trained or validated on"
        )
    return {k: v for k, v in records.items() if not held_out.excludes(k)}, held_out


def _run_inputs(
    train_config: Any, sets: list[tuple[Any, TileIndex]], preset: str, held_out: Any
) -> tuple[dict[str, str], dict[str, Any], list[Any]]:
    """The training run's tags, params and dataset inputs (one per scene's tile set).

    The tags say which scenes the model saw (`TRAINED_SCENES_TAG`: trained or validated on) and
    the evaluation set held out of it (``held_out``, an `EvaluationSet`).
    """
    from mlops_assets.core.cd.evaluation import TRAINED_SCENES_TAG, trained_scenes_tag
    from mlops_assets.core.tracking import DatasetRef

    indexes = [index for _, index in sets]
    commits = {index.scene_id: index.commit_id for index in indexes}
    tags = {
        "lakefs.repository": indexes[0].repository,
        "lakefs.commits": json.dumps(commits, sort_keys=True),
        "preset": preset,
        TRAINED_SCENES_TAG: trained_scenes_tag(list(commits)),
        "evaluation.commit": held_out.commit_id,
        "evaluation.scenes": json.dumps(list(held_out.scene_ids)),
    }
    params = {
        **dataclasses.asdict(train_config),
        "scenes": ",".join(sorted(commits)),
        "tile_config_hash": ",".join(sorted({i.config_hash for i in indexes})),
        "tile_size": indexes[0].config["tile_size"],
    }
    datasets = [
        DatasetRef(
            name=f"cd/tiles/{index.scene_id}",
            digest=f"{index.commit_id[:16]}-{index.config_hash}",
            uri=index.sources["pre"].rsplit("/", 1)[0],
        )
        for index in indexes
    ]
    return tags, params, datasets


def _log_result(tracker: Any, run_id: str, result: Any, train_config: Any) -> dict[str, float]:
    """The best epoch's metrics, split, overlays and history in the run; the best metrics.

    ``result`` is the `mlops_assets.core.cd.train.TrainResult`.
    """
    best = {f"val_{k}": getattr(result.best, k) for k in _METRICS}
    tracker.log_metrics(run_id, {**best, "best_epoch": result.best.epoch}, step=0)
    tags = {"device": result.device, "split": train_config.split}
    tags |= {"train_scenes": str(len(result.train_scenes))}
    tags |= {"val_scenes": str(len(result.val_scenes))}
    tracker.set_tags(run_id, tags)
    split = {"train": result.train_scenes, "val": result.val_scenes}
    tracker.log_dict(run_id, split, "split.json")
    for name, image in result.overlays:
        tracker.log_image(run_id, image, f"validation/{name}.png")
    tracker.log_dict(run_id, [dataclasses.asdict(h) for h in result.history], "history.json")
    return best


def _model_metadata(record: CDModelRecord, result: Any, split: str, run_url: str) -> dict[str, Any]:
    """What the asset page shows of a training: metrics, split, history and an overlay."""
    history = [
        [h.epoch, f"{h.train_loss:.4f}", f"{h.val_loss:.4f}", f"{h.f1:.4f}", f"{h.iou:.4f}"]
        for h in result.history
    ]
    return {
        "mlflow_run_id": record.run_id,
        "mlflow_run": dg.MetadataValue.url(run_url),
        "model_uri": record.model_uri,
        **{k: round(v, 4) for k, v in record.metrics.items()},
        "best_epoch": record.best_epoch,
        "epochs_run": len(result.history),
        "train_tiles": result.train_tiles,
        "val_tiles": result.val_tiles,
        "buffer_tiles": result.buffer_tiles,
        "split": split,
        "train_scenes": result.train_scenes,
        "val_scenes": result.val_scenes,
        "device": result.device,
        "lakefs_commits": record.lakefs_commits,
        "git_sha": record.git_sha,
        "history": markdown_table(["epoch", "train loss", "val loss", "F1", "IoU"], history),
        **(
            {"validation_overlay": image_md(result.overlays[0][1], "prediction | label")}
            if result.overlays
            else {}
        ),
    }


def _tuned(config: ModelConfig, tracker: Any) -> Any:
    """The newest sweep's best params (a `SweepChoice`) with ``params_from: sweep``, else None.

    No finished sweep is a `dagster.Failure` saying so, before any run is opened.
    """
    if config.params_from != ParamsFrom.sweep:
        return None
    from mlops_assets.core.cd.sweep import SweepError
    from mlops_assets.core.cd.sweep_tracking import latest_sweep

    with failure_on(SweepError, allow_retries=False):
        return latest_sweep(tracker, config.sweep_study, preset=config.preset.value)


class _Progress:
    """Each epoch to MLflow and as a progress line; a batch line when an epoch runs long."""

    def __init__(self, log: Any, tracker: Any, run_id: str, epochs: int) -> None:
        self.line = ProgressLog(log)
        self.tracker = tracker
        self.run_id = run_id
        self.epochs = epochs
        self.best_f1 = 0.0

    def epoch(self, m: Any) -> None:  # an EpochMetrics (PyTorch is imported by the step only)
        """Log one epoch's metrics and its progress line."""
        values = {k: v for k, v in dataclasses.asdict(m).items() if k != "epoch"}
        self.tracker.log_metrics(self.run_id, values, step=m.epoch)
        self.best_f1 = max(self.best_f1, m.f1)
        self.line(
            f"epoch {m.epoch}/{self.epochs}: loss {m.train_loss:.3f}, val F1 {m.f1:.3f} "
            f"(best {self.best_f1:.3f}), IoU {m.iou:.3f}, {m.seconds:.0f} s "
            f"({m.samples_per_second:.1f} samples/s)"
        )

    def batch(self, epoch: int, batch: int, batches: int, loss: float) -> None:
        """A progress line within a long epoch (at most every 20 s)."""
        text = f"epoch {epoch}/{self.epochs}: batch {batch}/{batches}, loss {loss:.3f}"
        self.line(text, milestone=False)

    def finished(self, result: Any, patience: int) -> None:  # a TrainResult
        """Say so when training stopped early, and which epoch it kept."""
        if result.stopped_early:
            self.line(
                f"stopped after epoch {len(result.history)}/{self.epochs}: no better validation "
                f"F1 for {patience} epochs; keeping epoch {result.best.epoch} "
                f"(F1 {result.best.f1:.3f})"
            )


def _record(
    result: Any,
    sets: list[tuple[Any, TileIndex]],
    records: dict[str, TilesRecord],
    tuned: Any,
    **fields: Any,
) -> CDModelRecord:
    """What cd/model hands on: ``fields`` plus the kept epoch, and the scenes and tiles it used.

    ``result`` is the `mlops_assets.core.cd.train.TrainResult`, ``tuned`` the sweep's choice or
    None.
    """
    return CDModelRecord(
        experiment=EXPERIMENT,
        best_epoch=result.best.epoch,
        lakefs_commits={index.scene_id: index.commit_id for _, index in sets},
        lakefs_repository=sets[0][1].repository,
        tiles={index.scene_id: records[index.scene_id].key for _, index in sets},
        train_scenes=result.train_scenes,
        val_scenes=result.val_scenes,
        sweep_run_id="" if tuned is None else tuned.run_id,
        sweep_study="" if tuned is None else tuned.study_name,
        **fields,
    )


@dg.asset(
    key=KEY,
    ins={"tiles": dg.AssetIn(key=keys.CD_TILES, metadata={"allow_missing_partitions": True})},
    group_name=keys.CD_GROUP,
    kinds={"pytorch", "mlflow"},
    io_manager_key="json_io_manager",
    retry_policy=TRAINING_RETRY,
    op_tags=gpu_op_tags(),  # on Kubernetes: a GPU node (mlops_assets.scale)
    pool="gpu",
    description=(
        "An early-fusion U-Net (segmentation-models-pytorch) trained on the tiles of every "
        "labelled scene, split by spatial block; run, metrics, datasets and model in MLflow."
    ),
)
def cd_model(
    context: dg.AssetExecutionContext,
    config: ModelConfig,
    tiles: dict[str, Any] | None,
    output_store: OutputStoreResource,
    scene_store: SceneStoreResource,
    mlflow: MLflowResource,
    lineage: LineageResource,
) -> dg.MaterializeResult[CDModelRecord]:
    """Train on every labelled scene's tiles but the evaluation scenes; log the run to MLflow."""
    # PyTorch and MLflow load here, when the step runs, not with the code location.
    from mlops_assets.core.cd.dataset import tile_refs
    from mlops_assets.core.cd.registry import log_cd_model
    from mlops_assets.core.cd.train import TrainingError, train_change_model

    records, held_out = without_evaluation_scenes(
        tiles_by_scene(tiles), scene_store, context.log, "cd/model"
    )
    tracker = mlflow.reachable_tracker(EXPERIMENT)
    tuned = _tuned(config, tracker)
    train_config = config.to_core(None if tuned is None else tuned.config_fields())
    sets = training_sets(records, output_store, context.log)
    if not sets:
        raise dg.Failure(
            description="no labelled, published tiles: materialise cd/tiles for labelled scenes "
            f"first (partitions seen: {', '.join(sorted(records)) or 'none'})",
            allow_retries=False,
        )
    tags, params, datasets = _run_inputs(train_config, sets, config.preset.value, held_out)
    tags |= {} if tuned is None else tuned.tags()
    name = f"cd-unet-{context.run.run_id[:8]}"
    with mlflow.tracked_run(
        context, tracker, lineage, name=name, tags=tags, params=params, datasets=datasets
    ) as run_id:
        progress = _Progress(context.log, tracker, run_id, train_config.epochs)
        with failure_on(TrainingError, label="training failed: ", allow_retries=False):
            result = train_change_model(
                tile_refs(sets), train_config, progress.epoch, progress.batch
            )
        progress.finished(result, train_config.patience)
        best = _log_result(tracker, run_id, result, train_config)
        model_uri = log_cd_model(tracker, run_id, result, train_config.threshold)
    record = _record(
        result, sets, records, tuned,
        run_id=run_id, model_uri=model_uri, metrics=best, git_sha=lineage.code_version(),
    )  # fmt: skip
    run_url = tracker.run_url(run_id, mlflow.ui_url)
    return dg.MaterializeResult(
        value=record,
        data_version=dg.DataVersion(run_id),
        metadata=metadata(_model_metadata(record, result, train_config.split, run_url)),
    )


def _decide(
    tracker: Any, name: str, trained: CDModelRecord, report: EvaluationReport, gate: Any
) -> tuple[Any, dict[str, Any]]:
    """The promotion decision (a `GateDecision`) and what the asset page shows of it.

    With evaluation scenes: the validation-F1 bar, then challenger against champion on the same
    evaluation scenes (`promotion_decision`), naming the scenes that got worse. Without any: the
    validation F1 against the champion's, as before, and the reason says so.
    """
    from mlops_assets.core.cd.evaluation import promotion_decision, stale_reason
    from mlops_assets.core.tracking import gate as validation_gate

    val_f1 = float(trained.metrics["val_f1"])
    current = tracker.version_by_alias(name, CHAMPION)
    now = None if current is None else (str(current.version), str(current.run_id))
    stale = stale_reason(report, trained.run_id, now)
    if stale:
        raise dg.Failure(
            description=f"cd/registered_model: cd/evaluation is stale: {stale}; materialise "
            "cd/evaluation again (cd_retrain runs model, evaluation and registration together)",
            allow_retries=False,
        )
    if not report.evaluation_set:
        version, champion_f1 = champion_score(tracker, name, CHAMPION, "val_f1")
        decision = validation_gate(
            val_f1, champion_f1, gate.min_f1, gate.tolerance, champion_version=version
        )
        note = "no evaluation scenes in eval/scenes.json: gated on validation F1; "
        return dataclasses.replace(decision, reason=note + decision.reason), {"gate_on": "val"}
    same = promotion_decision(report, val_f1, gate.min_f1, gate.tolerance)
    tracker.set_tags(trained.run_id, {"evaluation.gate": same.reason[:5000]})
    return same.as_gate(), {
        "gate_on": "evaluation set",
        "eval_f1": round(same.candidate, 4),
        "champion_eval_f1": None if same.champion is None else round(same.champion, 4),
        "worse_scenes": list(same.worse_scenes),
        "evaluation_commit": report.evaluation_set.commit_id,
    }


@dg.asset(
    key=REGISTERED_KEY,
    ins={"model": dg.AssetIn(key=KEY), "evaluation": dg.AssetIn(key=keys.CD_EVALUATION)},
    group_name=keys.CD_GROUP,
    kinds={"mlflow"},
    io_manager_key="json_io_manager",
    dagster_type=record_type(CDRegistrationRecord),
    retry_policy=EXTERNAL_RETRY,
    check_specs=[
        dg.AssetCheckSpec(
            GATE_CHECK,
            asset=REGISTERED_KEY,
            blocking=True,
            description="Validation F1 reaches the minimum and, on the evaluation scenes "
            "(cd/evaluation), F1 trails the champion's on the same scenes by at most the "
            "tolerance (without evaluation scenes: the champion's validation F1); a model that "
            "trained on an evaluation scene is refused. Only then is a version registered.",
        )
    ],
    description=(
        "The trained model as a registered MLflow model version: 'challenger' on every version, "
        "'champion' when the promotion gate passes and auto-promotion is on. Aliases, no stages."
    ),
)
def cd_registered_model(
    context: dg.AssetExecutionContext,
    config: RegistrationConfig,
    model: CDModelRecord,
    evaluation: EvaluationReport,
    mlflow: MLflowResource,
):  # Dagster derives the outputs (value + checks) from the decorator
    """Gate the trained model on its evaluation against the champion; register and alias it."""
    from mlops_assets.core.cd.evaluation import TRAINED_SCENES_TAG, trained_scenes_tag

    gate_config = config.to_core()
    tracker = mlflow.reachable_tracker(EXPERIMENT)
    name = config.model_name
    decision, shown = _decide(tracker, name, model, evaluation, gate_config)
    record = CDRegistrationRecord(
        model_name=name,
        run_id=model.run_id,
        gate=decision.reason,
        metrics=model.metrics,
        git_sha=model.git_sha,
        lakefs_commits=model.lakefs_commits,
    )
    tags = {**model.version_tags(), "dagster.run_id": context.run.run_id}
    tags[TRAINED_SCENES_TAG] = trained_scenes_tag(list(model.lakefs_commits))
    return gated_registration(
        context,
        tracker,
        mlflow,
        record,
        decision=decision,
        model_uri=model.model_uri,
        tags=tags,
        description=decision.reason,
        aliases=[CHALLENGER, CHAMPION] if gate_config.auto_promote else [CHALLENGER],
        extra_metadata={
            "val_f1": round(float(model.metrics["val_f1"]), 4),
            "lakefs_commits": model.lakefs_commits,
            **shown,
        },
        check_name=GATE_CHECK,
        check_metadata={
            "candidate_f1": decision.candidate,
            "champion_f1": decision.champion,
            "champion_version": decision.champion_version,
            "min_f1": gate_config.min_f1,
            "tolerance": gate_config.tolerance,
            **shown,
        },
    )
