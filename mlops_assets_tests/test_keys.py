from __future__ import annotations

from pathlib import Path

from mlops_assets import keys
from mlops_assets.definitions import build_defs
from mlops_assets.settings import Settings


def test_each_op_name_is_the_op_dagster_builds_for_its_asset(tmp_path: Path) -> None:
    defs = build_defs(Settings.from_env({}, cwd=tmp_path))
    ops = {
        keys.CD_SCENE: keys.CD_SCENE_OP,
        keys.NVS_SCENE: keys.NVS_SCENE_OP,
        keys.CD_MODEL: keys.CD_MODEL_OP,
        keys.CD_EVALUATION: keys.CD_EVALUATION_OP,
        keys.CD_REGISTERED_MODEL: keys.CD_REGISTERED_MODEL_OP,
        keys.CD_CHANGE_MAP: keys.CD_CHANGE_MAP_OP,
        keys.CD_SWEEP: keys.CD_SWEEP_OP,
    }
    built = {key: defs.get_assets_def(key).node_def.name for key in ops}
    assert built == ops
    assert built[keys.CD_REGISTERED_MODEL] == "cd__registered_model"
