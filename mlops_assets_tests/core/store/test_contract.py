"""The versioned-store contract: every implementation must pass every test here."""

from __future__ import annotations

import hashlib
import io
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.types import (
    AlreadyExistsError,
    Change,
    DirtyBranchError,
    InvalidNameError,
    MergeConflictError,
    MergeStrategy,
    NoChangesError,
    NotFoundError,
)
from mlops_assets_tests.core.store.conftest import DOUBLE_SECRET


def put(store: VersionedStore, branch: str, path: str, text: str) -> None:
    store.put(branch, path, io.BytesIO(text.encode()))


def read(store: VersionedStore, ref: str, path: str) -> str:
    return store.read_bytes(ref, path).decode()


def paths(store: VersionedStore, ref: str, prefix: str = "") -> list[str]:
    return [s.path for s in store.list(ref, prefix)]


def changes(items: list[Change]) -> list[tuple[str, str]]:
    return [(c.path, c.type.value) for c in items]


# Repository and branches ---------------------------------------------------------------------


def test_ensure_repository_is_idempotent_and_starts_with_main(store: VersionedStore) -> None:
    head = store.resolve("main")
    store.ensure_repository()
    assert store.default_branch() == "main"
    assert store.list_branches() == {"main": head}
    assert re.fullmatch(r"[0-9a-f]{64}", head)


def test_branches_are_isolated_and_created_from_any_ref(store: VersionedStore) -> None:
    put(store, "main", "a.txt", "v1")
    first = store.commit("main", "one").id
    put(store, "main", "a.txt", "v2")
    store.commit("main", "two")
    store.create_tag("v1", first)

    assert store.create_branch("from-commit", first) == first
    assert store.create_branch("from-tag", "v1") == first
    assert store.create_branch("from-branch", "main") == store.resolve("main")
    assert read(store, "from-commit", "a.txt") == "v1"
    assert read(store, "from-branch", "a.txt") == "v2"

    put(store, "from-branch", "b.txt", "only here")
    store.commit("from-branch", "add b")
    assert "b.txt" not in paths(store, "main")
    assert set(store.list_branches()) == {"main", "from-commit", "from-tag", "from-branch"}

    store.delete_branch("from-tag")
    assert "from-tag" not in store.list_branches()
    with pytest.raises(NotFoundError):
        store.resolve("from-tag")


def test_branch_names_follow_lakefs_rules(store: VersionedStore) -> None:
    with pytest.raises(AlreadyExistsError, match="main"):
        store.create_branch("main", "main")
    for bad in ("ingest/scene-1", "has space", ".hidden", ""):
        with pytest.raises(InvalidNameError):
            store.create_branch(bad, "main")
    with pytest.raises(NotFoundError):
        store.create_branch("new", "no-such-ref")


def test_unknown_refs_and_objects_are_not_found(store: VersionedStore) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        store.resolve("nope")
    with pytest.raises(NotFoundError, match=r"missing\.tif"):
        store.stat("main", "missing.tif")
    with pytest.raises(NotFoundError):
        store.read_bytes("nope", "a.txt")
    assert not store.exists("main", "missing.tif")


def test_upload_to_a_missing_branch_is_refused_and_stages_nothing(store: VersionedStore) -> None:
    with pytest.raises(NotFoundError, match="ghost"):
        put(store, "ghost", "a.txt", "x")
    assert store.uncommitted("main") == []


# Objects and staging -------------------------------------------------------------------------


def test_put_get_stat_list(store: VersionedStore) -> None:
    put(store, "main", "cd/s1/pre.tif", "pre")
    put(store, "main", "cd/s1/post.tif", "post")
    put(store, "main", "cd/s2/pre.tif", "pre")
    put(store, "main", "nvs/n1/images/0.png", "img")

    stat = store.stat("main", "cd/s1/pre.tif")
    assert stat.size == 3
    assert stat.checksum and stat.checksum == store.stat("main", "cd/s2/pre.tif").checksum
    assert stat.checksum != store.stat("main", "cd/s1/post.tif").checksum
    assert read(store, "main", "cd/s1/post.tif") == "post"
    assert paths(store, "main", "cd/") == ["cd/s1/post.tif", "cd/s1/pre.tif", "cd/s2/pre.tif"]
    assert store.list_prefixes("main", "cd/") == ["cd/s1/", "cd/s2/"]
    assert store.list_prefixes("main") == ["cd/", "nvs/"]
    # Staged objects are visible on the branch, not in its committed state.
    assert paths(store, "main@") == []


