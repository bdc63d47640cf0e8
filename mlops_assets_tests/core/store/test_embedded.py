"""EmbeddedStore behaviour beyond the shared contract: several processes at once, on-disk layout."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import stat
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.core.store.types import InvalidNameError, NoChangesError, NotFoundError


def _writer(root: str, worker: int, count: int, barrier: Barrier) -> None:
    store = EmbeddedStore(root, "scenes")
    barrier.wait()
    # Both workers stage and commit on one shared branch. A commit takes everything staged, so
    # one worker's commit may carry the other's objects and the other's then finds nothing new.
    for i in range(count):
        store.put("shared", f"w{worker}/{i:03d}.bin", io.BytesIO(f"{worker}-{i}".encode() * 1000))
        if i % 5 == 4 or i == count - 1:
            with contextlib.suppress(NoChangesError):
                store.commit("shared", f"worker {worker} batch {i // 5}")
    # Each also works on its own branch and merges it into main, as ingestion does.
    branch = f"work-{worker}"
    store.create_branch(branch, "main")
    for i in range(5):
        store.put(branch, f"branch/{worker}/{i}.txt", io.BytesIO(f"{worker}:{i}".encode()))
    store.commit(branch, f"worker {worker} on its branch")
    store.merge(branch, "main")


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = EmbeddedStore(root, "scenes")
    store.ensure_repository()
    store.create_branch("shared", "main")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    count = 40
    workers = [ctx.Process(target=_writer, args=(str(root), w, count, barrier)) for w in (0, 1)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=300)
    assert [p.exitcode for p in workers] == [0, 0]

    # Every object both workers staged on the shared branch is committed, with its content.
    assert store.uncommitted("shared") == []
    shared = {s.path for s in store.list("shared")}
    assert shared == {f"w{w}/{i:03d}.bin" for w in (0, 1) for i in range(count)}
    assert store.read_bytes("shared", "w1/017.bin") == b"1-17" * 1000
    # Both merges landed on main, each as a merge commit.
    on_main = {s.path for s in store.list("main")}
    assert on_main == {f"branch/{w}/{i}.txt" for w in (0, 1) for i in range(5)}
    merges = [c for c in store.log("main") if c.message.startswith("Merge ")]
    assert len(merges) == 2
    assert all(len(c.parents) == 2 for c in merges)


def test_objects_are_content_addressed_and_read_only(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path, "scenes")
    store.ensure_repository()
    a = store.put("main", "a.bin", io.BytesIO(b"same"))
    b = store.put("main", "b.bin", io.BytesIO(b"same"))
    assert a.checksum == b.checksum
    files = [p for p in (tmp_path / "objects").rglob("*") if p.is_file()]
    assert len(files) == 1
    assert not files[0].stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_failed_upload_leaves_no_partial_object(tmp_path: Path) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            raise OSError("disk went away")

    store = EmbeddedStore(tmp_path, "scenes")
    store.ensure_repository()
    with pytest.raises(OSError, match="disk went away"):
        store.put("main", "a.bin", io.BufferedReader(Broken()))
    assert store.uncommitted("main") == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_missing_repository_and_bad_names(tmp_path: Path) -> None:
    with pytest.raises(InvalidNameError):
        EmbeddedStore(tmp_path, "No_Caps")
    store = EmbeddedStore(tmp_path, "never-created")
    with pytest.raises(NotFoundError, match="never-created"):
        store.resolve("main")
    store.ensure_repository()
    with pytest.raises(InvalidNameError, match=r"\.\."):
        store.put("main", "cd/../escape.tif", io.BytesIO(b""))
    with pytest.raises(InvalidNameError):
        store.delete_branch("main")


def test_ref_expressions(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path, "scenes")
    store.ensure_repository()
    store.put("main", "a", io.BytesIO(b"1"))
    c1 = store.commit("main", "1").id
    store.create_branch("side", "main")
    store.put("side", "b", io.BytesIO(b"2"))
    c2 = store.commit("side", "2").id
    store.put("main", "c", io.BytesIO(b"3"))
    c3 = store.commit("main", "3").id
    merge = store.merge("side", "main")

    assert store.resolve(c1[:10]) == c1
    assert store.resolve("main^1") == c3
    assert store.resolve("main^2") == c2
    assert store.resolve("main~2") == c1
    assert store.resolve(f"{merge}^2~1") == c1
    store.put("main", "staged", io.BytesIO(b"s"))
    assert store.exists("main", "staged")
    assert not store.exists("main@", "staged")
    with pytest.raises(NotFoundError):
        store.resolve("main~9")


def test_store_root_is_only_created_on_first_use(tmp_path: Path) -> None:
    root = tmp_path / "lazy"
    store = EmbeddedStore(root, "scenes")
    assert not root.exists()
    store.ensure_repository()
    assert (root / "store.db").exists()
