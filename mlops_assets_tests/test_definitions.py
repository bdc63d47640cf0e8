from __future__ import annotations

import ast
import functools
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mlops_assets.definitions import build_defs
from mlops_assets.resources.mlflow import MLflowResource
from mlops_assets.resources.outputs import LocalOutputStoreResource, S3OutputStoreResource
from mlops_assets.resources.scene_store import EmbeddedSceneStore, LakeFSSceneStore
from mlops_assets.resources.sweeps import OptunaStorageResource
from mlops_assets.settings import Settings

EXPECTED_ASSETS = {
    dg.AssetKey(["cd", "scene"]),
    dg.AssetKey(["cd", "tiles"]),
    dg.AssetKey(["cd", "model"]),
    dg.AssetKey(["cd", "evaluation"]),
    dg.AssetKey(["cd", "registered_model"]),
    dg.AssetKey(["cd", "change_map"]),
    dg.AssetKey(["cd", "sweep"]),
    dg.AssetKey(["nvs", "scene"]),
    dg.AssetKey(["nvs", "splats"]),
    dg.AssetKey(["nvs", "registered_splats"]),
    dg.AssetKey(["nvs", "render"]),
}


def _asset_keys(defs: dg.Definitions) -> set[dg.AssetKey]:
    return set(defs.resolve_all_asset_keys())


def test_embedded_definitions_load(tmp_path: Path) -> None:
    defs = build_defs(Settings.from_env({}, cwd=tmp_path))
    dg.Definitions.validate_loadable(defs)
    assert _asset_keys(defs) == EXPECTED_ASSETS
    assert defs.resources is not None
    store = defs.resources["scene_store"]
    assert isinstance(store, EmbeddedSceneStore)
    assert store.root == str(tmp_path / ".mlops" / "lakefs")
    mlflow = defs.resources["mlflow"]
    assert isinstance(mlflow, MLflowResource)
    assert mlflow.tracking_uri == f"sqlite:///{tmp_path / '.mlops' / 'mlflow.db'}"
    assert mlflow.artifact_root == str(tmp_path / ".mlops" / "mlartifacts")
    outputs = defs.resources["output_store"]
    assert isinstance(outputs, LocalOutputStoreResource)
    assert outputs.root == str(tmp_path / ".mlops" / "outputs")


def test_production_settings_switch_mlflow_and_outputs_by_configuration(tmp_path: Path) -> None:
    env = {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLOPS_OUTPUT_BUCKET": "tiles",
        "MLOPS_OUTPUT_PREFIX": "prod",
        "AWS_ENDPOINT_URL": "http://minio:9000",
    }
    defs = build_defs(Settings.from_env(env, cwd=tmp_path))
    dg.Definitions.validate_loadable(defs)
    assert defs.resources is not None
    mlflow = defs.resources["mlflow"]
    assert isinstance(mlflow, MLflowResource)
    # The URI may hold credentials: it stays an environment-variable reference.
    assert isinstance(mlflow.tracking_uri, dg.EnvVar)
    assert mlflow.tracking_uri.env_var_name == "MLFLOW_TRACKING_URI"
    outputs = defs.resources["output_store"]
    assert isinstance(outputs, S3OutputStoreResource)
    assert (outputs.bucket, outputs.prefix) == ("tiles", "prod")
    assert outputs.endpoint_url == "http://minio:9000"


def test_lakefs_definitions_take_credentials_from_env_vars(tmp_path: Path) -> None:
    env = {"LAKEFS_ENDPOINT": "http://lakefs:8000"}
    defs = build_defs(Settings.from_env(env, cwd=tmp_path))
    dg.Definitions.validate_loadable(defs)
    assert defs.resources is not None
    store = defs.resources["scene_store"]
    assert isinstance(store, LakeFSSceneStore)
    # Credentials stay environment-variable references until a run resolves them.
    assert isinstance(store.secret_access_key, dg.EnvVar)
    assert store.secret_access_key.env_var_name == "LAKEFS_SECRET_ACCESS_KEY"


REPO = Path(__file__).parents[1]


def _python(code: str, env: dict[str, str]) -> str:
    # From the repository root: `-c` puts it first on sys.path, so this checkout is what loads.
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=REPO
    ).stdout.strip()


