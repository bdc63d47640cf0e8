from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from mlops_assets.core.changes import scene_changes
from mlops_assets.core.scenes.folders import folder_check, plan_checked
from mlops_assets.core.scenes.ingest import (
    SceneConflictError,
    UploadPlan,
    ingest_scene,
    ingest_scenes,
    plan_upload,
    stage_scene,
)
from mlops_assets.core.scenes.layout import SceneError, SceneKind, scene_of_path, write_marker
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.core.store.lakefs import LakeFSStore
from mlops_assets.core.store.types import (
    Commit,
    NoChangesError,
    NotFoundError,
    ObjectStat,
    StoreError,
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

MAUPERTUIS = DATA / "kapture" / "maupertuis"


def test_cd_scene_is_committed_with_metadata(store: EmbeddedStore, demo_cd_dir: Path) -> None:
    plan = plan_checked(SceneKind.CD, demo_cd_dir, "farm")
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
    plan = plan_checked(SceneKind.NVS, MAUPERTUIS, "maupertuis")
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
        plan_checked(SceneKind.CD, demo_cd_dir, scene_id)
    assert store.resolve("main") == head and store.uncommitted("main") == []


def test_corrupt_and_missing_files_are_named(tmp_path: Path, demo_cd_dir: Path) -> None:
    folder = tmp_path / "s"
    shutil.copytree(demo_cd_dir, folder)
    shutil.copy(DATA / "rasterio" / "corrupt.tif", folder / "post.tif")
    with pytest.raises(SceneError) as info:
        plan_checked(SceneKind.CD, folder, "s")
    message = str(info.value)
    assert message.startswith("cd scene 's' from ")
    assert f"{folder / 'post.tif'}: not a readable GeoTIFF" in message
    (folder / "post.tif").unlink()
    with pytest.raises(SceneError, match=r"post\.tif: missing"):
        plan_checked(SceneKind.CD, folder, "s")


def test_symbolic_links_are_refused_or_followed_inside_the_folder_only(
    tmp_path: Path, demo_cd_dir: Path
) -> None:
    folder = tmp_path / "s"
    shutil.copytree(demo_cd_dir, folder)
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0::/root:/bin/bash\n")
    (folder / "label.tif").unlink()
    (folder / "label.tif").symlink_to(secret)
    for check in (folder_check(SceneKind.CD), None):  # before anything is opened, --publish too
        with pytest.raises(SceneError, match=r"label\.tif is a symbolic link \(to .*passwd\)"):
            plan_upload(SceneKind.CD, folder, "s", check)
    with pytest.raises(SceneError, match=r"label\.tif is a symbolic link to .*passwd, outside"):
        plan_upload(SceneKind.CD, folder, "s", None, follow_symlinks=True)

    (folder / "label.tif").unlink()
    shutil.copy(demo_cd_dir / "label.tif", folder / "original-label.tif")
    (folder / "label.tif").symlink_to("original-label.tif")
    with pytest.raises(SceneError, match="symbolic link"):
        plan_checked(SceneKind.CD, folder, "s")
    plan = plan_checked(SceneKind.CD, folder, "s", follow_symlinks=True)
    assert (folder / "label.tif", "cd/s/label.tif") in plan.files

    nvs = tmp_path / "n"
    shutil.copytree(MAUPERTUIS, nvs)
    shutil.rmtree(nvs / "images")
    (nvs / "images").symlink_to(MAUPERTUIS / "images")  # a linked folder is a link too
    with pytest.raises(SceneError, match=r"images is a symbolic link"):
        plan_upload(SceneKind.NVS, nvs, "n", None)


def test_upload_to_missing_branch(store: EmbeddedStore, demo_cd_dir: Path) -> None:
    plan = plan_checked(SceneKind.CD, demo_cd_dir, "farm")
    with pytest.raises(NotFoundError, match=r"branch 'nope' not found.*cd scene 'farm'"):
        ingest_scene(store, "nope", plan)


def test_unchanged_scene_is_an_empty_commit(store: EmbeddedStore, demo_cd_dir: Path) -> None:
    plan = plan_checked(SceneKind.CD, demo_cd_dir, "farm")
    first = ingest_scene(store, "main", plan)
    with pytest.raises(NoChangesError, match="cd/farm unchanged on branch 'main'"):
        ingest_scene(store, "main", plan)
    assert store.resolve("main") == first.id
    assert store.uncommitted("main") == []


def test_reingest_replaces_the_scene_exactly(
    store: EmbeddedStore, demo_cd_dir: Path, tmp_path: Path
) -> None:
    ingest_scene(store, "main", plan_checked(SceneKind.CD, demo_cd_dir, "farm"))
    folder = tmp_path / "farm"
    shutil.copytree(demo_cd_dir, folder)
    (folder / "label.tif").unlink()
    ingest_scene(store, "main", plan_checked(SceneKind.CD, folder, "farm"))
    assert not store.exists("main", "cd/farm/label.tif")
    assert store.exists("main~1", "cd/farm/label.tif")


def test_dirty_branch_is_refused_naming_the_way_out(
    store: EmbeddedStore, demo_cd_dir: Path
) -> None:
    store.put("main", "somebody/else.txt", io.BytesIO(b"x"))  # as an older version left it
    with pytest.raises(StoreError, match=r"uncommitted change.*`mlops-assets reset main`"):
        ingest_scene(store, "main", plan_checked(SceneKind.CD, demo_cd_dir, "farm"))
    assert set(store.list_branches()) == {"main"}
    store.reset("main")
    ingest_scene(store, "main", plan_checked(SceneKind.CD, demo_cd_dir, "farm"))


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
    store = _FailingStore(tmp_path / "store", fail_at=6)
    store.ensure_repository()
    ingest_scene(store, "main", plan_checked(SceneKind.CD, demo_cd_dir, "existing"))  # 3 + marker
    head = store.resolve("main")
    plans = [
        plan_checked(SceneKind.CD, demo_cd_dir, "new-a"),  # puts 5-7: fails at 6
        plan_checked(SceneKind.NVS, MAUPERTUIS, "new-b"),
    ]
    with pytest.raises(ConnectionError, match=r"new-a/post\.tif"):
        ingest_scenes(store, "main", plans, "two scenes")
    assert store.resolve("main") == head
    assert store.uncommitted("main") == []
    assert store.list_prefixes("main", "cd/") == ["cd/existing/"]  # the other scene is untouched
    assert set(store.list_branches()) == {"main"}  # the writer's branch went with it


def test_an_ingest_writes_on_its_own_branch_and_merges_once(
    store: EmbeddedStore, demo_cd_dir: Path
) -> None:
    before = store.resolve("main")
    commit = ingest_scene(store, "main", plan_checked(SceneKind.CD, demo_cd_dir, "farm"))
    assert store.resolve("main") == commit.id
    assert commit.parents[0] == before and len(commit.parents) == 2
    assert commit.metadata["merge_source"].startswith("write-farm-")
    written = store.get_commit(commit.parents[1])
    assert written.metadata["scenes"] == "cd/farm" and written.parents == (before,)
    assert set(store.list_branches()) == {"main"}


class _Interleaving(EmbeddedStore):
    """Runs ``during`` once, in the middle of this writer's upload (after its first put)."""

    def __init__(self, root: Path, during: Callable[[], None]) -> None:
        super().__init__(root, "scenes")
        self.during: Callable[[], None] | None = during

    def put(
        self,
        branch: str,
        path: str,
        source: BinaryIO | Path,
        content_type: str = "application/octet-stream",
    ) -> ObjectStat:
        stat = super().put(branch, path, source, content_type)
        if self.during is not None:
            during, self.during = self.during, None
            during()
        return stat


def test_two_ingests_at_once_never_see_each_others_files(tmp_path: Path, demo_cd_dir: Path) -> None:
    other = EmbeddedStore(tmp_path / "store", "scenes")
    committed: list[Commit] = []
    store = _Interleaving(
        tmp_path / "store",
        lambda: committed.append(
            ingest_scene(other, "main", plan_checked(SceneKind.CD, demo_cd_dir, "b"))
        ),
    )
    store.ensure_repository()

    first = ingest_scene(store, "main", plan_checked(SceneKind.CD, demo_cd_dir, "a"))

    (second,) = committed  # committed while the first was half uploaded
    assert [s.path for s in store.list(second.id)] == [
        "_writes/cd/b.json",  # b's writer marker: a's is not there
        "cd/b/label.tif",
        "cd/b/post.tif",
        "cd/b/pre.tif",
    ]
    assert [s.path for s in store.list(first.id, "cd/a/")] == [
        "cd/a/label.tif",
        "cd/a/post.tif",
        "cd/a/pre.tif",
    ]
    assert store.get_commit(first.id).parents[0] == second.id
    assert store.uncommitted("main") == [] and set(store.list_branches()) == {"main"}


def test_two_ingests_of_one_scene_never_mix_the_folders(
    tmp_path: Path, demo_cd_dir: Path, demo_cd_warped_dir: Path
) -> None:
    other = EmbeddedStore(tmp_path / "store", "scenes")
    committed: list[Commit] = []
    store = _Interleaving(
        tmp_path / "store",
        lambda: committed.append(
            ingest_scene(other, "main", plan_checked(SceneKind.CD, demo_cd_warped_dir, "farm"))
        ),
    )
    store.ensure_repository()

    with pytest.raises(SceneConflictError) as info:
        ingest_scene(store, "main", plan_checked(SceneKind.CD, demo_cd_dir, "farm"))

    (winner,) = committed
    assert f"cd/farm was changed on 'main' by commit {winner.id[:12]}" in str(info.value)
    assert "nothing was merged" in str(info.value)
    assert store.resolve("main") == winner.id
    assert {s.path.rsplit("/", 1)[1]: s.checksum for s in store.list("main", "cd/farm/")} == (
        _checksums(demo_cd_warped_dir)
    )
    assert set(store.list_branches()) == {"main"}


def _checksums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.tif")}


@pytest.fixture(params=BACKENDS)
def writers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[VersionedStore, ...]]:
    """Two clients of one repository, as two ingest processes would hold them."""
    with two_writers(request.param, tmp_path) as pair:
        yield pair


