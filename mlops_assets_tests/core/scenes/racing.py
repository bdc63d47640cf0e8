"""Helpers for races between two writers of one scene, on both store backends.

Two folders of one scene that differ in *different* files are what a merge alone does not catch
(it conflicts only on a path both sides changed): `edit_one_file` makes them from one folder.
`two_writers` opens two independent clients of one repository, as two processes would.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Generator
from pathlib import Path

import rasterio

from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.core.store.lakefs import LakeFSStore
from mlops_assets_tests.core.store.conftest import DOUBLE_KEY, DOUBLE_SECRET
from mlops_assets_tests.core.store.lakefs_double import LakeFSDouble

#: The backends every race runs on: the embedded store, and the lakeFS client against the double.
BACKENDS = ["embedded", "lakefs-double"]


def edit_one_file(src: Path, dest: Path, name: str) -> Path:
    """A copy of the scene folder ``src`` in which only the GeoTIFF ``name`` differs (a tag)."""
    shutil.copytree(src, dest)
    with rasterio.open(dest / name, "r+") as raster:
        raster.update_tags(edited_by=dest.name)
    assert {n for n, c in checksums(dest).items() if checksums(src)[n] != c} == {name}
    return dest


def checksums(folder: Path) -> dict[str, str]:
    """The SHA-256 of each GeoTIFF of a local CD scene folder, by file name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.tif")}


def scene_files(store: VersionedStore, ref: str, scene_id: str) -> dict[str, str]:
    """The checksum of each file of CD scene ``scene_id`` at ``ref``, by file name.

    Both the embedded store and the lakeFS double record SHA-256 checksums, so the result
    compares with `checksums` of the folder that was ingested.
    """
    return {
        s.path.rsplit("/", 1)[1]: s.checksum.strip('"') for s in store.list(ref, f"cd/{scene_id}/")
    }


@contextlib.contextmanager
def two_writers(backend: str, root: Path) -> Generator[tuple[VersionedStore, VersionedStore]]:
    """Two clients of one fresh repository ``scenes`` (with ``main``) on ``backend``."""
    if backend == "embedded":
        first = EmbeddedStore(root / "store", "scenes")
        first.ensure_repository()
        yield first, EmbeddedStore(root / "store", "scenes")
        return
    double = LakeFSDouble(root / "lakefs-server", DOUBLE_KEY, DOUBLE_SECRET).start()
    try:
        first, second = (
            LakeFSStore(
                double.endpoint, DOUBLE_KEY, DOUBLE_SECRET, "scenes", cache_dir=root / f"cache-{n}"
            )
            for n in (1, 2)
        )
        first.ensure_repository()
        yield first, second
    finally:
        double.stop()
