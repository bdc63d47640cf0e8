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

from mlops_assets.assets.common import ProgressLog, image_md, markdown_table, metadata
from mlops_assets.assets.nvs.config import (
    EXPERIMENT,
    SplatsConfig,
    SplatsRegistrationConfig,
)
from mlops_assets.assets.nvs.scene import KEY as SCENE_KEY
from mlops_assets.assets.registration import champion_score, gated_registration
from mlops_assets.core.aliases import CHALLENGER, CHAMPION
from mlops_assets.core.scenes.colmap import read_model
from mlops_assets.core.scenes.nvs import materialize_nvs_scene
from mlops_assets.partitions import nvs_scenes
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.resources.scene_store import SceneStoreResource

if TYPE_CHECKING:
    from mlops_assets.core.nvs.train import SplatsOutOfMemoryError
    from mlops_assets.core.tracking import Tracker

KEY = dg.AssetKey(["nvs", "splats"])
REGISTERED_KEY = dg.AssetKey(["nvs", "registered_splats"])
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
    return dg.Failure(
        description=f"nvs/{scene_id}: preset '{preset}': {exc.reason}; {kept}",
        metadata=metadata(info),
    )


def _reachable(mlflow: MLflowResource, scene_id: str) -> Any:
    from mlops_assets.core.tracking import TrackingError

    tracker = mlflow.tracker(EXPERIMENT)
    try:
        tracker.check_reachable()
    except TrackingError as exc:
        raise dg.Failure(description=f"nvs/{scene_id}: {exc}", allow_retries=True) from exc
    return tracker


@dg.asset(
    key=KEY,
    ins={"scene": dg.AssetIn(key=SCENE_KEY)},
    partitions_def=nvs_scenes,
    group_name="novel_view_synthesis",
    kinds={"pytorch", "gsplat", "mlflow"},
    io_manager_key="json_io_manager",
    pool="gpu",
    description=(
        "3D Gaussian Splatting trained on one capture from its sparse points (gsplat on CUDA, "
        "a CPU rasteriser elsewhere); held-out PSNR/SSIM, renders and the model in MLflow."
    ),
)
def nvs_splats(
    context: dg.AssetExecutionContext,
    config: SplatsConfig,
    scene: dict[str, Any],
    scene_store: SceneStoreResource,
    mlflow: MLflowResource,
    lineage: LineageResource,
) -> dg.MaterializeResult[dict[str, Any]]:
    """Train one scene's Gaussians and log the run and the model to MLflow."""
    # PyTorch, gsplat and MLflow load here, when the step runs, not with the code location.
    from mlops_assets.core.nvs.data import NVSDataError, dataset_from_config
    from mlops_assets.core.nvs.gaussians import to_numpy
    from mlops_assets.core.nvs.registry import log_splat_model
    from mlops_assets.core.nvs.train import (
        DivergenceError,
        NVSTrainingError,
        SplatsOutOfMemoryError,
        train_splats,
    )
    from mlops_assets.core.tracking import DatasetRef

    scene_id, commit = scene["scene_id"], scene["commit_id"]
    train_config = config.to_core()
    tracker = _reachable(mlflow, scene_id)
    git_sha = lineage.code_version()
    store = scene_store.get_store()
    with tempfile.TemporaryDirectory(prefix=f"nvs-{scene_id}-") as tmp:
        model_dir, images_dir = materialize_nvs_scene(store, scene, Path(tmp))
        colmap = read_model(model_dir)
        try:
            dataset = dataset_from_config(colmap, images_dir, train_config)
        except NVSDataError as exc:
            raise dg.Failure(description=f"nvs/{scene_id} at {commit[:12]}: {exc}") from exc
        for note in dataset.notes:
            context.log.warning(f"nvs/{scene_id}: {note}")
        tags = {
            "dagster.run_id": context.run.run_id,
            "dagster.run_url": lineage.run_url(context.run.run_id),
            "git_sha": git_sha,
            "scene_id": scene_id,
            "lakefs.repository": scene["repository"],
            "lakefs.commit": commit,
            "preset": config.preset.value,
        }
        with tracker.run(f"splats-{scene_id}-{context.run.run_id[:8]}", tags) as run_id:
            context.log.info(f"MLflow run {run_id} in {mlflow.display_uri}")
            width, height = dataset.image_size
            tracker.log_params(
                run_id,
                {
                    **train_config.to_dict(),
                    "scene_id": scene_id,
                    "train_views": len(dataset.train),
                    "test_views": len(dataset.test),
                    "image_size": f"{width}x{height}",
                    "init_points": len(dataset.points),
                    "model_source": str((scene.get("model_location") or {}).get("source", "")),
                },
            )
            tracker.log_datasets(
                run_id,
                [
                    DatasetRef(
                        name=f"nvs/{scene_id}",
                        digest=commit[:16],
                        uri=f"lakefs://{scene['repository']}/{commit}/nvs/{scene_id}/",
                    )
                ],
            )

            progress = ProgressLog(context.log)
            steps = train_config.steps

            def on_log(step: int, values: dict[str, float]) -> None:
                tracker.log_metrics(run_id, values, step=step)
                progress(
                    f"step {step}/{steps}: loss {values['loss']:.4f}, "
                    f"{values['num_gaussians']:.0f} Gaussians",
                    milestone=False,
                )

            def on_eval(step: int, values: dict[str, float], renders: list[Any]) -> None:
                tracker.log_metrics(run_id, {f"test_{k}": v for k, v in values.items()}, step)
                for name, image in renders:
                    tracker.log_image(
                        run_id, Image.fromarray(image), f"heldout/step{step:06d}/{name}.png"
                    )
                progress(
                    f"step {step}/{steps}: held-out PSNR {values['psnr']:.2f} dB, "
                    f"SSIM {values['ssim']:.3f}, {values['num_gaussians']:.0f} Gaussians"
                )

            try:
                result = train_splats(
                    dataset,
                    train_config,
                    on_log=on_log,
                    on_eval=on_eval,
                    checkpoint_dir=Path(tmp) / "checkpoints",
                )
            except SplatsOutOfMemoryError as exc:
                raise _out_of_memory(tracker, run_id, scene_id, config.preset.value, exc) from exc
            except DivergenceError as exc:
                raise dg.Failure(
                    description=f"nvs/{scene_id}: training diverged at step {exc.step}: {exc}",
                    metadata={"step": exc.step},
                ) from exc
            except NVSTrainingError as exc:
                raise dg.Failure(description=f"nvs/{scene_id}: {exc}") from exc
            summary = result.metrics()
            tracker.log_metrics(run_id, summary, step=result.steps_done)
            tracker.set_tags(run_id, {"device": result.device, "rasterizer": result.rasterizer})
            spec = {
                "sh_degree": train_config.sh_degree,
                "background": list(result.background),
                "width": width,
                "height": height,
                "scene_id": scene_id,
                "lakefs_commit": commit,
            }
            model_uri = log_splat_model(
                tracker, run_id, to_numpy(dict(result.splats.items())), spec
            )
    run_url = tracker.run_url(run_id, mlflow.ui_url)
    value = {
        "scene_id": scene_id,
        "run_id": run_id,
        "model_uri": model_uri,
        "experiment": EXPERIMENT,
        "metrics": summary,
        "lakefs_commit": commit,
        "lakefs_repository": scene["repository"],
        "git_sha": git_sha,
    }
    evals = [[e.step, f"{e.psnr:.2f}", f"{e.ssim:.4f}", e.num_gaussians] for e in result.evals]
    return dg.MaterializeResult(
        value=value,
        data_version=dg.DataVersion(run_id),
        metadata=metadata(
            {
                "mlflow_run_id": run_id,
                "mlflow_run": dg.MetadataValue.url(run_url),
                "model_uri": model_uri,
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
                "lakefs_commit": commit,
                "git_sha": git_sha,
                "config": dataclasses.asdict(train_config),
                "evaluations": markdown_table(["step", "PSNR", "SSIM", "Gaussians"], evals),
                **(
                    {"heldout": image_md(Image.fromarray(result.renders[0][1]), "truth | render")}
                    if result.renders
                    else {}
                ),
            }
        ),
    )


