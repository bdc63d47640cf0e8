"""The trained change-detection model and its registered, gated MLflow version.

``cd/model`` trains a U-Net on every labelled scene's tiles and logs the run to MLflow;
``cd/registered_model`` registers it behind the promotion gate and moves the aliases.
"""

import dataclasses
import json
from typing import Any

import dagster as dg

from mlops_assets.assets.cd.config import EXPERIMENT, ModelConfig, RegistrationConfig
from mlops_assets.assets.cd.tiles import KEY as TILES_KEY
from mlops_assets.assets.common import ProgressLog, image_md, markdown_table, metadata
from mlops_assets.assets.registration import champion_score, gated_registration
from mlops_assets.core.aliases import CHALLENGER, CHAMPION
from mlops_assets.core.cd.tiles import TileIndex
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.resources.outputs import OutputStoreResource

KEY = dg.AssetKey(["cd", "model"])
REGISTERED_KEY = dg.AssetKey(["cd", "registered_model"])
GATE_CHECK = "promotion_gate"
_METRICS = ("f1", "iou", "precision", "recall")


def _training_sets(
    tiles: dict[str, dict[str, Any]], output_store: OutputStoreResource, log: Any
) -> list[tuple[Any, TileIndex, dict[str, Any]]]:
    """The published, labelled tile sets, fetched locally; the rest are logged and skipped."""
    sets: list[tuple[Any, TileIndex, dict[str, Any]]] = []
    for scene_id, value in sorted(tiles.items()):
        if not value.get("published"):
            log.warning(f"cd/{scene_id}: no published tiles (its tile checks failed); skipped")
        elif not value.get("labelled_tiles"):
            log.info(f"cd/{scene_id}: no label; not used for training")
        else:
            directory = output_store.fetch(value["key"])
            sets.append((directory, TileIndex.load(directory), value))
    return sets


def _log_split(tracker: Any, run_id: str, split: str, result: Any) -> None:
    """Device and split as MLflow tags, and which scenes trained and validated (split.json).

    ``result`` is the `mlops_assets.core.cd.train.TrainResult`.
    """
    tags = {"device": result.device, "split": split}
    tags |= {"train_scenes": str(len(result.train_scenes))}
    tags |= {"val_scenes": str(len(result.val_scenes))}
    tracker.set_tags(run_id, tags)
    tracker.log_dict(run_id, {"train": result.train_scenes, "val": result.val_scenes}, "split.json")


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


@dg.asset(
    key=KEY,
    ins={"tiles": dg.AssetIn(key=TILES_KEY, metadata={"allow_missing_partitions": True})},
    group_name="change_detection",
    kinds={"pytorch", "mlflow"},
    io_manager_key="json_io_manager",
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
    mlflow: MLflowResource,
    lineage: LineageResource,
) -> dg.MaterializeResult[dict[str, Any]]:
    """Train on every labelled scene's tiles and log the run to MLflow."""
    # PyTorch and MLflow load here, when the step runs, not with the code location.
    from mlops_assets.core.cd.dataset import tile_refs
    from mlops_assets.core.cd.registry import log_cd_model
    from mlops_assets.core.cd.train import TrainingError, train_change_model
    from mlops_assets.core.tracking import DatasetRef, TrackingError

    tiles = tiles or {}  # no cd_scenes partition at all loads as None
    if isinstance(tiles.get("scene_id"), str):  # one partition loads as its value, not a dict
        tiles = {tiles["scene_id"]: tiles}
    train_config = config.to_core()
    tracker = mlflow.tracker(EXPERIMENT)
    try:
        tracker.check_reachable()
    except TrackingError as exc:
        raise dg.Failure(description=str(exc), allow_retries=True) from exc
    sets = _training_sets(tiles, output_store, context.log)
    if not sets:
        raise dg.Failure(
            description="no labelled, published tiles: materialise cd/tiles for labelled scenes "
            f"first (partitions seen: {', '.join(sorted(tiles)) or 'none'})"
        )
    git_sha = lineage.code_version()
    commits = {index.scene_id: index.commit_id for _, index, _ in sets}
    tags = {
        "dagster.run_id": context.run.run_id,
        "dagster.run_url": lineage.run_url(context.run.run_id),
        "git_sha": git_sha,
        "lakefs.repository": sets[0][1].repository,
        "lakefs.commits": json.dumps(commits, sort_keys=True),
        "preset": config.preset.value,
    }
    with tracker.run(f"cd-unet-{context.run.run_id[:8]}", tags) as run_id:
        context.log.info(f"MLflow run {run_id} in {mlflow.display_uri}")
        tracker.log_params(
            run_id,
            {
                **dataclasses.asdict(train_config),
                "scenes": ",".join(sorted(commits)),
                "tile_config_hash": ",".join(sorted({i.config_hash for _, i, _ in sets})),
                "tile_size": sets[0][1].config["tile_size"],
            },
        )
        tracker.log_datasets(
            run_id,
            [
                DatasetRef(
                    name=f"cd/tiles/{index.scene_id}",
                    digest=f"{index.commit_id[:16]}-{index.config_hash}",
                    uri=index.sources["pre"].rsplit("/", 1)[0],
                )
                for _, index, _ in sets
            ],
        )

        progress = _Progress(context.log, tracker, run_id, train_config.epochs)
        try:
            result = train_change_model(
                tile_refs([(d, i) for d, i, _ in sets]),
                train_config,
                progress.epoch,
                progress.batch,
            )
        except TrainingError as exc:
            raise dg.Failure(description=f"training failed: {exc}") from exc
        best = {f"val_{k}": getattr(result.best, k) for k in _METRICS}
        progress.finished(result, train_config.patience)
        tracker.log_metrics(run_id, {**best, "best_epoch": result.best.epoch}, step=0)
        _log_split(tracker, run_id, train_config.split, result)
        for name, image in result.overlays:
            tracker.log_image(run_id, image, f"validation/{name}.png")
        tracker.log_dict(run_id, [dataclasses.asdict(h) for h in result.history], "history.json")
        model_uri = log_cd_model(tracker, run_id, result, train_config.threshold)
    run_url = tracker.run_url(run_id, mlflow.ui_url)
    value = {
        "run_id": run_id,
        "model_uri": model_uri,
        "experiment": EXPERIMENT,
        "metrics": best,
        "best_epoch": result.best.epoch,
        "lakefs_commits": commits,
        "lakefs_repository": sets[0][1].repository,
        "git_sha": git_sha,
        "tiles": {index.scene_id: value["key"] for _, index, value in sets},
        "train_scenes": result.train_scenes,
        "val_scenes": result.val_scenes,
    }
    history = [
        [h.epoch, f"{h.train_loss:.4f}", f"{h.val_loss:.4f}", f"{h.f1:.4f}", f"{h.iou:.4f}"]
        for h in result.history
    ]
    return dg.MaterializeResult(
        value=value,
        data_version=dg.DataVersion(run_id),
        metadata=metadata(
            {
                "mlflow_run_id": run_id,
                "mlflow_run": dg.MetadataValue.url(run_url),
                "model_uri": model_uri,
                **{k: round(v, 4) for k, v in best.items()},
                "best_epoch": result.best.epoch,
                "epochs_run": len(result.history),
                "train_tiles": result.train_tiles,
                "val_tiles": result.val_tiles,
                "buffer_tiles": result.buffer_tiles,
                "split": train_config.split,
                "train_scenes": result.train_scenes,
                "val_scenes": result.val_scenes,
                "device": result.device,
                "lakefs_commits": commits,
                "git_sha": git_sha,
                "history": markdown_table(
                    ["epoch", "train loss", "val loss", "F1", "IoU"], history
                ),
                **(
                    {"validation_overlay": image_md(result.overlays[0][1], "prediction | label")}
                    if result.overlays
                    else {}
                ),
            }
        ),
    )


