"""What is read is what was written: flipped bytes are caught, reported, repaired by a re-put."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from mlops_assets.core.store import embedded as embedded_module
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.core.store.lakefs import LakeFSStore
from mlops_assets.core.store.types import CorruptObjectError
from mlops_assets_tests.core.store.lakefs_double import LakeFSDouble

GOOD = b"pre-image bytes " * 4096


def _physical(store: VersionedStore, ref: str, path: str, request: pytest.FixtureRequest) -> Path:
    """The file the backend keeps ``path`` in (for lakeFS: behind the double's API)."""
    if isinstance(store, EmbeddedStore):
        return store.physical_path(ref, path)
    assert isinstance(store, LakeFSStore)
    if request.node.callspec.params.get("store") != "lakefs-double":
        pytest.skip("flipping stored bytes needs the double's storage")
    double: LakeFSDouble = request.getfixturevalue("lakefs_double")
    return EmbeddedStore(double.root, store.repository).physical_path(ref, path)


def _flip(file: Path, offset: int = 100) -> None:
    """Flip one byte in place, as bit rot or a stray write would."""
    file.chmod(0o644)
    with file.open("r+b") as out:
        out.seek(offset)
        byte = out.read(1)
        out.seek(offset)
        out.write(bytes([byte[0] ^ 0xFF]))
    file.chmod(0o444)


def test_flipped_bytes_are_an_error_naming_path_commit_and_checksums(
    store: VersionedStore, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store.put("main", "cd/farm/pre.tif", io.BytesIO(GOOD))
    commit = store.commit("main", "add").id
    expected = store.stat("main", "cd/farm/pre.tif").checksum
    _flip(_physical(store, "main", "cd/farm/pre.tif", request))

    with pytest.raises(CorruptObjectError) as info:
        store.read_bytes(commit, "cd/farm/pre.tif")
    message = str(info.value)
    assert message.startswith("cd/farm/pre.tif at ")
    assert expected in message and "the stored bytes have" in message
    if isinstance(store, EmbeddedStore):
        assert f"commit {commit[:12]}" in message
    actual = info.value.actual.split()[-1]
    assert actual != expected.strip('"') and len(actual) == len(expected.strip('"'))

    target = tmp_path / "export" / "pre.tif"
    with pytest.raises(CorruptObjectError):
        store.download("main", "cd/farm/pre.tif", target)
    assert list(target.parent.iterdir()) == []  # no half-checked file left behind

    report = store.fsck()
    assert [p.path for p in report.problems] == ["cd/farm/pre.tif"]
    assert "expected" in str(report.problems[0])


def test_ingesting_the_original_bytes_again_repairs_the_object(
    store: VersionedStore, request: pytest.FixtureRequest
) -> None:
    store.put("main", "cd/farm/pre.tif", io.BytesIO(GOOD))
    store.commit("main", "add")
    _flip(_physical(store, "main", "cd/farm/pre.tif", request))
    assert not store.fsck().clean

    # The same bytes again: nothing changes in the tree (same checksum), the object is rewritten.
    store.put("main", "cd/farm/pre.tif", io.BytesIO(GOOD))
    assert store.uncommitted("main") == []
    assert store.read_bytes("main", "cd/farm/pre.tif") == GOOD
    assert store.fsck().clean


def _raster(path: Path) -> Path:
    profile = {
        "driver": "GTiff",
        "width": 64,
        "height": 64,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(500000, 5000000, 10, 10),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.arange(64 * 64, dtype=np.uint32).reshape(1, 64, 64).astype(np.uint8))
    return path


def test_rasters_are_hashed_once_before_gdal_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EmbeddedStore(tmp_path / "store", "scenes")
    store.ensure_repository()
    source = _raster(tmp_path / "pre.tif")
    store.put("main", "cd/farm/pre.tif", source)
    commit = store.commit("main", "add").id
    hashed: list[Path] = []
    real = embedded_module._sha256_file

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(embedded_module, "_sha256_file", counting)
    # Written by this store and unchanged since: trusted without reading it again.
    with store.raster_location(commit, "cd/farm/pre.tif").open() as src:
        assert src.read(1).shape == (64, 64)
    assert hashed == []

    file = store.physical_path(commit, "cd/farm/pre.tif")
    _flip(file, offset=file.stat().st_size - 10)
    with pytest.raises(CorruptObjectError, match=rf"cd/farm/pre\.tif at commit {commit[:12]}"):
        store.raster_location(commit, "cd/farm/pre.tif")
    assert len(hashed) == 1

    store.put("main", "cd/farm/pre.tif", source)  # repaired
    hashed.clear()
    for _ in range(3):
        store.raster_location(commit, "cd/farm/pre.tif")
    assert hashed == []  # the repaired file was hashed on its way in

    # A file changed behind the store's back is hashed again before its next use.
    os.utime(file, ns=(time.time_ns(), time.time_ns()))
    store.raster_location(commit, "cd/farm/pre.tif")
    assert len(hashed) == 1


def test_garbage_collection_keeps_what_is_referenced_or_young(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store", "scenes")
    store.ensure_repository()
    kept = store.put("main", "a.bin", io.BytesIO(b"committed"))
    store.commit("main", "a")
    store.create_branch("work", "main")
    staged = store.put("work", "b.bin", io.BytesIO(b"staged only"))
    dropped = store.put("work", "c.bin", io.BytesIO(b"dropped"))
    store.reset("work", "c.bin")  # nothing references it any more
    partial = store.root / "tmp" / "tmpabandoned"
    partial.write_bytes(b"half an upload")
    old = time.time() - 3 * 3600
    for file in [*store.root.glob("objects/*/*"), partial]:
        os.utime(file, (old, old))
    young = store.put("work", "d.bin", io.BytesIO(b"young"))
    store.reset("work", "d.bin")

    preview = store.collect_garbage(grace_s=3600, dry_run=True)
    assert (preview.objects, preview.partial_uploads) == (1, 1)
    assert store.root.joinpath("objects", dropped.checksum[:2], dropped.checksum[2:]).exists()

    report = store.collect_garbage(grace_s=3600)
    assert (report.objects, report.bytes, report.partial_uploads) == (1, len(b"dropped"), 1)
    remaining = {p.parent.name + p.name for p in store.root.glob("objects/*/*")}
    assert remaining == {kept.checksum, staged.checksum, young.checksum}
    assert not partial.exists()
    assert store.read_bytes("work", "b.bin") == b"staged only"
    assert store.fsck().clean