@dg.asset(
    key=REGISTERED_KEY,
    ins={"splats": dg.AssetIn(key=KEY)},
    partitions_def=nvs_scenes,
    group_name="novel_view_synthesis",
    kinds={"mlflow"},
    io_manager_key="json_io_manager",
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
    splats: dict[str, Any],
    mlflow: MLflowResource,
):  # Dagster derives the outputs (value + checks) from the decorator
    """Gate the scene's splats on held-out PSNR against its champion; register and alias."""
    from mlops_assets.core.nvs.registry import scene_alias
    from mlops_assets.core.tracking import gate

    scene_id = splats["scene_id"]
    tracker = _reachable(mlflow, scene_id)
    name = config.model_name
    champion_alias = scene_alias(CHAMPION, scene_id)
    champion_version, champion_psnr = champion_score(tracker, name, champion_alias, "psnr")
    psnr = splats["metrics"].get("psnr")
    decision = gate(
        float("nan") if psnr is None else float(psnr),
        champion_psnr,
        config.min_psnr,
        config.tolerance_db,
        metric="held-out PSNR",
        champion_version=champion_version,
    )
    tags = {
        **{k: f"{v:.6f}" for k, v in splats["metrics"].items()},
        "scene_id": scene_id,
        "lakefs.repository": splats["lakefs_repository"],
        "lakefs.commit": splats["lakefs_commit"],
        "git_sha": splats["git_sha"],
        "dagster.run_id": context.run.run_id,
        "mlflow.run_id": splats["run_id"],
    }
    challenger_alias = scene_alias(CHALLENGER, scene_id)
    return gated_registration(
        context,
        tracker,
        mlflow,
        name=name,
        decision=decision,
        model_uri=splats["model_uri"],
        run_id=splats["run_id"],
        tags=tags,
        description=f"nvs/{scene_id}: {decision.reason}",
        aliases=[challenger_alias, champion_alias] if config.auto_promote else [challenger_alias],
        value={
            "scene_id": scene_id,
            "model_name": name,
            "run_id": splats["run_id"],
            "gate": decision.reason,
            "metrics": splats["metrics"],
            "lakefs_commit": splats["lakefs_commit"],
            "git_sha": splats["git_sha"],
        },
        extra_metadata={
            "psnr": round(decision.candidate, 3),
            "lakefs_commit": splats["lakefs_commit"],
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