def test_listing_pages_through_many_objects(store: VersionedStore) -> None:
    for i in range(1005):
        put(store, "main", f"many/{i:05d}.txt", str(i))
    store.commit("main", "many")
    listed = paths(store, "main", "many/")
    assert len(listed) == 1005
    assert listed == sorted(listed)


def test_uncommitted_and_reset(store: VersionedStore) -> None:
    put(store, "main", "keep.txt", "k")
    put(store, "main", "old.txt", "o")
    put(store, "main", "change.txt", "c1")
    store.commit("main", "base")

    put(store, "main", "new/a.txt", "a")
    put(store, "main", "change.txt", "c2")
    store.delete("main", "old.txt")
    assert changes(store.uncommitted("main")) == [
        ("change.txt", "changed"),
        ("new/a.txt", "added"),
        ("old.txt", "removed"),
    ]
    assert changes(store.uncommitted("main", "new/")) == [("new/a.txt", "added")]

    store.reset("main", "new/")
    assert changes(store.uncommitted("main")) == [
        ("change.txt", "changed"),
        ("old.txt", "removed"),
    ]
    store.reset("main")
    assert store.uncommitted("main") == []
    assert read(store, "main", "change.txt") == "c1"
    assert paths(store, "main") == ["change.txt", "keep.txt", "old.txt"]


def test_delete_missing_object_is_not_found(store: VersionedStore) -> None:
    with pytest.raises(NotFoundError):
        store.delete("main", "never.txt")


# Commits and history -------------------------------------------------------------------------


def test_commit_pins_a_snapshot(store: VersionedStore) -> None:
    put(store, "main", "a.txt", "v1")
    c1 = store.commit("main", "first", {"dagster_run_id": "r-1", "source": "test"})
    assert re.fullmatch(r"[0-9a-f]{64}", c1.id)
    assert c1.metadata == {"dagster_run_id": "r-1", "source": "test"}
    assert store.uncommitted("main") == []
    assert store.resolve("main") == c1.id

    put(store, "main", "a.txt", "v2")
    c2 = store.commit("main", "second")
    assert c2.parents == (c1.id,)
    assert read(store, c1.id, "a.txt") == "v1"
    assert read(store, c2.id, "a.txt") == "v2"
    assert store.get_commit(c1.id).message == "first"
    assert store.get_commit("main").id == c2.id
    assert store.resolve("main~1") == c1.id
    assert read(store, "main~1", "a.txt") == "v1"


def test_empty_commit_is_refused_unless_allowed(store: VersionedStore) -> None:
    head = store.resolve("main")
    with pytest.raises(NoChangesError, match="no changes"):
        store.commit("main", "nothing")
    assert store.resolve("main") == head
    marker = store.commit("main", "marker", allow_empty=True)
    assert marker.parents == (head,)


def test_log_is_newest_first_and_filters_by_prefix(store: VersionedStore) -> None:
    put(store, "main", "cd/s1/pre.tif", "1")
    c1 = store.commit("main", "s1").id
    put(store, "main", "nvs/n1/images/a.png", "2")
    c2 = store.commit("main", "n1").id
    put(store, "main", "cd/s2/pre.tif", "3")
    c3 = store.commit("main", "s2").id

    ids = [c.id for c in store.log("main")]
    assert ids[:3] == [c3, c2, c1]
    assert [c.id for c in store.log("main", limit=2)] == [c3, c2]
    assert [c.id for c in store.log("main", prefixes=["cd/"])] == [c3, c1]
    assert [c.id for c in store.log("main", prefixes=["nvs/"])] == [c2]