@pytest.fixture
def one_file_edits(tmp_path: Path, demo_cd_dir: Path) -> tuple[Path, Path]:
    """Two versions of the demo scene: the first edits only pre.tif, the second only post.tif."""
    return (
        edit_one_file(demo_cd_dir, tmp_path / "edit-pre", "pre.tif"),
        edit_one_file(demo_cd_dir, tmp_path / "edit-post", "post.tif"),
    )


def _cd(folder: Path, scene_id: str = "farm") -> UploadPlan:
    return plan_checked(SceneKind.CD, folder, scene_id)


def test_two_ingests_of_one_scene_editing_different_files_never_mix(
    writers: tuple[VersionedStore, VersionedStore],
    demo_cd_dir: Path,
    one_file_edits: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, other = writers
    edit_pre, edit_post = one_file_edits
    ingest_scene(store, "main", _cd(demo_cd_dir))
    real_merge = store.merge
    won: list[Commit] = []

    def racing_merge(*args: Any, **kwargs: Any) -> str:
        if not won:  # the other writer lands after this one's last look, before its merge
            won.append(ingest_scene(other, "main", _cd(edit_post)))
        return real_merge(*args, **kwargs)

    monkeypatch.setattr(store, "merge", racing_merge)
    with pytest.raises(SceneConflictError) as info:
        ingest_scene(store, "main", _cd(edit_pre))

    (winner,) = won
    message = str(info.value)
    assert message.startswith(f"cd/farm was changed on 'main' by commit {winner.id[:12]} ")
    assert f"merged from '{winner.metadata['merge_source']}'" in message
    assert "nothing was merged" in message and "\n" not in message
    assert (info.value.scene, info.value.other) == ("cd/farm", winner.id)
    assert store.resolve("main") == winner.id  # untouched by the loser
    assert scene_files(store, "main", "farm") == checksums(edit_post)  # one folder, whole
    assert set(store.list_branches()) == {"main"}  # the loser's write- branch went too


def test_a_later_ingest_of_one_scene_replaces_it_and_changes_only_it(
    writers: tuple[VersionedStore, VersionedStore],
    demo_cd_dir: Path,
    one_file_edits: tuple[Path, Path],
) -> None:
    store, other = writers
    edit_pre, edit_post = one_file_edits
    first = ingest_scenes(store, "main", [_cd(demo_cd_dir), _cd(demo_cd_dir, "quarry")], "two")
    marker = store.stat("main", write_marker(SceneKind.CD, "quarry")).checksum

    for writer, folder in ((other, edit_pre), (store, edit_post)):  # one after the other
        before = store.resolve("main")
        # quarry is unchanged: its files and its marker stay as they are
        commit = ingest_scenes(writer, "main", [_cd(folder), _cd(demo_cd_dir, "quarry")], "again")
        assert scene_files(store, "main", "farm") == checksums(folder)
        changes = scene_changes(store, "main", before)  # what the commit sensor sees
        assert (changes.head, changes.changed, changes.deleted) == (
            commit.id,
            {SceneKind.CD: ["farm"], SceneKind.NVS: []},
            {SceneKind.CD: [], SceneKind.NVS: []},
        )
    assert store.stat("main", write_marker(SceneKind.CD, "quarry")).checksum == marker
    assert scene_changes(store, "main", first.id).changed[SceneKind.CD] == ["farm"]
    # The marker is no part of a scene: not listed with it, not a scene of its own.
    assert store.list_prefixes("main", "cd/") == ["cd/farm/", "cd/quarry/"]
    assert [s.path.rsplit("/", 1)[1] for s in store.list("main", "cd/farm/")] == [
        "label.tif",
        "post.tif",
        "pre.tif",
    ]
    assert scene_of_path(write_marker(SceneKind.CD, "farm")) is None
    with pytest.raises(NoChangesError):  # an identical ingest still changes nothing
        ingest_scene(other, "main", _cd(edit_post))


class _SlowStore(EmbeddedStore):
    """Takes its time over each write, so other writers and signals land in the middle."""

    def __init__(self, root: Path, delay: float) -> None:
        super().__init__(root, "scenes")
        self.delay = delay

    def put(
        self,
        branch: str,
        path: str,
        source: BinaryIO | Path,
        content_type: str = "application/octet-stream",
    ) -> ObjectStat:
        time.sleep(self.delay)
        return super().put(branch, path, source, content_type)

    def commit(self, branch: str, message: str, *args: Any, **kwargs: Any) -> Commit:
        time.sleep(self.delay)
        return super().commit(branch, message, *args, **kwargs)

    def merge(self, source: str, destination: str, *args: Any, **kwargs: Any) -> str:
        time.sleep(self.delay)
        return super().merge(source, destination, *args, **kwargs)


def _concurrent_ingest(root: str, folder: str, scene: str, barrier: Barrier, results: Any) -> None:
    store = _SlowStore(Path(root), delay=0.02)
    plan = plan_upload(SceneKind.CD, Path(folder), scene, None)
    barrier.wait()
    try:
        commit = ingest_scene(store, "main", plan)
    except StoreError as exc:
        results.put((scene, folder, "error", f"{type(exc).__name__}: {exc}"))
    else:
        results.put((scene, folder, "merged", commit.id))


def test_eight_concurrent_ingests_of_four_scenes_leave_whole_scenes_only(
    tmp_path: Path, demo_cd_dir: Path, one_file_edits: tuple[Path, Path]
) -> None:
    store = EmbeddedStore(tmp_path / "store", "scenes")
    store.ensure_repository()
    ingest_scenes(store, "main", [_cd(demo_cd_dir, f"s{i}") for i in range(4)], "seed")
    # Each scene is rewritten at once by two folders that changed *different* files of it: a
    # merge alone would take pre.tif from one and post.tif from the other.
    racing = {str(folder): _checksums(folder) for folder in one_file_edits}
    folders = {str(demo_cd_dir): _checksums(demo_cd_dir), **racing}
    jobs = [(f"s{i}", folder) for i in range(4) for folder in racing]
    ctx = multiprocessing.get_context("fork")  # everything is imported already: starts at once
    barrier = ctx.Barrier(len(jobs))
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=_concurrent_ingest, args=(str(store.root), folder, scene, barrier, results)
        )
        for scene, folder in jobs
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0] * len(jobs)

    merged = {scene for scene, _, status, _ in outcomes if status == "merged"}
    assert merged == {"s0", "s1", "s2", "s3"}
    for scene, _, status, detail in outcomes:
        if status == "error":  # the loser of a race on one scene id, naming the winner
            assert detail.startswith(f"SceneConflictError: cd/{scene} was changed on 'main'")
    # Every commit on main holds, for every scene, the files of exactly one folder.
    for commit in store.log("main"):
        for scene in ("s0", "s1", "s2", "s3"):
            files = {
                s.path.rsplit("/", 1)[1]: s.checksum for s in store.list(commit.id, f"cd/{scene}/")
            }
            assert not files or files in folders.values(), (commit.id, scene, files)
    assert store.fsck().clean
    assert store.uncommitted("main") == [] and set(store.list_branches()) == {"main"}


