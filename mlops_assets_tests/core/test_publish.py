"""Publishing outputs to the ``outputs`` branch: a work branch, a commit, a merge."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import pytest

from mlops_assets.core.publish import Publication, ensure_branch, publish_files
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.core.store.types import AlreadyExistsError, ObjectStat

META = {"source_commit": "c0ffee", "model_name": "cd-unet", "model_version": "3"}


def files(tmp_path: Path, **content: bytes) -> dict[str, Path]:
    """Local files named after the keywords (``change_map_tif`` -> ``change_map.tif``)."""
    out: dict[str, Path] = {}
    for key, data in content.items():
        name = key.replace("_tif", ".tif").replace("_png", ".png").replace("_json", ".json")
        path = tmp_path / "local" / key / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[name] = path
    return out


def publish(store: EmbeddedStore, prefix: str, local: dict[str, Path]) -> Publication:
    return publish_files(store, "outputs", "main", prefix, local, f"Publish {prefix}", META)


@pytest.fixture
def seeded(store: EmbeddedStore) -> EmbeddedStore:
    """A store whose main holds a scene (what the sensors watch)."""
    store.put("main", "cd/farm/pre.tif", io.BytesIO(b"pre"))
    store.commit("main", "add farm")
    return store


def test_first_publication_creates_outputs_from_main_and_leaves_main_alone(
    seeded: EmbeddedStore, tmp_path: Path
) -> None:
    main_before = seeded.resolve("main")
    assert "outputs" not in seeded.list_branches()
    local = files(tmp_path, change_map_tif=b"map", overlay_png=b"png")
    publication = publish(seeded, "cd/farm/", local)

    assert seeded.resolve("main") == main_before
    assert not seeded.exists("main", "cd/farm/change_map.tif")
    assert set(seeded.list_branches()) == {"main", "outputs"}  # the work branch is gone
    assert publication.branch == "outputs"
    assert publication.paths == ["cd/farm/change_map.tif", "cd/farm/overlay.png"]
    assert publication.merge_commit_id == seeded.resolve("outputs")
    assert seeded.read_bytes("outputs", "cd/farm/change_map.tif") == b"map"
    assert seeded.stat("outputs", "cd/farm/change_map.tif").content_type == "image/tiff"
    assert seeded.stat("outputs", "cd/farm/overlay.png").content_type == "image/png"
    # The work commit holds the files; the merge into outputs carries the same lineage.
    work = seeded.get_commit(publication.commit_id)
    merge = seeded.get_commit(publication.merge_commit_id)
    assert work.message == "Publish cd/farm/" and work.metadata == META
    assert merge.metadata == {**META, ".lakefs.merge.strategy": "source-wins"}
    assert merge.parents[1] == work.id
    assert merge.message.startswith("Merge cd/farm from publish-cd-farm-")
    assert seeded.uncommitted("outputs") == []


def test_republishing_overwrites_the_named_files_and_nothing_else(
    seeded: EmbeddedStore, tmp_path: Path
) -> None:
    publish(seeded, "cd/farm", files(tmp_path / "a", change_map_tif=b"1", overlay_png=b"1"))
    publish(seeded, "cd/river", files(tmp_path / "b", change_map_tif=b"river"))
    second = publish(seeded, "cd/farm", files(tmp_path / "c", change_map_tif=b"2"))
    assert second.paths == ["cd/farm/change_map.tif"]
    on_outputs = {s.path for s in seeded.list("outputs", "cd/")}
    assert {"cd/farm/change_map.tif", "cd/river/change_map.tif"} <= on_outputs
    assert seeded.read_bytes("outputs", "cd/farm/overlay.png") == b"1"  # not removed
    assert seeded.read_bytes("outputs", "cd/farm/change_map.tif") == b"2"
    assert seeded.read_bytes("outputs", "cd/river/change_map.tif") == b"river"


def test_publishing_keeps_the_scene_inputs_outputs_inherited_from_main(
    seeded: EmbeddedStore, tmp_path: Path
) -> None:
    publication = publish(seeded, "cd/farm", files(tmp_path, change_map_tif=b"map"))
    removed = [
        c.path for c in seeded.diff("main", publication.merge_commit_id) if c.type == "removed"
    ]
    assert removed == []
    assert seeded.read_bytes("outputs", "cd/farm/pre.tif") == b"pre"


def test_two_scenes_published_one_after_the_other_are_both_there(
    store: EmbeddedStore, tmp_path: Path
) -> None:
    first = publish(store, "cd/farm", files(tmp_path / "a", change_map_tif=b"farm"))
    second = publish(store, "cd/river", files(tmp_path / "b", change_map_tif=b"river"))
    assert first.merge_commit_id != second.merge_commit_id
    assert store.read_bytes("outputs", "cd/farm/change_map.tif") == b"farm"
    assert store.read_bytes("outputs", "cd/river/change_map.tif") == b"river"
    assert next(store.log("outputs")).id == second.merge_commit_id


def test_an_identical_republication_changes_nothing_and_does_not_fail(
    store: EmbeddedStore, tmp_path: Path
) -> None:
    local = files(tmp_path, change_map_tif=b"map")
    first = publish(store, "cd/farm", local)
    history = [c.id for c in store.log("outputs")]
    again = publish(store, "cd/farm", local)
    assert [c.id for c in store.log("outputs")] == history
    assert again.commit_id == again.merge_commit_id == first.merge_commit_id
    assert again.paths == first.paths
    assert set(store.list_branches()) == {"main", "outputs"}


def test_a_failed_upload_removes_the_work_branch_and_leaves_outputs_untouched(
    store: EmbeddedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(store, "cd/farm", files(tmp_path / "a", change_map_tif=b"old", overlay_png=b"old"))
    head = store.resolve("outputs")
    put = store.put
    calls: list[str] = []

    def failing_put(
        branch: str, path: str, source: BinaryIO | Path, content_type: str = "x"
    ) -> ObjectStat:
        calls.append(path)
        if len(calls) == 2:
            raise OSError("connection reset while uploading")
        return put(branch, path, source, content_type)

    monkeypatch.setattr(store, "put", failing_put)
    with pytest.raises(OSError, match="connection reset"):
        publish(store, "cd/farm", files(tmp_path / "b", change_map_tif=b"new", overlay_png=b"new"))
    assert len(calls) == 2
    assert set(store.list_branches()) == {"main", "outputs"}
    assert store.resolve("outputs") == head
    assert store.read_bytes("outputs", "cd/farm/change_map.tif") == b"old"
    assert store.uncommitted("outputs") == []


def test_ensure_branch_is_idempotent(store: EmbeddedStore) -> None:
    ensure_branch(store, "outputs", "main")
    head = store.resolve("outputs")
    ensure_branch(store, "outputs", "main")
    assert store.resolve("outputs") == head
    with pytest.raises(AlreadyExistsError):
        store.create_branch("outputs", "main")
