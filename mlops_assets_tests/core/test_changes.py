"""Scene changes between two commits of a branch, on the real embedded store."""

from __future__ import annotations

import io

import pytest

from mlops_assets.core import changes as changes_module
from mlops_assets.core.changes import MERGE_SOURCE_KEY, scene_changes
from mlops_assets.core.scenes.layout import SceneKind
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.core.store.types import NotFoundError
from mlops_assets_tests.sensors import drop_scene, put_scene


@pytest.fixture
def seeded(store: EmbeddedStore) -> str:
    """Six CD and two NVS scenes and a README on main; returns the commit."""
    for scene in ("s1", "s2", "s3", "s4", "s5", "s6"):
        put_scene(store, "cd", scene)
    for scene in ("globe", "ring"):
        put_scene(store, "nvs", scene)
    store.put("main", "README.md", io.BytesIO(b"scenes"))
    return store.commit("main", "seed").id


def test_without_cursor_every_scene_at_head_counts(store: EmbeddedStore, seeded: str) -> None:
    changes = scene_changes(store, "main", None)
    assert changes.head == seeded
    assert changes.full
    assert changes.changed == {
        SceneKind.CD: ["s1", "s2", "s3", "s4", "s5", "s6"],
        SceneKind.NVS: ["globe", "ring"],
    }
    assert changes.deleted == {SceneKind.CD: [], SceneKind.NVS: []}
    assert changes.reason == f"no cursor: every scene at main@{seeded[:12]}"
    assert [c.id for c in changes.commits] == [seeded]


def test_a_commit_changing_k_of_n_scenes_reports_exactly_those(
    store: EmbeddedStore, seeded: str
) -> None:
    put_scene(store, "cd", "s2", tag="v2")
    store.delete("main", "cd/s5/label.tif")  # a scene losing one file is changed, not deleted
    put_scene(store, "nvs", "ring", tag="v2")
    put_scene(store, "cd", "s7")  # a new scene
    store.put("main", "README.md", io.BytesIO(b"scenes, edited"))
    head = store.commit("main", "edit three scenes, add one").id

    changes = scene_changes(store, "main", seeded)

    assert (changes.head, changes.cursor, changes.full) == (head, seeded, False)
    assert changes.changed == {SceneKind.CD: ["s2", "s5", "s7"], SceneKind.NVS: ["ring"]}
    assert changes.deleted == {SceneKind.CD: [], SceneKind.NVS: []}
    assert changes.ignored_paths == 1  # README.md
    assert changes.reason == f"diff {seeded[:12]}..{head[:12]} on 'main'"
    assert [(c.id, c.parents, c.message) for c in changes.commits] == [
        (head, (seeded,), "edit three scenes, add one")
    ]
    assert changes.summary() == (
        f"3 cd changed, 0 deleted; 1 nvs changed, 0 deleted (diff {seeded[:12]}..{head[:12]} "
        "on 'main')"
    )


def test_a_removed_scene_is_reported_deleted(store: EmbeddedStore, seeded: str) -> None:
    drop_scene(store, "cd", "s3")
    drop_scene(store, "nvs", "globe")
    store.commit("main", "drop two scenes")
    changes = scene_changes(store, "main", seeded)
    assert changes.changed == {SceneKind.CD: [], SceneKind.NVS: []}
    assert changes.deleted == {SceneKind.CD: ["s3"], SceneKind.NVS: ["globe"]}
    assert not changes.is_empty


def test_no_new_commit_and_empty_commits_change_nothing(store: EmbeddedStore, seeded: str) -> None:
    same = scene_changes(store, "main", seeded)
    assert same.is_empty and same.reason == "no new commit on 'main'"
    assert same.commits == []
    empty = store.commit("main", "nothing", allow_empty=True).id
    changes = scene_changes(store, "main", seeded)
    assert changes.head == empty and changes.is_empty and not changes.full
    assert [c.id for c in changes.commits] == [empty]


def test_outside_paths_and_invalid_scene_ids_are_ignored(store: EmbeddedStore, seeded: str) -> None:
    store.put("main", "cd/Bad Name/pre.tif", io.BytesIO(b"x"))
    store.put("main", "docs/cd/s1/notes.md", io.BytesIO(b"x"))
    store.put("main", "cd/loose.tif", io.BytesIO(b"x"))
    store.commit("main", "not scenes")
    changes = scene_changes(store, "main", seeded)
    assert changes.is_empty
    assert changes.ignored_paths == 3


def test_staged_changes_are_not_seen(store: EmbeddedStore, seeded: str) -> None:
    put_scene(store, "cd", "s1", tag="staged")
    changes = scene_changes(store, "main", seeded)
    assert changes.head == seeded and changes.is_empty


def test_a_cursor_commit_that_no_longer_exists_falls_back_to_everything_at_head(
    store: EmbeddedStore, seeded: str
) -> None:
    lost = "f" * 64
    changes = scene_changes(store, "main", lost)
    assert changes.full and changes.cursor == lost
    assert changes.changed[SceneKind.CD] == ["s1", "s2", "s3", "s4", "s5", "s6"]
    assert changes.reason.startswith(f"cursor commit {lost[:12]} no longer exists (ref ")
    assert changes.reason.endswith(f"): every scene at main@{seeded[:12]}")


