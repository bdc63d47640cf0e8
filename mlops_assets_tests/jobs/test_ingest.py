"""The ``ingest_scene`` job: write-audit-publish from the Dagster UI, on the embedded store."""

import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.jobs.ingest import ingest_scene_job
from mlops_assets.resources.lineage import LineageResource
from mlops_assets.resources.scene_store import EmbeddedSceneStore
from mlops_assets_tests.conftest import DATA


def run(
    resources: dict[str, Any], instance: dg.DagsterInstance, folder: Path | str, scene: str
) -> dg.ExecuteInProcessResult:
    config = {"kind": "cd", "source_path": str(folder), "scene_id": scene}
    return ingest_scene_job.execute_in_process(
        run_config={"ops": {"write_audit_publish": {"config": config}}},
        resources={
            "scene_store": resources["scene_store"],
            "lineage": LineageResource(git_sha="0123abc", dagster_url="http://dagster:3000"),
        },
        instance=instance,
        raise_on_error=False,
    )


@pytest.fixture
def instance() -> Any:
    memory = dg.DagsterInstance.ephemeral()
    yield memory
    memory.dispose()


def test_a_passing_scene_is_merged_with_the_run_id_and_a_link_back(
    store: EmbeddedStore,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    demo_cd_dir: Path,
) -> None:
    before = store.resolve("main")
    result = run(resources, instance, demo_cd_dir, "farm")

    assert result.success
    merge = store.get_commit("main")
    assert merge.parents[0] == before
    assert merge.metadata["merge_source"].startswith("ingest-farm-")
    assert merge.metadata["dagster_run_id"] == result.run_id
    link = f"http://dagster:3000/runs/{result.run_id}"
    assert merge.metadata["::lakefs::Dagster::url[url:ui]"] == link
    assert store.get_commit(merge.parents[1]).metadata["::lakefs::Dagster::url[url:ui]"] == link
    assert store.exists("main", "cd/farm/pre.tif")
    (output,) = [e for e in result.all_events if e.is_successful_output]
    shown = output.step_output_data.metadata
    assert shown["merge_commit"].value == merge.id
    assert "files_present_and_readable: passed" in str(shown["checks"].value)


def test_a_failing_scene_fails_the_run_with_its_checks_and_leaves_main(
    store: EmbeddedStore,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    demo_cd_dir: Path,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(demo_cd_dir, folder)
    shutil.copy(DATA / "rasterio" / "corrupt.tif", folder / "pre.tif")
    before = store.resolve("main")

    result = run(resources, instance, folder, "bad")

    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    data = failure.step_failure_data.user_failure_data
    assert data is not None and data.description is not None
    assert "cd/bad failed 2 of 2 check(s) on branch 'ingest-bad-" in data.description
    assert "files_present_and_readable: cd/bad/pre.tif: not a readable GeoTIFF" in (
        data.description
    )
    assert store.resolve("main") == before
    (branch,) = [b for b in store.list_branches() if b.startswith("ingest-bad-")]
    assert store.exists(branch, "cd/bad/pre.tif")


def test_the_checks_use_the_scene_store_resources_pixel_budget(
    store: EmbeddedStore,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    demo_cd_dir: Path,
) -> None:
    # MLOPS_MAX_PIXELS reaches the job as the resource's max_pixels, as it does cd/scene
    budget = EmbeddedSceneStore(root=str(store.root), repository=store.repository, max_pixels=1000)
    result = run({**resources, "scene_store": budget}, instance, demo_cd_dir, "farm")
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    data = failure.step_failure_data.user_failure_data
    assert data is not None and data.description is not None
    assert "16,384 pixels, over the budget of 1,000" in data.description


# An s3:// source (a real moto server) and the retry policy. --------------------------------------


@pytest.fixture
def s3_folder(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, demo_cd_dir: Path) -> str:
    """``s3://raw-scenes/farm/`` holding the demo CD scene (AWS_ENDPOINT_URL points at moto)."""
    import boto3

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3")
    bucket = "raw-scenes-ingest-job"
    if bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=bucket)
    for path in demo_cd_dir.iterdir():
        client.upload_file(str(path), bucket, f"farm/{path.name}")
    return f"s3://{bucket}/farm/"


def _attempts(result: dg.ExecuteInProcessResult) -> int:
    """Attempts of the (one) step: its start, then a restart per retry."""
    starts = ("STEP_START", "STEP_RESTARTED")
    return len([e for e in result.all_events if e.event_type_value in starts])


def test_an_s3_source_is_ingested(
    store: EmbeddedStore, resources: dict[str, Any], instance: dg.DagsterInstance, s3_folder: str
) -> None:
    result = run(resources, instance, s3_folder, "farm")
    assert result.success
    assert store.exists("main", "cd/farm/pre.tif")
    ingest = store.get_commit(store.get_commit("main").parents[1])
    assert ingest.metadata["source"] == s3_folder


def test_a_missing_s3_source_fails_once_naming_it(
    store: EmbeddedStore, resources: dict[str, Any], instance: dg.DagsterInstance, s3_folder: str
) -> None:
    before = store.resolve("main")
    missing = s3_folder.replace("/farm/", "/nowhere/")
    result = run(resources, instance, missing, "farm")
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_failure_data.error is not None
    assert f"cd/farm: {missing}: no such folder" in failure.step_failure_data.error.message
    assert _attempts(result) == 1  # bad input is not retried
    assert store.resolve("main") == before