@dg.asset(
    key=REGISTERED_KEY,
    ins={"model": dg.AssetIn(key=KEY)},
    group_name="change_detection",
    kinds={"mlflow"},
    io_manager_key="json_io_manager",
    check_specs=[
        dg.AssetCheckSpec(
            GATE_CHECK,
            asset=REGISTERED_KEY,
            blocking=True,
            description="Validation F1 reaches the minimum and trails the champion by at most the "
            "tolerance; only then is a version registered.",
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
    model: dict[str, Any],
    mlflow: MLflowResource,
):  # Dagster derives the outputs (value + checks) from the decorator
    """Gate the trained model against the threshold and the champion; register and alias it."""
    from mlops_assets.core.tracking import TrackingError, gate

    gate_config = config.to_core()
    tracker = mlflow.tracker(EXPERIMENT)
    try:
        tracker.check_reachable()
    except TrackingError as exc:
        raise dg.Failure(description=str(exc), allow_retries=True) from exc
    name = config.model_name
    champion_version, champion_f1 = champion_score(tracker, name, CHAMPION, "val_f1")
    decision = gate(
        float(model["metrics"]["val_f1"]),
        champion_f1,
        gate_config.min_f1,
        gate_config.tolerance,
        champion_version=champion_version,
    )
    tags = {
        **{k: f"{v:.6f}" for k, v in model["metrics"].items()},
        "lakefs.repository": model["lakefs_repository"],
        "lakefs.commits": json.dumps(model["lakefs_commits"], sort_keys=True),
        "git_sha": model["git_sha"],
        "dagster.run_id": context.run.run_id,
        "mlflow.run_id": model["run_id"],
    }
    return gated_registration(
        context,
        tracker,
        mlflow,
        name=name,
        decision=decision,
        model_uri=model["model_uri"],
        run_id=model["run_id"],
        tags=tags,
        description=decision.reason,
        aliases=[CHALLENGER, CHAMPION] if gate_config.auto_promote else [CHALLENGER],
        value={
            "model_name": name,
            "run_id": model["run_id"],
            "gate": decision.reason,
            "metrics": model["metrics"],
            "lakefs_commits": model["lakefs_commits"],
            "git_sha": model["git_sha"],
        },
        extra_metadata={
            "val_f1": round(decision.candidate, 4),
            "lakefs_commits": model["lakefs_commits"],
        },
        check_name=GATE_CHECK,
        check_metadata={
            "candidate_f1": decision.candidate,
            "champion_f1": decision.champion,
            "champion_version": decision.champion_version,
            "min_f1": gate_config.min_f1,
            "tolerance": gate_config.tolerance,
        },
    )
