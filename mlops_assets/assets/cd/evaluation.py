"""``cd/evaluation``: the trained model and the champion on the same held-out scenes.

Between ``cd/model`` and ``cd/registered_model``: both models predict every scene listed in
``eval/scenes.json`` (at one commit of main) with ``cd/change_map``'s inference; the report goes
to the challenger's MLflow run and to the asset page, and the promotion gate decides from it.
"""

from typing import Any

import dagster as dg
from pydantic import Field

from mlops_assets import keys
from mlops_assets.assets.cd.config import (
    DEFAULT_MODEL_NAME,
    EXPERIMENT,
    PRESET_FIELD,
    Device,
    Preset,
)
from mlops_assets.assets.common import image_md, metadata
from mlops_assets.core.aliases import CHAMPION
from mlops_assets.core.cd.config import InferenceConfig, preset
from mlops_assets.core.cd.records import CDModelRecord
from mlops_assets.core.cd.report import EvaluationReport
from mlops_assets.resources.failures import failure_on
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.resources.outputs import OutputStoreResource
from mlops_assets.resources.scene_store import SceneStoreResource
from mlops_assets.retries import EXTERNAL_RETRY
from mlops_assets.scale import gpu_op_tags

KEY = keys.CD_EVALUATION


class EvaluationConfig(dg.Config):
    """Which champion ``cd/evaluation`` compares with, and how it predicts (as cd/change_map)."""

    preset: Preset = PRESET_FIELD
    model_name: str = Field(default=DEFAULT_MODEL_NAME, description="Registered model name.")
    champion_alias: str = Field(default=CHAMPION, description="Alias of the version to beat.")
    device: Device | None = Field(default=None, description=Device.__doc__)

    def to_core(self) -> InferenceConfig:
        """The inference config ``cd/change_map`` uses with the same preset."""
        device = None if self.device is None else self.device.value
        return preset(InferenceConfig, self.preset.value, device=device)


@dg.asset(
    key=KEY,
    ins={"model": dg.AssetIn(key=keys.CD_MODEL)},
    group_name=keys.CD_GROUP,
    kinds={"pytorch", "mlflow"},
    io_manager_key="json_io_manager",
    pool="gpu",
    retry_policy=EXTERNAL_RETRY,
    op_tags=gpu_op_tags(),  # on Kubernetes: a GPU node (mlops_assets.scale)
    description=(
        "The trained model (challenger) and the champion on every evaluation scene "
        "(eval/scenes.json on main, one commit), with cd/change_map's inference: per-scene and "
        "total F1, IoU, precision, recall, areas, confusion matrix and PR curve, in MLflow too."
    ),
)
def cd_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    model: CDModelRecord,
    scene_store: SceneStoreResource,
    output_store: OutputStoreResource,
    mlflow: MLflowResource,
) -> dg.MaterializeResult[EvaluationReport]:
    """Evaluate the challenger and the champion on the evaluation set; log it to MLflow."""
    from pathlib import Path

    from mlops_assets.core.cd import evaluation as ev
    from mlops_assets.core.cd.infer import ModelMismatchError
    from mlops_assets.core.cd.raster import AlignmentError
    from mlops_assets.core.compute import select_device
    from mlops_assets.core.scenes.evaluation import EvaluationSetError, read_evaluation_set
    from mlops_assets.core.scenes.layout import SceneKind
    from mlops_assets.core.store.types import StoreError, StoreUnavailableError

    tracker = mlflow.reachable_tracker(EXPERIMENT, label="cd/evaluation: ")
    store = scene_store.get_store()
    inference = config.to_core()
    errors = (EvaluationSetError, AlignmentError, ModelMismatchError, StoreError)
    with (
        failure_on(*errors, label="cd/evaluation: ", allow_retries=False),
        failure_on(StoreUnavailableError, label="cd/evaluation: "),  # an outage is retried
    ):
        eval_set = read_evaluation_set(store, SceneKind.CD, scene_store.branch)
        challenger = ev.challenger_candidate(tracker, model.model_uri, model.run_id)
        champion = ev.champion_candidate(tracker, config.model_name, config.champion_alias)
        work = Path(output_store.cache_dir)
        work.mkdir(parents=True, exist_ok=True)
        report = ev.evaluate(
            store, eval_set, challenger, champion, inference,
            select_device(inference.device), work, progress=context.log.info,
        )  # fmt: skip
    ev.log_evaluation(tracker, model.run_id, report)
    champion_version = None if champion is None else champion.version
    run_url = tracker.run_url(model.run_id, mlflow.ui_url)
    return dg.MaterializeResult(
        value=report,
        data_version=dg.DataVersion(
            f"{model.run_id}-{eval_set.commit_id[:16]}-v{champion_version or 'none'}"
        ),
        metadata=_metadata(report, eval_set, champion_version, run_url),
    )


def _metadata(
    report: Any, eval_set: Any, champion_version: str | None, run_url: str
) -> dict[str, Any]:
    """The asset page: the scenes, both totals, the side-by-side table and the two images.

    ``report`` is a `mlops_assets.core.cd.evaluation.EvaluationReport`, ``eval_set`` the
    `mlops_assets.core.scenes.evaluation.EvaluationSet` it was made on.
    """
    from mlops_assets.core.cd import evaluation as ev

    total, champion_total = report.challenger_total, report.champion_total
    return metadata(
        {
            "evaluation_scenes": list(eval_set.scene_ids),
            "evaluation_commit": eval_set.commit_id,
            "eval_f1": None if total is None else round(total.f1, 4),
            "champion_eval_f1": None if champion_total is None else round(champion_total.f1, 4),
            "champion_version": champion_version,
            "mlflow_run": dg.MetadataValue.url(run_url),
            "evaluation": dg.MetadataValue.md(ev.markdown_report(report))
            if eval_set
            else "no evaluation scenes: list labelled scenes in eval/scenes.json on main",
            **(
                {
                    "confusion_matrix": image_md(ev.confusion_image(report), "confusion"),
                    "pr_curve": image_md(ev.pr_curve_image(report), "precision-recall"),
                }
                if eval_set
                else {}
            ),
        }
    )