def _killable_ingest(root: str, folder: str, ready: Any) -> None:
    store = _SlowStore(Path(root), delay=0.03)
    plan = plan_upload(SceneKind.CD, Path(folder), "farm", None)
    ready.set()
    ingest_scene(store, "main", plan)


def test_ingests_killed_at_random_points_leave_main_as_it_was(
    tmp_path: Path, demo_cd_dir: Path, demo_cd_warped_dir: Path
) -> None:
    store = EmbeddedStore(tmp_path / "store", "scenes")
    store.ensure_repository()
    folders = [demo_cd_dir, demo_cd_warped_dir]
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(20)
    killed = 0
    farm: dict[str, str] = {}
    for round_ in range(20):
        folder = folders[round_ % 2]
        before = store.resolve("main")
        ready = ctx.Event()
        child = ctx.Process(target=_killable_ingest, args=(str(store.root), str(folder), ready))
        child.start()
        assert ready.wait(timeout=60)
        time.sleep(rng.uniform(0.0, 0.5))  # an ingest takes about 0.3 s here
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(timeout=60)
        farm = {s.path.rsplit("/", 1)[1]: s.checksum for s in store.list("main", "cd/farm/")}
        if store.resolve("main") == before:
            killed += child.exitcode == -signal.SIGKILL
        else:  # it merged before the signal (maybe killed while deleting its branch): whole
            assert farm == _checksums(folder)
            assert store.get_commit("main").parents[0] == before
        assert store.uncommitted("main") == []
    assert killed >= 5  # the random points did land inside ingests, before their merge

    last = next(f for f in folders if _checksums(f) != farm)
    commit = ingest_scene(store, "main", plan_checked(SceneKind.CD, last, "farm"))
    assert store.resolve("main") == commit.id
    assert store.fsck().clean


