from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import BinaryIO

import pytest

from mlops_assets.core.scenes.ingest import ingest_scene, ingest_scenes, plan_upload, stage_scene
from mlops_assets.core.scenes.layout import SceneError, SceneKind
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.core.store.types import NoChangesError, NotFoundError, ObjectStat, StoreError
from mlops_assets_tests.conftest import DATA

MAUPERTUIS = DATA / "kapture" / "maupertuis"


def test_cd_scene_is_committed_with_metadata(store: EmbeddedStore, demo_cd_dir: Path) -> None:
    plan = plan_upload(SceneKind.CD, demo_cd_dir, "farm")
    seen: list[int] = []
    commit = ingest_scene(store, "main", plan, metadata={"source": "test"}, progress=seen.append)
    assert commit.message == "Ingest cd scene farm"
    assert commit.metadata["scenes"] == "cd/farm"
    assert commit.metadata["source"] == "test"
    assert [s.path for s in store.list("main", "cd/farm/")] == [
        "cd/farm/label.tif",
        "cd/farm/post.tif",
        "cd/farm/pre.tif",
    ]
    assert sum(seen) == plan.total_bytes


def test_nvs_scene_is_committed(store: EmbeddedStore) -> None:
    plan = plan_upload(SceneKind.NVS, MAUPERTUIS, "maupertuis")
    ingest_scene(store, "main", plan)
    paths = [s.path for s in store.list("main", "nvs/maupertuis/")]
    assert "nvs/maupertuis/images/00.jpg" in paths
    assert "nvs/maupertuis/sparse/0/points3D.txt" in paths


@pytest.mark.parametrize("scene_id", ["../escape", "cd/x", "Upper"])
def test_bad_scene_id_is_refused_before_upload(
    store: EmbeddedStore, demo_cd_dir: Path, scene_id: str
) -> None:
    head = store.resolve("main")
    with pytest.raises(SceneError, match=f"invalid scene id {scene_id!r}"):
        plan_upload(SceneKind.CD, demo_cd_dir, scene_id)
    assert store.resolve("main") == head and store.uncommitted("main") == []


def test_corrupt_and_missing_files_are_named(tmp_path: Path, demo_cd_dir: Path) -> None:
    folder = tmp_path / "s"
    shutil.copytree(demo_cd_dir, folder)
    shutil.copy(DATA / "rasterio" / "corrupt.tif", folder / "post.tif")
    with pytest.raises(SceneError) as info:
        plan_upload(SceneKind.CD, folder, "s")
    message = str(info.value)
    assert message.startswith("cd scene 's' from ")
    assert f"{folder / 'post.tif'}: not a readable GeoTIFF" in message
    (folder / "post.tif").unlink()
    with pytest.raises(SceneError, match=r"post\.tif: missing"):
        plan_upload(SceneKind.CD, folder, "s")


def test_upload_to_missing_branch(store: EmbeddedStore, demo_cd_dir: Path) -> None:
    plan = plan_upload(SceneKind.CD, demo_cd_dir, "farm")
    with pytest.raises(NotFoundError, match=r"branch 'nope' not found.*cd scene 'farm'"):
        ingest_scene(store, "nope", plan)


def test_unchanged_scene_is_an_empty_commit(store: EmbeddedStore, demo_cd_dir: Path) -> None:
    plan = plan_upload(SceneKind.CD, demo_cd_dir, "farm")
    first = ingest_scene(store, "main", plan)
    with pytest.raises(NoChangesError, match="cd/farm unchanged on branch 'main'"):
        ingest_scene(store, "main", plan)
    assert store.resolve("main") == first.id
    assert store.uncommitted("main") == []


def test_reingest_replaces_the_scene_exactly(
    store: EmbeddedStore, demo_cd_dir: Path, tmp_path: Path
) -> None:
    ingest_scene(store, "main", plan_upload(SceneKind.CD, demo_cd_dir, "farm"))
    folder = tmp_path / "farm"
    shutil.copytree(demo_cd_dir, folder)
    (folder / "label.tif").unlink()
    ingest_scene(store, "main", plan_upload(SceneKind.CD, folder, "farm"))
    assert not store.exists("main", "cd/farm/label.tif")
    assert store.exists("main~1", "cd/farm/label.tif")


def test_dirty_branch_is_refused(store: EmbeddedStore, demo_cd_dir: Path) -> None:
    store.put("main", "somebody/else.txt", io.BytesIO(b"x"))
    with pytest.raises(StoreError, match="uncommitted change"):
        ingest_scene(store, "main", plan_upload(SceneKind.CD, demo_cd_dir, "farm"))


class _FailingStore(EmbeddedStore):
    """Fails on the n-th upload, as a dropped connection would."""

    def __init__(self, root: Path, fail_at: int) -> None:
        super().__init__(root, "scenes")
        self.fail_at = fail_at
        self.calls = 0

    def put(
        self,
        branch: str,
        path: str,
        source: BinaryIO | Path,
        content_type: str = "application/octet-stream",
    ) -> ObjectStat:
        self.calls += 1
        if self.calls == self.fail_at:
            raise ConnectionError(f"connection dropped while uploading {path}")
        return super().put(branch, path, source, content_type)


def test_failed_upload_leaves_nothing_staged_or_committed(
    tmp_path: Path, demo_cd_dir: Path
) -> None:
    store = _FailingStore(tmp_path / "store", fail_at=5)
    store.ensure_repository()
    ingest_scene(store, "main", plan_upload(SceneKind.CD, demo_cd_dir, "existing"))  # 3 puts
    head = store.resolve("main")
    plans = [
        plan_upload(SceneKind.CD, demo_cd_dir, "new-a"),  # puts 4-6: fails at 5
        plan_upload(SceneKind.NVS, MAUPERTUIS, "new-b"),
    ]
    with pytest.raises(ConnectionError, match=r"new-a/post\.tif"):
        ingest_scenes(store, "main", plans, "two scenes")
    assert store.resolve("main") == head
    assert store.uncommitted("main") == []
    assert store.list_prefixes("main", "cd/") == ["cd/existing/"]  # the other scene is untouched


def test_stage_scene_reports_changes(store: EmbeddedStore, demo_cd_dir: Path) -> None:
    changes = stage_scene(store, "main", plan_upload(SceneKind.CD, demo_cd_dir, "farm"))
    assert [(c.path, c.type.value) for c in changes] == [
        ("cd/farm/label.tif", "added"),
        ("cd/farm/post.tif", "added"),
        ("cd/farm/pre.tif", "added"),
    ]


def test_without_validation_the_layout_files_are_planned_as_they_are(
    tmp_path: Path, demo_cd_dir: Path
) -> None:
    folder = tmp_path / "s"
    shutil.copytree(demo_cd_dir, folder)
    shutil.copy(DATA / "rasterio" / "corrupt.tif", folder / "post.tif")
    plan = plan_upload(SceneKind.CD, folder, "s", validate=False)  # the branch's checks judge
    assert [target for _, target in plan.files] == [
        "cd/s/pre.tif",
        "cd/s/post.tif",
        "cd/s/label.tif",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SceneError, match="holds no file of the layout"):
        plan_upload(SceneKind.NVS, empty, "e", validate=False)