def test_diff_between_refs(store: VersionedStore) -> None:
    put(store, "main", "cd/s1/pre.tif", "1")
    put(store, "main", "cd/s2/pre.tif", "2")
    before = store.commit("main", "before").id
    put(store, "main", "cd/s1/pre.tif", "1b")
    store.delete("main", "cd/s2/pre.tif")
    put(store, "main", "cd/s3/pre.tif", "3")
    after = store.commit("main", "after").id

    assert changes(store.diff(before, after)) == [
        ("cd/s1/pre.tif", "changed"),
        ("cd/s2/pre.tif", "removed"),
        ("cd/s3/pre.tif", "added"),
    ]
    assert changes(store.diff(before, after, prefix="cd/s3/")) == [("cd/s3/pre.tif", "added")]
    assert changes(store.diff(after, before)) == [
        ("cd/s1/pre.tif", "changed"),
        ("cd/s2/pre.tif", "added"),
        ("cd/s3/pre.tif", "removed"),
    ]
    assert store.diff(after, after) == []


# Merges --------------------------------------------------------------------------------------


def _fork(store: VersionedStore) -> str:
    put(store, "main", "shared.txt", "base")
    put(store, "main", "both.txt", "base")
    base = store.commit("main", "base").id
    store.create_branch("feature", "main")
    return base


def test_clean_merge_writes_a_merge_commit(store: VersionedStore) -> None:
    base = _fork(store)
    put(store, "feature", "feature.txt", "f")
    feature = store.commit("feature", "feature work").id
    put(store, "main", "main.txt", "m")
    main = store.commit("main", "main work").id

    assert store.merge_base("feature", "main") == base
    merged = store.merge("feature", "main", metadata={"dagster_run_id": "r-9"})
    commit = store.get_commit(merged)
    assert commit.parents == (main, feature)
    assert commit.metadata["dagster_run_id"] == "r-9"
    assert paths(store, "main") == ["both.txt", "feature.txt", "main.txt", "shared.txt"]
    assert changes(store.diff(main, merged)) == [("feature.txt", "added")]


def test_merge_never_fast_forwards(store: VersionedStore) -> None:
    _fork(store)
    put(store, "feature", "f.txt", "f")
    feature = store.commit("feature", "f").id
    merged = store.merge("feature", "main")
    assert merged != feature
    assert len(store.get_commit(merged).parents) == 2


def test_conflicting_merge_names_paths_and_changes_nothing(store: VersionedStore) -> None:
    _fork(store)
    put(store, "feature", "both.txt", "feature")
    put(store, "feature", "feature-only.txt", "f")
    store.commit("feature", "feature")
    put(store, "main", "both.txt", "main")
    head = store.commit("main", "main").id

    with pytest.raises(MergeConflictError) as info:
        store.merge("feature", "main")
    assert info.value.paths == ["both.txt"]
    assert "both.txt" in str(info.value)
    assert store.resolve("main") == head
    assert not store.exists("main", "feature-only.txt")


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [(MergeStrategy.SOURCE_WINS, "feature"), (MergeStrategy.DEST_WINS, "main")],
)
def test_merge_strategies_resolve_conflicts(
    store: VersionedStore, strategy: MergeStrategy, expected: str
) -> None:
    _fork(store)
    put(store, "feature", "both.txt", "feature")
    put(store, "feature", "feature-only.txt", "f")
    store.commit("feature", "feature")
    put(store, "main", "both.txt", "main")
    store.commit("main", "main")

    store.merge("feature", "main", strategy=strategy)
    assert read(store, "main", "both.txt") == expected
    assert read(store, "main", "feature-only.txt") == "f"


def test_identical_changes_on_both_sides_do_not_conflict(store: VersionedStore) -> None:
    _fork(store)
    put(store, "feature", "both.txt", "same")
    put(store, "feature", "f.txt", "f")
    store.commit("feature", "feature")
    put(store, "main", "both.txt", "same")
    store.commit("main", "main")
    store.merge("feature", "main")
    assert read(store, "main", "both.txt") == "same"


