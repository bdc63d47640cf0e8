"""The README's first command, end to end: demo data, partitions, the real `dagster` CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

REPO = Path(__file__).parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.slow
@pytest.mark.integration
def test_demo_materialises_every_scene_with_the_dagster_cli(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MLOPS_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "home" / "dagster"),
        "BIN": str(BIN),
        "PRESET": "tiny",
        # A few NVS steps only: the chain's wiring is under test here, its quality elsewhere.
        "NVS_STEPS": "20",
        "NVS_MIN_PSNR": "5",
        "NVS_FRAMES": "4",
    }
    (tmp_path / "home" / "dagster").mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", tmp_path / "home" / "dagster" / "dagster.yaml")

    def run(*args: str) -> str:
        done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    run(str(BIN / "mlops-assets"), "demo-data", "--size", "128", "--image-size", "32")
    run(str(BIN / "mlops-assets"), "partitions", "sync")
    out = run(str(REPO / "scripts" / "demo.sh"))
    assert "FAILED" not in out, out
    assert (
        out.count("  ok      cd/scene,cd/tiles") == 4
        and out.count("  ok      nvs/scene,nvs/splats") == 3
    )
    assert out.count("  ok      cd/model,cd/registered_model") == 1
    assert out.count("  ok      cd/change_map") == 4
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    exported = tmp_path / "home" / "exports" / "cd"
    assert sorted(p.name for p in exported.iterdir()) == [
        "farmland-north",
        "forest-ridge",
        "riverside-utm32",
        "suburb-east",
    ]
    assert (exported / "suburb-east" / "change_map.tif").stat().st_size > 0
    splats = tmp_path / "home" / "exports" / "nvs" / "globe"
    assert (splats / "splats.ply").stat().st_size > 0 and (splats / "orbit.mp4").exists()

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    try:
        with dg.DagsterInstance.get() as instance:
            cd = instance.get_materialized_partitions(dg.AssetKey(["cd", "scene"]))
            nvs = instance.get_materialized_partitions(dg.AssetKey(["nvs", "scene"]))
            maps = instance.get_materialized_partitions(dg.AssetKey(["cd", "change_map"]))
            rendered = instance.get_materialized_partitions(dg.AssetKey(["nvs", "render"]))
            registered = instance.get_latest_materialization_event(
                dg.AssetKey(["cd", "registered_model"])
            )
        assert cd == maps == {"farmland-north", "suburb-east", "forest-ridge", "riverside-utm32"}
        assert registered is not None and registered.asset_materialization is not None
        assert registered.asset_materialization.metadata["aliases"].value == [
            "challenger",
            "champion",
        ]
        assert nvs == rendered == {"globe", "ring", "toy-blocks"}
    finally:
        del os.environ["DAGSTER_HOME"]