def test_stage_scene_reports_changes(store: EmbeddedStore, demo_cd_dir: Path) -> None:
    changes = stage_scene(store, "main", plan_checked(SceneKind.CD, demo_cd_dir, "farm"))
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
    plan = plan_upload(SceneKind.CD, folder, "s", None)  # the branch's checks judge
    assert [target for _, target in plan.files] == [
        "cd/s/pre.tif",
        "cd/s/post.tif",
        "cd/s/label.tif",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SceneError, match="holds no file of the layout"):
        plan_upload(SceneKind.NVS, empty, "e", None)


def test_the_lakefs_client_writes_isolated_and_atomic_too(
    tmp_path: Path,
    demo_cd_dir: Path,
    demo_cd_warped_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    double = LakeFSDouble(tmp_path / "lakefs-server", DOUBLE_KEY, DOUBLE_SECRET).start()
    try:
        client = LakeFSStore(double.endpoint, DOUBLE_KEY, DOUBLE_SECRET, "scenes")
        other = LakeFSStore(double.endpoint, DOUBLE_KEY, DOUBLE_SECRET, "scenes")
        client.ensure_repository()
        first = ingest_scene(client, "main", plan_checked(SceneKind.CD, demo_cd_dir, "a"))
        assert first.metadata["merge_source"].startswith("write-a-")
        assert set(client.list_branches()) == {"main"}

        # A second writer of the same scene finishes while this one is half way: no mix.
        real_put = client.put
        calls: list[str] = []

        def racing_put(branch: str, path: str, *args: Any, **kwargs: Any) -> ObjectStat:
            stat = real_put(branch, path, *args, **kwargs)
            if not calls:
                calls.append(path)
                ingest_scene(other, "main", plan_checked(SceneKind.CD, demo_cd_warped_dir, "b"))
            return stat

        monkeypatch.setattr(client, "put", racing_put)
        with pytest.raises(SceneConflictError, match="cd/b was changed on 'main' by commit"):
            ingest_scene(client, "main", plan_checked(SceneKind.CD, demo_cd_dir, "b"))
        files = {s.path.rsplit("/", 1)[1]: s.checksum for s in client.list("main", "cd/b/")}
        assert files == _checksums(demo_cd_warped_dir)  # the double's checksums are SHA-256
        assert set(client.list_branches()) == {"main"}

        # Ctrl-C in the middle of an upload: main as it was, nothing staged, no branch left.
        head = client.resolve("main")

        def interrupted_put(branch: str, path: str, *args: Any, **kwargs: Any) -> ObjectStat:
            if path.endswith("post.tif"):
                raise KeyboardInterrupt
            return real_put(branch, path, *args, **kwargs)

        monkeypatch.setattr(client, "put", interrupted_put)
        with pytest.raises(KeyboardInterrupt):
            ingest_scene(client, "main", plan_checked(SceneKind.CD, demo_cd_warped_dir, "c"))
        assert client.resolve("main") == head and client.uncommitted("main") == []
        assert set(client.list_branches()) == {"main"}
    finally:
        double.stop()
