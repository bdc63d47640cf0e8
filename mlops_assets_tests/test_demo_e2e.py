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
    }
    (tmp_path / "home" / "dagster").mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", tmp_path / "home" / "dagster" / "dagster.yaml")

    def run(*args: str) -> str:
        done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    run(str(BIN / "mlops-assets"), "demo-data", "--size", "96", "--image-size", "32")
    run(str(BIN / "mlops-assets"), "partitions", "sync")
    out = run(str(REPO / "scripts" / "demo.sh"))
    assert out.count("  ok      cd/scene") == 4 and out.count("  ok      nvs/scene") == 3
    assert "FAILED" not in out

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    try:
        with dg.DagsterInstance.get() as instance:
            cd = instance.get_materialized_partitions(dg.AssetKey(["cd", "scene"]))
            nvs = instance.get_materialized_partitions(dg.AssetKey(["nvs", "scene"]))
        assert cd == {"farmland-north", "suburb-east", "forest-ridge", "riverside-utm32"}
        assert nvs == {"globe", "ring", "toy-blocks"}
    finally:
        del os.environ["DAGSTER_HOME"]
