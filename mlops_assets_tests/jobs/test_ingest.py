"""The ``ingest_scene`` job: write-audit-publish from the Dagster UI, on the embedded store."""

import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.jobs.ingest import ingest_scene_job
from mlops_assets.resources.lineage import LineageResource
from mlops_assets_tests.conftest import DATA


def run(
    resources: dict[str, Any], instance: dg.DagsterInstance, folder: Path, scene: str
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