def test_delete_against_change_is_a_conflict(store: VersionedStore) -> None:
    _fork(store)
    store.delete("feature", "both.txt")
    store.commit("feature", "delete")
    put(store, "main", "both.txt", "changed")
    store.commit("main", "change")
    with pytest.raises(MergeConflictError):
        store.merge("feature", "main")


def test_merge_with_nothing_new_is_refused(store: VersionedStore) -> None:
    _fork(store)
    with pytest.raises(NoChangesError):
        store.merge("feature", "main")


def test_merge_into_a_dirty_branch_is_refused(store: VersionedStore) -> None:
    _fork(store)
    put(store, "feature", "f.txt", "f")
    store.commit("feature", "f")
    put(store, "main", "uncommitted.txt", "u")
    with pytest.raises(DirtyBranchError, match="main"):
        store.merge("feature", "main")


def test_merge_takes_committed_state_of_the_source(store: VersionedStore) -> None:
    _fork(store)
    put(store, "feature", "committed.txt", "c")
    store.commit("feature", "c")
    put(store, "feature", "staged.txt", "s")
    store.merge("feature", "main")
    assert store.exists("main", "committed.txt")
    assert not store.exists("main", "staged.txt")


# Tags ----------------------------------------------------------------------------------------


def test_tags(store: VersionedStore) -> None:
    put(store, "main", "a.txt", "v1")
    c1 = store.commit("main", "one").id
    assert store.create_tag("release-1", "main") == c1
    put(store, "main", "a.txt", "v2")
    store.commit("main", "two")

    assert store.list_tags() == {"release-1": c1}
    assert store.resolve("release-1") == c1
    assert read(store, "release-1", "a.txt") == "v1"
    with pytest.raises(AlreadyExistsError):
        store.create_tag("release-1", "main")
    store.delete_tag("release-1")
    assert store.list_tags() == {}


# Streams and rasters -------------------------------------------------------------------------


class _Generated(io.RawIOBase):
    """A long deterministic byte stream that is never held in memory."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.digest = hashlib.sha256()
        self._block = bytes(range(256)) * 4096  # 1 MiB

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left, len(self._block))
        buffer[:n] = self._block[:n]
        self.digest.update(self._block[:n])
        self.left -= n
        return n


def test_large_objects_stream_in_bounded_memory(store: VersionedStore) -> None:
    size = 96 * 1024 * 1024
    source = _Generated(size)
    tracemalloc.start()
    try:
        stat = store.put("main", "big.bin", io.BufferedReader(source, buffer_size=1 << 20))
        store.commit("main", "big")
        digest = hashlib.sha256()
        total = 0
        with store.open("main", "big.bin") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
                total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stat.size == size == total
    assert digest.hexdigest() == source.digest.hexdigest()
    assert peak < 24 * 1024 * 1024, f"peak traced memory {peak / 2**20:.1f} MiB for a 96 MiB object"


def test_raster_location_reads_by_window(store: VersionedStore, tmp_path: Path) -> None:
    path = tmp_path / "pre.tif"
    pixels = np.arange(64 * 48, dtype=np.uint16).reshape(1, 48, 64)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=48,
        count=1,
        dtype="uint16",
        crs="EPSG:32633",
        transform=from_origin(500000, 4500000, 10, 10),
        tiled=True,
        blockxsize=16,
        blockysize=16,
    ) as dst:
        dst.write(pixels)
    store.put("main", "cd/s1/pre.tif", path, "image/tiff")
    commit = store.commit("main", "raster").id

    location = store.raster_location(commit, "cd/s1/pre.tif")
    with location.open() as src:
        assert src.crs.to_epsg() == 32633
        window = src.read(1, window=Window.from_slices(rows=(16, 32), cols=(16, 32)))
    np.testing.assert_array_equal(window, pixels[0, 16:32, 16:32])
    # The lakeFS store holds DOUBLE_SECRET; neither a location's repr nor its path shows it.
    assert DOUBLE_SECRET not in repr(location) and DOUBLE_SECRET not in str(location.path)
