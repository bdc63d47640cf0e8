"""Per-scene Gaussian splats and their registered, gated MLflow versions.

``nvs/splats`` trains 3D Gaussian Splatting on one capture (gsplat on CUDA, the package's CPU
rasteriser elsewhere) and logs the run and the model to MLflow; ``nvs/registered_splats`` registers
it behind a held-out PSNR gate and moves the scene's aliases.
"""

import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from PIL import Image

from mlops_assets import keys
from mlops_assets.assets.common import (
    ProgressLog,
    image_md,
    markdown_table,
    metadata,
    record_type,
)
from mlops_assets.assets.nvs.config import EXPERIMENT, SplatsConfig, SplatsRegistrationConfig
from mlops_assets.assets.registration import champion_score, gated_registration
from mlops_assets.core.aliases import CHALLENGER, CHAMPION
from mlops_assets.core.nvs.records import SplatsRecord, SplatsRegistrationRecord
from mlops_assets.core.scenes.colmap import read_model
from mlops_assets.core.scenes.nvs import NVSScene, materialize_nvs_scene
from mlops_assets.partitions import nvs_scenes
from mlops_assets.resources.failures import failure_on
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.resources.scene_store import SceneStoreResource
from mlops_assets.retries import EXTERNAL_RETRY, TRAINING_RETRY
from mlops_assets.scale import gpu_op_tags

if TYPE_CHECKING:
    from mlops_assets.core.nvs.data import NVSDataset
    from mlops_assets.core.nvs.train import SplatsOutOfMemoryError, TrainResult
    from mlops_assets.core.tracking import DatasetRef, Tracker

KEY = keys.NVS_SPLATS
REGISTERED_KEY = keys.NVS_REGISTERED_SPLATS
GATE_CHECK = "psnr_gate"


def _out_of_memory(
    tracker: "Tracker", run_id: str, scene_id: str, preset: str, exc: "SplatsOutOfMemoryError"
) -> dg.Failure:
    """The step's failure: the preset, the Gaussian count, and the checkpoint kept in MLflow.

    The checkpoint on disk lives in the step's temporary directory, which goes with the step, so
    the run (marked FAILED) keeps it as ``checkpoints/last_good.pt``.
    """
    from mlflow.exceptions import MlflowException

    info: dict[str, Any] = {"preset": preset, "step": exc.step, "phase": exc.phase}
    info["num_gaussians"] = exc.num_gaussians
    kept = "no checkpoint was kept"
    if exc.checkpoint is not None and exc.checkpoint.is_file():
        uri = f"runs:/{run_id}/checkpoints/{exc.checkpoint.name}"
        try:
            tracker.log_artifact(run_id, exc.checkpoint, "checkpoints")
        except (MlflowException, OSError) as err:
            kept = f"the last good checkpoint (step {exc.checkpoint_step}) could not be kept: {err}"
        else:
            kept = f"last good checkpoint (step {exc.checkpoint_step}) kept in MLflow: {uri}"
            info |= {"checkpoint_step": exc.checkpoint_step, "checkpoint_uri": uri}
    return dg.Failure(  # the same preset runs out of memory again: no retry
        description=f"nvs/{scene_id}: preset '{preset}': {exc.reason}; {kept}",
        allow_retries=False,
        metadata=metadata(info),
    )


def _run_inputs(
    source: NVSScene, dataset: "NVSDataset", train_config: Any, preset: str
) -> tuple[dict[str, str], dict[str, Any], list["DatasetRef"]]:
    """The training run's tags, params and dataset input (the scene at its commit)."""
    from mlops_assets.core.tracking import DatasetRef

    scene_id, commit = source.scene_id, source.commit_id
    tags = {"scene_id": scene_id, "lakefs.repository": source.repository}
    tags |= {"lakefs.commit": commit, "preset": preset}
    width, height = dataset.image_size
    location = source.model_location
    params = {
        **train_config.to_dict(),
        "scene_id": scene_id,
        "train_views": len(dataset.train),
        "test_views": len(dataset.test),
        "image_size": f"{width}x{height}",
        "init_points": len(dataset.points),
        "model_source": "" if location is None else location.source,
    }
    uri = f"lakefs://{source.repository}/{commit}/nvs/{scene_id}/"
    return tags, params, [DatasetRef(name=f"nvs/{scene_id}", digest=commit[:16], uri=uri)]


