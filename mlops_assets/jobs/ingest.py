"""``ingest_scene``: write-audit-publish one scene folder into main, from the Dagster UI.

The job does what ``mlops-assets ingest KIND SRC --scene ID --publish`` does
(`mlops_assets.core.wap`): upload to a fresh branch ``ingest-<scene_id>-<UTC timestamp>``,
commit, run the raw-scene checks of ``cd/scene`` or ``nvs/scene`` on that commit, and merge into
the scene store's branch only when every check passed. The ingest commit and the merge carry the
Dagster run id and a lakeFS link button back to the run. A scene that fails its checks fails the
run with their names and messages; main is untouched and the branch is kept for inspection. The
merge is an ordinary commit on main, so ``lakefs_commit_sensor`` then materialises the scene.

``source_path`` is a folder on the machine that runs the job (the code location's), as
``mlops-assets ingest`` reads one, or ``s3://bucket/prefix/`` (copied to a temporary folder
first; ``AWS_ENDPOINT_URL`` and the ``AWS_*`` credentials). A source that does not exist or a
scene that fails its checks fails once (no retry can fix it); a store that is briefly
unreachable costs a retry (`mlops_assets.retries.EXTERNAL_RETRY`).
"""

import datetime as dt
import enum
from typing import Any

import dagster as dg
from pydantic import Field

from mlops_assets.core.publish import link_metadata
from mlops_assets.core.scenes.ingest import plan_upload
from mlops_assets.core.scenes.layout import SceneError, SceneKind
from mlops_assets.core.scenes.remote import local_scene_folder
from mlops_assets.core.store.types import StoreError, StoreUnavailableError
from mlops_assets.core.wap import describe_checks, write_audit_publish
from mlops_assets.keys import TAG_TRIGGER
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.scene_store import SceneStoreResource
from mlops_assets.retries import EXTERNAL_RETRY

JOB_NAME = "ingest_scene"
OP_NAME = "write_audit_publish"


class Kind(enum.StrEnum):
    """The scene's kind: ``cd`` (pre/post GeoTIFF, optional label) or ``nvs`` (photos, COLMAP)."""

    # Dagster's launchpad shows member names: keep them identical to the values.
    cd = "cd"
    nvs = "nvs"


class IngestConfig(dg.Config):
    """Which local folder to ingest, as which scene."""

    kind: Kind = Field(description=Kind.__doc__)
    source_path: str = Field(
        description="Scene folder on the machine that runs the job, or s3://bucket/prefix/ "
        "(cd: pre.tif, post.tif, label.tif; nvs: images/ and sparse/0/)."
    )
    scene_id: str = Field(description="Scene id: [a-z0-9][a-z0-9_-]{0,62}.")
    message: str | None = Field(default=None, description="Message of the ingest commit.")


def _s3_client() -> Any:
    import boto3  # only for an s3:// source; AWS_ENDPOINT_URL and AWS_* from the environment

    return boto3.client("s3")


@dg.op(
    name=OP_NAME,
    description="Upload a scene folder to a fresh ingest branch, run the raw-scene checks on "
    "that commit, and merge it into main only if every check passes.",
    out=dg.Out(dg.Nothing),
    retry_policy=EXTERNAL_RETRY,
)
def write_audit_publish_op(
    context: dg.OpExecutionContext,
    config: IngestConfig,
    scene_store: SceneStoreResource,
    lineage: LineageResource,
) -> dg.Output[None]:
    """Write, audit, publish one scene; fail with the failed checks when it is not merged."""
    kind = SceneKind(config.kind.value)
    scene = f"{kind.value}/{config.scene_id}"
    run_id = context.run.run_id
    store = scene_store.get_store()
    try:
        with local_scene_folder(config.source_path, _s3_client) as folder:
            plan = plan_upload(kind, folder, config.scene_id, None)
            result = write_audit_publish(
                store,
                scene_store.branch,
                plan,
                when=dt.datetime.now(dt.UTC),
                message=config.message,
                limits=scene_store.check_limits(),
                metadata={"source": config.source_path, "ingested_by": f"dagster job {JOB_NAME}"},
                lineage={
                    "dagster_run_id": run_id,
                    **link_metadata({"Dagster": lineage.run_url(run_id)}),
                },
            )
    except SceneError as exc:  # bad input: the same on every attempt
        raise dg.Failure(description=f"{scene}: {exc}", allow_retries=False) from exc
    except StoreError as exc:  # only an outage can go away on the next attempt
        retry = isinstance(exc, StoreUnavailableError)
        raise dg.Failure(description=f"{scene}: {exc}", allow_retries=retry) from exc
    facts = {
        "scene": scene,
        "branch": result.branch,
        "ingest_commit": result.commit_id,
        "ingest_uri": store.uri(result.commit_id, plan.prefix),
        "checks": describe_checks(result.checks),
    }
    if not result.merged:
        raise dg.Failure(
            description=(
                f"{scene} failed {len(result.failed)} of {len(result.checks)} check(s) on "
                f"branch {result.branch!r}; not merged, {scene_store.branch!r} unchanged: "
                + "; ".join(result.failure_lines())
            ),
            metadata={**facts, "failed_checks": [o.name for o in result.failed]},
            allow_retries=False,
        )
    context.log.info(f"{scene} merged into {scene_store.branch} as {result.merge_commit_id}")
    return dg.Output(None, metadata={**facts, "merge_commit": result.merge_commit_id or ""})


@dg.job(
    name=JOB_NAME,
    description="Write-audit-publish a scene folder into the scene store's main branch "
    "(the same as `mlops-assets ingest ... --publish`).",
    tags={TAG_TRIGGER: "ingest"},
)
def ingest_scene_job() -> None:
    """One op: `write_audit_publish_op`."""
    write_audit_publish_op()
