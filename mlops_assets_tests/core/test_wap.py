"""Write-audit-publish ingestion on the embedded store: main only ever gets scenes that passed."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlops_assets.core import wap
from mlops_assets.core.changes import scene_changes
from mlops_assets.core.publish import link_metadata
from mlops_assets.core.scenes.cd import FILES_CHECK, OVERLAP_CHECK
from mlops_assets.core.scenes.checks import CheckOutcome
from mlops_assets.core.scenes.folders import plan_checked
from mlops_assets.core.scenes.ingest import plan_upload
from mlops_assets.core.scenes.layout import SceneKind
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.core.store.lakefs import LakeFSStore
from mlops_assets.core.store.types import InvalidNameError, NoChangesError, validate_branch_name
from mlops_assets.core.wap import (
    PublishError,
    WapResult,
    audit_scene,
    ingest_branch_name,
    write_audit_publish,
)
from mlops_assets_tests.conftest import DATA
from mlops_assets_tests.core.scenes.racing import (
    BACKENDS,
    checksums,
    edit_one_file,
    scene_files,
    two_writers,
)
from mlops_assets_tests.core.store.conftest import DOUBLE_KEY, DOUBLE_SECRET
from mlops_assets_tests.core.store.lakefs_double import LakeFSDouble

WHEN = dt.datetime(2026, 11, 23, 14, 39, 1, tzinfo=dt.UTC)
LINEAGE = {
    "dagster_run_id": "run-123",
    **link_metadata({"Dagster": "http://dagster:3000/runs/run-123", "MLflow": None}),
}


@pytest.fixture
def corrupt_dir(tmp_path: Path, demo_cd_dir: Path) -> Path:
    """The demo scene with an undecodable pre image (local validation would refuse it)."""
    folder = tmp_path / "corrupt"
    shutil.copytree(demo_cd_dir, folder)
    shutil.copy(DATA / "rasterio" / "corrupt.tif", folder / "pre.tif")
    return folder


def test_branch_names_follow_lakefs_rules() -> None:
    name = ingest_branch_name("farm_2", WHEN)
    assert name == "ingest-farm_2-20261123T143901Z"
    assert validate_branch_name(name) == name
    with pytest.raises(InvalidNameError):  # why the ingest/<scene>-<ts> is not used
        validate_branch_name("ingest/farm-20261123T143901Z")


def test_a_passing_scene_is_merged_with_its_source_checks_and_links(
    store: EmbeddedStore, demo_cd_dir: Path
) -> None:
    before = store.resolve("main")
    plan = plan_upload(SceneKind.CD, demo_cd_dir, "farm", None)

    result = write_audit_publish(
        store, "main", plan, when=WHEN, metadata={"source": "test"}, lineage=LINEAGE
    )

    assert result.merged and result.failed == []
    assert [c.name for c in result.checks] == [FILES_CHECK, OVERLAP_CHECK]
    assert result.branch == "ingest-farm-20261123T143901Z" and result.base == before
    head = store.get_commit("main")
    assert head.id == result.merge_commit_id
    assert head.parents == (before, result.commit_id)
    assert head.message == (
        "Merge 'ingest-farm-20261123T143901Z' into 'main': cd/farm passed its checks"
    )
    assert head.metadata == {
        "merge_source": "ingest-farm-20261123T143901Z",
        "scene": "cd/farm",
        "ingest_commit": result.commit_id,
        "checks": f"{FILES_CHECK}: passed; {OVERLAP_CHECK}: passed",
        "dagster_run_id": "run-123",
        "::lakefs::Dagster::url[url:ui]": "http://dagster:3000/runs/run-123",
        ".lakefs.merge.strategy": "default",
    }
    ingest = store.get_commit(result.commit_id)
    assert ingest.metadata["source"] == "test"
    assert ingest.metadata["dagster_run_id"] == "run-123"
    assert ingest.metadata["::lakefs::Dagster::url[url:ui]"].endswith("/runs/run-123")
    assert [s.path for s in store.list("main", "cd/farm/")] == [
        "cd/farm/label.tif",
        "cd/farm/post.tif",
        "cd/farm/pre.tif",
    ]
    assert set(store.list_branches()) == {"main"}  # the ingest branch is gone after the merge
    # The commit sensor sees the merge as a change to exactly this scene, from this branch.
    changes = scene_changes(store, "main", before)
    assert changes.changed[SceneKind.CD] == ["farm"]
    assert changes.merge_sources == ["ingest-farm-20261123T143901Z"]


def test_a_failing_scene_leaves_main_alone_and_keeps_its_branch(
    store: EmbeddedStore, corrupt_dir: Path
) -> None:
    before = store.resolve("main")
    plan = plan_upload(SceneKind.CD, corrupt_dir, "bad", None)

    result = write_audit_publish(store, "main", plan, when=WHEN, lineage=LINEAGE)

    assert not result.merged and result.branch_kept
    assert store.resolve("main") == before
    assert store.list_prefixes("main", "cd/") == []
    # The audited commit, then an empty one recording the verdict (gc keeps such branches).
    record = store.get_commit(result.branch)
    assert record.parents == (result.commit_id,)
    assert record.metadata["wap_status"] == "checks-failed"
    assert record.metadata["checks"] == f"{FILES_CHECK}: FAILED; {OVERLAP_CHECK}: FAILED"
    assert store.exists(result.branch, "cd/bad/pre.tif")  # there for inspection
    (line,) = [line for line in result.failure_lines() if line.startswith(FILES_CHECK)]
    assert "cd/bad/pre.tif: not a readable GeoTIFF" in line
    # The same functions the cd/scene asset checks run give the same verdict on that commit.
    assert [o.passed for o in audit_scene(store, SceneKind.CD, "bad", result.commit_id)] == [
        o.passed for o in result.checks
    ]


def test_an_nvs_scene_is_audited_with_the_nvs_checks(store: EmbeddedStore) -> None:
    plan = plan_upload(SceneKind.NVS, DATA / "kapture" / "maupertuis", "maup", None)
    result = write_audit_publish(store, "main", plan, when=WHEN)
    assert result.merged, result.failure_lines()
    assert {c.name for c in result.checks} == {
        "files_present_and_readable",
        "model_readable_and_images_present",
    }
    assert store.exists("main", "nvs/maup/sparse/0/points3D.txt")


def test_an_unchanged_scene_publishes_nothing_and_leaves_no_branch(
    store: EmbeddedStore, demo_cd_dir: Path
) -> None:
    plan = plan_checked(SceneKind.CD, demo_cd_dir, "farm")
    write_audit_publish(store, "main", plan, when=WHEN)
    head = store.resolve("main")
    with pytest.raises(NoChangesError, match="cd/farm is already identical on 'main'"):
        write_audit_publish(store, "main", plan, when=WHEN + dt.timedelta(seconds=1))
    assert store.resolve("main") == head and set(store.list_branches()) == {"main"}


def test_two_ingests_in_one_second_get_two_branches(
    store: EmbeddedStore, corrupt_dir: Path
) -> None:
    plan = plan_upload(SceneKind.CD, corrupt_dir, "bad", None)
    first = write_audit_publish(store, "main", plan, when=WHEN)
    second = write_audit_publish(store, "main", plan, when=WHEN)
    assert second.branch == f"{first.branch}-2"


def test_a_conflicting_change_on_main_keeps_the_audited_branch(
    store: EmbeddedStore,
    demo_cd_dir: Path,
    demo_cd_warped_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = plan_checked(SceneKind.CD, demo_cd_dir, "farm")

    def audit_then_race(
        store_: EmbeddedStore, kind: SceneKind, scene_id: str, ref: str, limits: object = None
    ) -> list[CheckOutcome]:  # somebody commits the same scene to main meanwhile
        outcomes = audit_scene(store_, kind, scene_id, ref)
        for name in ("pre.tif", "post.tif"):
            store.put("main", f"cd/farm/{name}", demo_cd_warped_dir / name)
        store.commit("main", "racing ingest")
        return outcomes

    monkeypatch.setattr(wap, "audit_scene", audit_then_race)
    with pytest.raises(PublishError, match="passed its checks on branch 'ingest-farm-"):
        write_audit_publish(store, "main", plan, when=WHEN)
    assert store.get_commit("main").message == "racing ingest"
    (kept,) = [name for name in store.list_branches() if name.startswith("ingest-farm-")]
    assert store.get_commit(kept).metadata["wap_status"] == "merge-failed"


def test_the_lakefs_client_publishes_and_refuses_the_same_way(
    tmp_path: Path, demo_cd_dir: Path, corrupt_dir: Path
) -> None:
    double = LakeFSDouble(tmp_path / "lakefs-server", DOUBLE_KEY, DOUBLE_SECRET).start()
    try:
        client = LakeFSStore(
            double.endpoint, DOUBLE_KEY, DOUBLE_SECRET, "scenes", cache_dir=tmp_path / "cache"
        )
        client.ensure_repository()
        good = plan_upload(SceneKind.CD, demo_cd_dir, "farm", None)
        passed = write_audit_publish(client, "main", good, when=WHEN, lineage=LINEAGE)
        merge = client.get_commit("main")
        assert merge.id == passed.merge_commit_id
        assert merge.metadata["merge_source"] == passed.branch
        assert merge.metadata["::lakefs::Dagster::url[url:ui]"].endswith("/runs/run-123")
        head = merge.id
        bad = plan_upload(SceneKind.CD, corrupt_dir, "bad", None)
        failed = write_audit_publish(client, "main", bad, when=WHEN, lineage=LINEAGE)
        assert not failed.merged and client.resolve("main") == head
        assert client.exists(failed.branch, "cd/bad/pre.tif")
    finally:
        double.stop()


@pytest.fixture(params=BACKENDS)
def writers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[VersionedStore, ...]]:
    """Two clients of one repository, as two ``ingest --publish`` processes would hold them."""
    with two_writers(request.param, tmp_path) as pair:
        yield pair


@pytest.mark.parametrize("race", ["during-checks", "at-merge"])
def test_two_publishes_of_one_scene_editing_different_files_never_mix(
    writers: tuple[VersionedStore, VersionedStore],
    demo_cd_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    race: str,
) -> None:
    store, other = writers
    edit_pre = edit_one_file(demo_cd_dir, tmp_path / "edit-pre", "pre.tif")
    edit_post = edit_one_file(demo_cd_dir, tmp_path / "edit-post", "post.tif")
    write_audit_publish(store, "main", plan_checked(SceneKind.CD, demo_cd_dir, "farm"), when=WHEN)
    won: list[WapResult] = []

    def publish_the_other() -> None:
        if not won:
            won.append(write_audit_publish(other, "main", edit_post_plan, when=WHEN))

    edit_post_plan = plan_upload(SceneKind.CD, edit_post, "farm", None)
    if race == "during-checks":  # the checks take minutes on real scenes

        def audit_then_race(*args: Any, **kwargs: Any) -> list[CheckOutcome]:
            outcomes = audit_scene(*args, **kwargs)
            if args[0] is store:  # this writer's audit, not the other's
                publish_the_other()
            return outcomes

        monkeypatch.setattr(wap, "audit_scene", audit_then_race)
    else:  # after this writer's last look at main, inside its merge call
        real_merge = store.merge

        def racing_merge(*args: Any, **kwargs: Any) -> str:
            publish_the_other()
            return real_merge(*args, **kwargs)

        monkeypatch.setattr(store, "merge", racing_merge)

    plan = plan_upload(SceneKind.CD, edit_pre, "farm", None)
    with pytest.raises(PublishError) as info:
        write_audit_publish(store, "main", plan, when=WHEN)

    (winner,) = won
    assert winner.merged and winner.merge_commit_id is not None
    (kept,) = set(store.list_branches()) - {"main"}  # the loser's audited branch, not the winner's
    message = str(info.value)
    assert message.startswith(f"cd/farm passed its checks on branch {kept!r} ")
    assert f"cd/farm was changed on 'main' by commit {winner.merge_commit_id[:12]} " in message
    assert f"merged from {winner.branch!r}" in message and "\n" not in message
    head = store.get_commit("main")  # untouched by the loser: the winner's merge, whole
    assert head.id == winner.merge_commit_id
    assert head.metadata["merge_source"] == winner.branch
    assert scene_files(store, "main", "farm") == checksums(edit_post)
    assert store.get_commit(kept).metadata["wap_status"] == "merge-failed"  # as any failed merge
    assert scene_files(store, kept, "farm") == checksums(edit_pre)  # there for inspection
