"""mlops_assets.scale: GPU step tags, pools and the executor setting."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from mlops_assets.definitions import build_defs
from mlops_assets.scale import GPU_POOL, KNOWN_POOLS, check_pools, gpu_k8s_config
from mlops_assets.settings import Settings

DOCKER = Path(__file__).parents[1] / "docker"


def test_the_code_location_uses_known_pools_only(tmp_path: Path) -> None:
    defs = build_defs(Settings.from_env({"MLOPS_HOME": str(tmp_path)}))
    check_pools(defs)
    pools = {
        a.op.pool for a in defs.resolve_asset_graph().assets_defs if a.is_executable and a.op.pool
    }
    assert pools == {GPU_POOL}


def test_an_unknown_pool_is_refused_naming_the_step() -> None:
    @dg.asset(pool="gpus")
    def typo() -> None: ...

    with pytest.raises(ValueError, match=r"step 'typo': unknown pool 'gpus' \(known: gpu\)"):
        check_pools(dg.Definitions(assets=[typo]))


def test_every_deployment_limits_the_known_pools() -> None:
    for name in ("dagster.yaml", "dagster.scale.yaml"):
        pools = yaml.safe_load((DOCKER / name).read_text())["concurrency"]["pools"]
        assert pools["default_limit"] >= 1, name  # `gpu` is limited by the default limit
    helm = yaml.safe_load((DOCKER / "kubernetes" / "values.yaml").read_text())
    assert helm["concurrency"]["enabled"] and helm["concurrency"]["pools"]["defaultLimit"] >= 1
    assert {GPU_POOL} == KNOWN_POOLS


def test_gpu_config_needs_a_gpu() -> None:
    assert gpu_k8s_config(2)["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    with pytest.raises(ValueError, match="at least one GPU"):
        gpu_k8s_config(0)