class _Progress:
    """Training losses and held-out evaluations to MLflow and as progress lines."""

    def __init__(self, log: Any, tracker: "Tracker", run_id: str, steps: int) -> None:
        self.line = ProgressLog(log)
        self.tracker = tracker
        self.run_id = run_id
        self.steps = steps

    def log(self, step: int, values: dict[str, float]) -> None:
        """A training step's values (a line at most every 20 s)."""
        self.tracker.log_metrics(self.run_id, values, step=step)
        self.line(
            f"step {step}/{self.steps}: loss {values['loss']:.4f}, "
            f"{values['num_gaussians']:.0f} Gaussians",
            milestone=False,
        )

    def eval(self, step: int, values: dict[str, float], renders: list[Any]) -> None:
        """A held-out evaluation: its metrics and renders."""
        metrics = {f"test_{k}": v for k, v in values.items()}
        self.tracker.log_metrics(self.run_id, metrics, step)
        for name, image in renders:
            path = f"heldout/step{step:06d}/{name}.png"
            self.tracker.log_image(self.run_id, Image.fromarray(image), path)
        self.line(
            f"step {step}/{self.steps}: held-out PSNR {values['psnr']:.2f} dB, "
            f"SSIM {values['ssim']:.3f}, {values['num_gaussians']:.0f} Gaussians"
        )


def _train(
    context: dg.AssetExecutionContext,
    tracker: "Tracker",
    run_id: str,
    dataset: "NVSDataset",
    train_config: Any,
    scene_id: str,
    preset: str,
    work: Path,
) -> "TrainResult":
    """Train the splats, each training error as the step's one-line failure."""
    from mlops_assets.core.nvs.train import (
        DivergenceError,
        NVSTrainingError,
        SplatsOutOfMemoryError,
        train_splats,
    )

    progress = _Progress(context.log, tracker, run_id, train_config.steps)
    try:
        return train_splats(
            dataset,
            train_config,
            on_log=progress.log,
            on_eval=progress.eval,
            checkpoint_dir=work / "checkpoints",
        )
    except SplatsOutOfMemoryError as exc:
        raise _out_of_memory(tracker, run_id, scene_id, preset, exc) from exc
    except DivergenceError as exc:
        raise dg.Failure(  # seeded: a retry diverges the same way
            description=f"nvs/{scene_id}: training diverged at step {exc.step}: {exc}",
            metadata={"step": exc.step},
            allow_retries=False,
        ) from exc
    except NVSTrainingError as exc:
        raise dg.Failure(description=f"nvs/{scene_id}: {exc}", allow_retries=False) from exc


def _log_model(
    tracker: "Tracker",
    run_id: str,
    result: "TrainResult",
    train_config: Any,
    dataset: "NVSDataset",
    source: NVSScene,
) -> str:
    """The summary metrics, device tags and the splat model in the run; the model's URI."""
    from mlops_assets.core.nvs.gaussians import to_numpy
    from mlops_assets.core.nvs.registry import log_splat_model

    tracker.log_metrics(run_id, result.metrics(), step=result.steps_done)
    tracker.set_tags(run_id, {"device": result.device, "rasterizer": result.rasterizer})
    width, height = dataset.image_size
    spec = {
        "sh_degree": train_config.sh_degree,
        "background": list(result.background),
        "width": width,
        "height": height,
        "scene_id": source.scene_id,
        "lakefs_commit": source.commit_id,
    }
    return log_splat_model(tracker, run_id, to_numpy(dict(result.splats.items())), spec)


def _compare_with_champion(
    tracker: "Tracker",
    run_id: str,
    result: "TrainResult",
    dataset: "NVSDataset",
    train_config: Any,
    scene_id: str,
    model_name: str,
) -> None:
    """Held-out views rendered by these splats and by the scene's champion, logged in the run.

    ``nvs/registered_splats`` shows them (ground truth | render | error, per-view PSNR/SSIM of
    both). The champion is the version of ``model_name`` under ``champion-<scene>``, the one
    registration compares with.
    """
    import torch

    from mlops_assets.core.compute import select_device
    from mlops_assets.core.nvs.evaluation import compare_views, log_view_comparison
    from mlops_assets.core.nvs.registry import load_splat_model, scene_alias
    from mlops_assets.core.nvs.train import rasterizer_for

    if not dataset.test:
        return
    alias = scene_alias(CHAMPION, scene_id)
    champion = None
    if tracker.version_by_alias(model_name, alias) is not None:
        champion = load_splat_model(tracker, model_name, alias, "nvs/registered_splats")
    device = select_device(train_config.device)
    rasterize = rasterizer_for(device, train_config.cpu_tile_size)
    on_device = {k: v.detach().to(device) for k, v in result.splats.items()}
    views = compare_views(
        on_device,
        None if champion is None else {k: v.to(device) for k, v in champion.splats.items()},
        dataset.test,
        rasterize,
        train_config.sh_degree,
        torch.tensor(result.background, device=device),
        device,
        None if champion is None else champion.sh_degree,
    )
    log_view_comparison(tracker, run_id, views, None if champion is None else champion.version)