def test_importing_the_package_reads_nothing_and_loads_no_dagster(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = _python(
        "import sys, mlops_assets, mlops_assets.core.store.embedded, mlops_assets.core.scenes.cd;"
        "print('dagster' in sys.modules)",
        env,
    )
    assert out == "False"


def test_the_code_location_loads_lazily_from_the_package(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MLOPS_HOME": str(tmp_path / "h")}
    code = (
        "import inspect, mlops_assets, dagster as dg;"
        "members = dict(inspect.getmembers(mlops_assets));"
        "print(type(members['defs']).__name__)"
    )
    assert _python(code, env) == "LazyDefinitions"
    assert not (tmp_path / "h").exists()  # loading created no state


#: Modules that cost seconds and hundreds of MB each; only a step that needs them imports them.
HEAVY = (
    "torch",
    "torchgeo",
    "torchvision",
    "mlflow",
    "gsplat",
    "timm",
    "segmentation_models_pytorch",
    "optuna",
)


def test_loading_the_code_location_leaves_the_ml_stack_out(tmp_path: Path) -> None:
    # What `dagster dev`, every `dagster` CLI call and every run's process pay before any step:
    # the definitions built and resolved (jobs, sensors, schedules) as Dagster resolves them.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MLOPS_HOME": str(tmp_path / "h")}
    code = (
        "import sys, dagster as dg;"
        "from mlops_assets.definitions import build_defs;"
        "from mlops_assets.settings import Settings;"
        "defs = build_defs(Settings.from_env());"
        "dg.Definitions.validate_loadable(defs);"
        "repo = defs.get_repository_def();"
        "repo.get_all_jobs(); repo.sensor_defs; repo.schedule_defs;"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert _python(code, env) == "[]"


@pytest.mark.parametrize("path", ["mlops_assets/core"])
def test_pure_core_never_imports_dagster(path: str) -> None:
    root = Path(__file__).parents[1] / path
    offenders = [
        str(p)
        for p in root.rglob("*.py")
        if any(
            line.strip().startswith(("import dagster", "from dagster"))
            for line in p.read_text().splitlines()
        )
    ]
    assert offenders == []


def test_automation_is_on_with_the_configured_interval(tmp_path: Path) -> None:
    settings = Settings.from_env({"MLOPS_SENSOR_INTERVAL_S": "40"}, cwd=tmp_path)
    defs = build_defs(settings)
    sensors = {s.name: s for s in defs.sensors or []}
    assert set(sensors) == {
        "lakefs_commit_sensor",
        "mlflow_alias_sensor",
        "cd_quality_retrain_sensor",
    }
    for sensor in sensors.values():  # `make dev` reacts to commits without a click in the UI
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        # reacting within 40 s means ticking 5 s (daemon loop) + 3 s (evaluation) earlier
        assert sensor.minimum_interval_seconds == 32
    ingest = defs.resolve_job_def("ingest_scene")
    assert list(ingest.graph.node_names()) == ["write_audit_publish"]
    refresh = defs.resolve_job_def("cd_scene_refresh")
    f1 = dg.AssetCheckKey(dg.AssetKey(["cd", "change_map"]), "f1_against_label")
    assert f1 in refresh.asset_layer.asset_graph.asset_check_keys
    assert (
        f1 in defs.resolve_job_def("cd_change_map_refresh").asset_layer.asset_graph.asset_check_keys
    )


def test_a_changed_nvs_scene_refreshes_its_whole_chain(tmp_path: Path) -> None:
    defs = build_defs(Settings.from_env({}, cwd=tmp_path))
    job = defs.resolve_job_def("nvs_scene_refresh")
    assert set(job.asset_layer.asset_graph.get_all_asset_keys()) == {
        key for key in EXPECTED_ASSETS if key.path[0] == "nvs"
    }


def test_the_commit_sensors_batch_size_is_configuration(tmp_path: Path) -> None:
    from mlops_assets.settings import SettingsError

    assert Settings.from_env({}, cwd=tmp_path).sensor_batch_over == 20
    assert (
        Settings.from_env({"MLOPS_SENSOR_BATCH_SCENES": "5"}, cwd=tmp_path).sensor_batch_over == 5
    )
    with pytest.raises(SettingsError, match=r"MLOPS_SENSOR_BATCH_SCENES='0': .* scenes >= 1"):
        Settings.from_env({"MLOPS_SENSOR_BATCH_SCENES": "0"}, cwd=tmp_path)


def test_sweeps_use_a_journal_file_or_the_database_variable(tmp_path: Path) -> None:
    defs = build_defs(Settings.from_env({}, cwd=tmp_path))
    assert defs.resources is not None
    storage = defs.resources["optuna_storage"]
    assert isinstance(storage, OptunaStorageResource)
    assert storage.storage == str(tmp_path / ".mlops" / "optuna" / "journal.log")
    job = defs.resolve_job_def("cd_sweep")
    assert set(job.asset_layer.asset_graph.get_all_asset_keys()) >= {dg.AssetKey(["cd", "sweep"])}
    assert job.asset_layer.executable_asset_keys == {dg.AssetKey(["cd", "sweep"])}

    url = "postgresql+psycopg2://optuna:s3cret@postgres:5432/optuna"
    production = build_defs(Settings.from_env({"MLOPS_OPTUNA_STORAGE": url}, cwd=tmp_path))
    assert production.resources is not None
    spec = production.resources["optuna_storage"]
    assert isinstance(spec, OptunaStorageResource)
    # The password stays an EnvVar: read when a step runs, never in the definitions' config.
    assert "s3cret" not in repr(spec.model_dump()) and "MLOPS_OPTUNA_STORAGE" in repr(spec)


#: The steps that put tensors on a GPU where there is one (training, evaluation, inference, the
#: sweep's trials, rendering): derived from the code below, and spelled out so that a change shows.
GPU_STEPS = {"cd__model", "cd__evaluation", "cd__change_map", "cd__sweep"} | {
    "nvs__splats",
    "nvs__render",
}

Imports = dict[str, tuple[str, str | None]]  # name -> (module, attribute; None: the module itself)


def _imports(body: list[ast.stmt]) -> Imports:
    found: Imports = {}
    for node in body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0],
                    None,
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = node.module.startswith("mlops_assets") and _module(sub) is not None
                found[alias.asname or alias.name] = (
                    (sub, None) if is_module else (node.module, alias.name)
                )
    return found


@functools.cache
def _module(name: str) -> tuple[dict[str, ast.AST], Imports] | None:
    """A project module's top-level functions and classes, and its imports; parsed, not imported."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    tree = ast.parse(Path(spec.origin).read_text())
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    defs: dict[str, ast.AST] = {n.name: n for n in tree.body if isinstance(n, kinds)}
    return defs, _imports(tree.body)


def _touches_cuda(module: str, name: str, seen: set[tuple[str, str]]) -> bool:
    """Whether ``module.name``, or project code it refers to (statically), uses ``torch.cuda``.

    Follows every name a function refers to (called or passed on, imported at the top or inside
    the function) into this project's modules; a GPU is used through ``torch.cuda`` (device
    selection, `mlops_assets.core.compute.select_device`, or the renderer's own choice).
    """
    parsed = _module(module) if module.startswith("mlops_assets") else None
    if parsed is None or (module, name) in seen:
        return False
    seen.add((module, name))
    defs, imports = parsed
    if name not in defs:  # re-exported from another module
        module_of, attribute = imports.get(name, ("", None))
        return attribute is not None and _touches_cuda(module_of, attribute, seen)
    refers = dict(imports)
    for node in ast.walk(defs[name]):
        if isinstance(node, ast.Import | ast.ImportFrom):
            refers.update(_imports([node]))
    for node in ast.walk(defs[name]):
        targets: list[tuple[str, str]] = []
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "torch" and node.attr == "cuda":
                return True
            module_of, attribute = refers.get(node.value.id, ("", ""))
            if attribute is None:  # module.function
                targets.append((module_of, node.attr))
        elif isinstance(node, ast.Name):
            module_of, attribute = refers.get(node.id, ("", None))
            targets.append((module, node.id) if node.id in defs else (module_of, attribute or ""))
        if any(_touches_cuda(m, n, seen) for m, n in targets if n):
            return True
    return False


def test_gpu_steps_ask_kubernetes_for_a_gpu_and_external_steps_retry(tmp_path: Path) -> None:
    defs = build_defs(Settings.from_env({}, cwd=tmp_path))
    pooled: set[str] = set()
    using_gpu: set[str] = set()
    for asset in defs.resolve_all_asset_specs():
        node = defs.resolve_assets_def(asset.key).node_def
        assert isinstance(node, dg.OpDefinition)
        function: Any = getattr(node.compute_fn, "decorated_fn", None)  # the asset's body
        if _touches_cuda(function.__module__, function.__name__, set()):
            using_gpu.add(node.name)
        if node.pool == "gpu":
            pooled.add(node.name)
            assert "dagster-k8s/config" in node.tags, node.name
        if node.name != "cd__sweep":  # a retried sweep would add its trials twice
            assert node.retry_policy is not None, node.name
    # A step that can put work on the GPU holds a `gpu` pool slot, and only those do.
    assert using_gpu == GPU_STEPS
    assert pooled == GPU_STEPS