def test_a_cursor_off_the_branch_history_is_diffed_as_snapshots(
    store: EmbeddedStore, seeded: str
) -> None:
    put_scene(store, "cd", "s1", tag="v2")
    store.commit("main", "s1 v2")
    store.create_branch("old", seeded)
    put_scene(store, "cd", "s4", tag="old", branch="old")
    other = store.commit("old", "s4 elsewhere").id
    changes = scene_changes(store, "main", other)  # e.g. the branch was reset away from it
    assert changes.changed[SceneKind.CD] == ["s1", "s4"]


def test_a_merge_reports_the_source_branch_and_its_scenes(
    store: EmbeddedStore, seeded: str
) -> None:
    store.create_branch("feature", "main")
    put_scene(store, "cd", "s1", tag="feature", branch="feature")
    put_scene(store, "nvs", "ring", tag="feature", branch="feature")
    source = store.commit("feature", "two scenes").id
    merge = store.merge("feature", "main")

    changes = scene_changes(store, "main", seeded)

    assert changes.head == merge
    assert changes.changed == {SceneKind.CD: ["s1"], SceneKind.NVS: ["ring"]}
    top = changes.commits[0]
    assert (top.id, top.parents) == (merge, (seeded, source))
    assert top.message == "Merge 'feature' into 'main'"
    assert top.is_merge and top.merge_source == "feature"
    assert [c.id for c in changes.commits] == [merge, source]  # the merged commit came in too
    assert changes.merge_sources == ["feature"]
    assert [m.id for m in changes.merges] == [merge]
    assert scene_changes(store, "main", None).merge_sources == ["feature"]  # first tick too


def test_merge_source_from_metadata_then_from_a_branch_head(
    store: EmbeddedStore, seeded: str
) -> None:
    store.create_branch("ingest-s1", "main")
    put_scene(store, "cd", "s1", tag="x", branch="ingest-s1")
    store.commit("ingest-s1", "s1")
    named = store.merge("ingest-s1", "main", "publish s1", {MERGE_SOURCE_KEY: "ingest/s1-20260101"})
    assert scene_changes(store, "main", seeded).commits[0].merge_source == "ingest/s1-20260101"

    store.create_branch("fix", "main")
    put_scene(store, "cd", "s2", tag="x", branch="fix")
    store.commit("fix", "s2")
    store.merge("fix", "main", "a custom message")
    changes = scene_changes(store, "main", named)
    assert changes.commits[0].merge_source == "fix"  # the branch still points at the merged commit

    store.delete_branch("fix")
    assert scene_changes(store, "main", named).commits[0].merge_source is None


def test_long_batches_list_a_bounded_number_of_commits(
    store: EmbeddedStore, seeded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changes_module, "MAX_BATCH_COMMITS", 2)
    for n in range(3):
        put_scene(store, "cd", "s1", tag=str(n))
        store.commit("main", f"s1 #{n}")
    changes = scene_changes(store, "main", seeded)
    assert len(changes.commits) == 2 and changes.commits_truncated
    assert changes.changed[SceneKind.CD] == ["s1"]  # the diff itself is never truncated


def test_an_unknown_branch_raises(store: EmbeddedStore, seeded: str) -> None:
    with pytest.raises(NotFoundError, match="'nope'"):
        scene_changes(store, "nope", seeded)


def test_unchanged_since_tells_scenes_with_the_same_files_at_head(
    store: EmbeddedStore, seeded: str
) -> None:
    from mlops_assets.core.changes import unchanged_since

    put_scene(store, "cd", "s2", tag="v2")
    later = store.commit("main", "s2 re-captured").id
    put_scene(store, "nvs", "ring", tag="v2")
    head = store.commit("main", "ring re-captured").id
    made_at = {
        (SceneKind.CD, "s1"): seeded,  # untouched since: same files
        (SceneKind.CD, "s2"): seeded,  # changed after it was made
        (SceneKind.CD, "s3"): later,
        (SceneKind.NVS, "globe"): head,
        (SceneKind.NVS, "ring"): later,  # changed after
        (SceneKind.CD, "s4"): "f" * 64,  # a commit the store does not know
    }
    assert unchanged_since(store, head, made_at) == {
        (SceneKind.CD, "s1"),
        (SceneKind.CD, "s3"),
        (SceneKind.NVS, "globe"),
    }


def test_a_batch_commit_is_told_and_done_scenes_are_left_out(
    store: EmbeddedStore, seeded: str
) -> None:
    put_scene(store, "cd", "s7")
    put_scene(store, "cd", "s8")
    head = store.commit("main", "import", metadata={"batch": "import levir-cd"}).id
    changes = scene_changes(store, "main", seeded)
    assert changes.batches == ["import levir-cd"]
    assert scene_changes(store, "main", None).commits[0].batch == "import levir-cd"
    todo = changes.without({SceneKind.CD: {"s7"}, SceneKind.NVS: set()}, "done already")
    assert todo.changed[SceneKind.CD] == ["s8"] and todo.head == head
    assert todo.reason.endswith("; 1 done already")
    assert changes.without({SceneKind.CD: set(), SceneKind.NVS: set()}, "done") is changes