def _heldout_views(tracker: "Tracker", run_id: str, limit: int = 8) -> dict[str, Any]:
    """What the registration page shows of the comparison `_compare_with_champion` logged."""
    from mlops_assets.core.nvs.evaluation import comparison_table, load_view_comparison

    with tempfile.TemporaryDirectory(prefix="nvs-views-") as tmp:
        champion, views = load_view_comparison(tracker, run_id, Path(tmp))
    if not views:
        return {}
    caption = "ground truth | render | abs error x4" + ("; champion below" if champion else "")
    return {
        "heldout_compared_with": f"champion v{champion}" if champion else "no champion yet",
        "heldout_views": dg.MetadataValue.md(comparison_table(views)),
        **{
            f"view {v.name}": image_md(Image.fromarray(v.image), f"{v.name}: {caption}")
            for v in views[:limit]
        },
    }


def _splats_metadata(
    record: SplatsRecord, result: "TrainResult", dataset: "NVSDataset", config: Any, run_url: str
) -> dict[str, Any]:
    """What the asset page shows of a training: quality, cost, and the held-out evaluations."""
    evals = [[e.step, f"{e.psnr:.2f}", f"{e.ssim:.4f}", e.num_gaussians] for e in result.evals]
    return {
        "mlflow_run_id": record.run_id,
        "mlflow_run": dg.MetadataValue.url(run_url),
        "model_uri": record.model_uri,
        "psnr": None if result.psnr is None else round(result.psnr, 3),
        "ssim": None if result.ssim is None else round(result.ssim, 4),
        "num_gaussians": result.num_gaussians,
        "steps": result.steps_done,
        "seconds_per_step": round(result.seconds_per_step, 4),
        "peak_rss_mb": round(result.peak_rss_mb, 1),
        "peak_vram_mb": result.peak_vram_mb,
        "device": result.device,
        "rasterizer": result.rasterizer,
        "train_views": len(dataset.train),
        "test_views": len(dataset.test),
        "lakefs_commit": record.lakefs_commit,
        "git_sha": record.git_sha,
        "config": dataclasses.asdict(config),
        "evaluations": markdown_table(["step", "PSNR", "SSIM", "Gaussians"], evals),
        **(
            {"heldout": image_md(Image.fromarray(result.renders[0][1]), "truth | render")}
            if result.renders
            else {}
        ),
    }


@dg.asset(
    key=KEY,
    ins={"scene": dg.AssetIn(key=keys.NVS_SCENE)},
    partitions_def=nvs_scenes,
    group_name=keys.NVS_GROUP,
    kinds={"pytorch", "gsplat", "mlflow"},
    io_manager_key="json_io_manager",
    retry_policy=TRAINING_RETRY,
    op_tags=gpu_op_tags(),  # on Kubernetes: a GPU node (mlops_assets.scale)
    pool="gpu",
    description=(
        "3D Gaussian Splatting trained on one capture from its sparse points (gsplat on CUDA, "
        "a CPU rasteriser elsewhere); held-out PSNR/SSIM, renders and the model in MLflow."
    ),
)
def nvs_splats(
    context: dg.AssetExecutionContext,
    config: SplatsConfig,
    scene: NVSScene,
    scene_store: SceneStoreResource,
    mlflow: MLflowResource,
    lineage: LineageResource,
) -> dg.MaterializeResult[SplatsRecord]:
    """Train one scene's Gaussians and log the run and the model to MLflow."""
    # PyTorch, gsplat and MLflow load here, when the step runs, not with the code location.
    from mlops_assets.core.nvs.data import NVSDataError, dataset_from_config

    scene_id, commit = scene.scene_id, scene.commit_id
    train_config, preset = config.to_core(), config.preset.value
    tracker = mlflow.reachable_tracker(EXPERIMENT, f"nvs/{scene_id}: ")
    with tempfile.TemporaryDirectory(prefix=f"nvs-{scene_id}-") as tmp:
        model_dir, images_dir = materialize_nvs_scene(scene_store.get_store(), scene, Path(tmp))
        with failure_on(NVSDataError, label=f"nvs/{scene_id} at {commit[:12]}: "):
            dataset = dataset_from_config(read_model(model_dir), images_dir, train_config)
        for note in dataset.notes:
            context.log.warning(f"nvs/{scene_id}: {note}")
        tags, params, datasets = _run_inputs(scene, dataset, train_config, preset)
        name = f"splats-{scene_id}-{context.run.run_id[:8]}"
        with mlflow.tracked_run(
            context, tracker, lineage, name=name, tags=tags, params=params, datasets=datasets
        ) as run_id:
            args = (train_config, scene_id, preset, Path(tmp))
            result = _train(context, tracker, run_id, dataset, *args)
            model_uri = _log_model(tracker, run_id, result, train_config, dataset, scene)
            _compare_with_champion(
                tracker, run_id, result, dataset, train_config, scene_id, config.model_name
            )
    record = SplatsRecord(
        scene_id=scene_id,
        run_id=run_id,
        model_uri=model_uri,
        experiment=EXPERIMENT,
        metrics=result.metrics(),
        lakefs_commit=commit,
        lakefs_repository=scene.repository,
        git_sha=lineage.code_version(),
    )
    run_url = tracker.run_url(run_id, mlflow.ui_url)
    return dg.MaterializeResult(
        value=record,
        data_version=dg.DataVersion(run_id),
        metadata=metadata(_splats_metadata(record, result, dataset, train_config, run_url)),
    )


