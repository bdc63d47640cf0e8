"""Ingest throughput: the isolated, verified ingest against a bare put-and-commit.

The package side is `ingest_scene` on the embedded store, as ``mlops-assets ingest`` runs it
after its local checks: cut a ``write-`` branch, stream each file into the store (SHA-256 while
writing, the verified-object marker recorded), commit there, check the target for a concurrent
change to the scene, merge into main, delete the branch. The reference is the store's own
primitives with none of that: ``put`` of each file straight onto main and one ``commit``. Both
write the same cached 4096 px demo scene (pre, post, label) into a fresh store on the same file
system; the sides alternate and the best of each is kept. The local checks (every block decoded)
happen before either and are timed separately, for information.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import PERF_SCENE, BenchResult, Target, cached_scene, ratio
from mlops_assets.core.scenes.cd import validate_local_cd
from mlops_assets.core.scenes.ingest import ingest_scene, plan_upload
from mlops_assets.core.scenes.layout import SceneKind
from mlops_assets.core.store.embedded import EmbeddedStore

_FILES = ("pre.tif", "post.tif", "label.tif")


def _bare(scene: Path, root: Path) -> float:
    store = EmbeddedStore(root, "scenes")
    store.ensure_repository()
    started = time.perf_counter()
    for name in _FILES:
        store.put("main", f"cd/bench/{name}", scene / name)
    store.commit("main", "bench: bare put + commit")
    return time.perf_counter() - started


def _isolated(scene: Path, root: Path) -> float:
    store = EmbeddedStore(root, "scenes")
    store.ensure_repository()
    plan = plan_upload(SceneKind.CD, scene, "bench", None)  # checked beforehand
    started = time.perf_counter()
    ingest_scene(store, "main", plan)
    seconds = time.perf_counter() - started
    assert set(store.list_branches()) == {"main"}, "the write branch was not cleaned up"
    return seconds


def bench_ingest_throughput(size: int = 4096, repeats: int = 5) -> BenchResult:
    """MB/s of `ingest_scene` against put + commit on the same scene, best of ``repeats``."""
    scene = cached_scene(PERF_SCENE, size)
    total = sum((scene / name).stat().st_size for name in _FILES)
    for name in _FILES:  # the page cache holds the sources for both sides alike
        (scene / name).read_bytes()
    started = time.perf_counter()
    problems = validate_local_cd(scene)
    check_seconds = time.perf_counter() - started
    if problems:
        raise RuntimeError(f"the bench scene does not pass its checks: {problems}")
    bare: list[float] = []
    isolated: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=scene.parent) as tmp:
        for i in range(repeats):
            for times, run in ((bare, _bare), (isolated, _isolated)):
                root = Path(tmp) / f"{run.__name__}-{i}"
                times.append(run(scene, root))
                shutil.rmtree(root)
    mb = total / 1e6
    measured, reference = mb / min(isolated), mb / min(bare)
    return BenchResult(
        name=f"ingest throughput ({size} px)",
        unit="MB/s",
        measured=measured,
        reference=reference,
        ratio=ratio(measured, reference),
        target=Target("ratio", ">=", 0.9),
        note=(
            f"{mb:.1f} MB (pre, post, label); isolated ingest {min(isolated):.3f} s best of "
            f"{sorted(round(t, 3) for t in isolated)}, bare put + commit {min(bare):.3f} s best "
            f"of {sorted(round(t, 3) for t in bare)}; the local checks before either (every "
            f"block decoded, labels counted) took {check_seconds:.2f} s"
        ),
        details={
            "bytes": total,
            "isolated_s": isolated,
            "bare_s": bare,
            "local_checks_s": check_seconds,
        },
    )