@dg.asset(
    key=REGISTERED_KEY,
    ins={"splats": dg.AssetIn(key=KEY)},
    partitions_def=nvs_scenes,
    group_name=keys.NVS_GROUP,
    kinds={"mlflow"},
    io_manager_key="json_io_manager",
    dagster_type=record_type(SplatsRegistrationRecord),
    retry_policy=EXTERNAL_RETRY,
    check_specs=[
        dg.AssetCheckSpec(
            GATE_CHECK,
            asset=REGISTERED_KEY,
            blocking=True,
            description="Held-out PSNR reaches the minimum and trails the scene's champion by at "
            "most the tolerance; only then is a version registered.",
        )
    ],
    description=(
        "The scene's splats as a version of the registered model: 'challenger-<scene>' on every "
        "version, 'champion-<scene>' when the PSNR gate passes and auto-promotion is on."
    ),
)
def nvs_registered_splats(
    context: dg.AssetExecutionContext,
    config: SplatsRegistrationConfig,
    splats: SplatsRecord,
    mlflow: MLflowResource,
):  # Dagster derives the outputs (value + checks) from the decorator
    """Gate the scene's splats on held-out PSNR against its champion; register and alias."""
    from mlops_assets.core.nvs.registry import scene_alias
    from mlops_assets.core.tracking import gate

    scene_id, name = splats.scene_id, config.model_name
    tracker = mlflow.reachable_tracker(EXPERIMENT, f"nvs/{scene_id}: ")
    champion_alias = scene_alias(CHAMPION, scene_id)
    champion_version, champion_psnr = champion_score(tracker, name, champion_alias, "psnr")
    psnr = splats.metrics.get("psnr")
    decision = gate(
        float("nan") if psnr is None else float(psnr),
        champion_psnr,
        config.min_psnr,
        config.tolerance_db,
        metric="held-out PSNR",
        champion_version=champion_version,
    )
    record = SplatsRegistrationRecord(
        model_name=name,
        run_id=splats.run_id,
        gate=decision.reason,
        metrics=splats.metrics,
        git_sha=splats.git_sha,
        scene_id=scene_id,
        lakefs_commit=splats.lakefs_commit,
    )
    challenger_alias = scene_alias(CHALLENGER, scene_id)
    return gated_registration(
        context,
        tracker,
        mlflow,
        record,
        decision=decision,
        model_uri=splats.model_uri,
        tags={**splats.version_tags(), "dagster.run_id": context.run.run_id},
        description=f"nvs/{scene_id}: {decision.reason}",
        aliases=[challenger_alias, champion_alias] if config.auto_promote else [challenger_alias],
        extra_metadata={
            "psnr": round(decision.candidate, 3),
            "lakefs_commit": splats.lakefs_commit,
            **_heldout_views(tracker, splats.run_id),
        },
        check_name=GATE_CHECK,
        check_metadata={
            "candidate_psnr": decision.candidate,
            "champion_psnr": decision.champion,
            "champion_version": decision.champion_version,
            "min_psnr": config.min_psnr,
            "tolerance_db": config.tolerance_db,
        },
        label=f"nvs/{scene_id}: ",
    )
