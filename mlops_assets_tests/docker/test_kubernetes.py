"""docker/kubernetes/: the Helm values make a valid K8sRunLauncher, and a GPU step's pod gets a GPU.

No cluster is needed: the run launcher's config (what the official chart renders from the values)
goes through Dagster's own config schema and constructor, and the Kubernetes Job of a step tagged
by `mlops_assets.scale.gpu_op_tags` is built by dagster-k8s's own helpers, exactly as its
``k8s_job_executor`` builds it, then asserted: GPU limit, node selector, toleration, image, and
the environment from Kubernetes Secrets (never a literal secret).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from mlops_assets.scale import GPU_RESOURCE, build_executor, gpu_op_tags
from mlops_assets.settings import Settings, SettingsError
from mlops_assets_tests.docker.test_compose import code_variables

dagster_k8s = pytest.importorskip("dagster_k8s", reason="the [scale] extra is not installed")
from dagster_k8s import K8sRunLauncher  # noqa: E402
from dagster_k8s.container_context import K8sContainerContext  # noqa: E402
from dagster_k8s.job import (  # noqa: E402
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

KUBE = Path(__file__).parents[2] / "docker" / "kubernetes"
RELEASE = "mlops"


def values() -> dict[str, Any]:
    return yaml.safe_load((KUBE / "values.yaml").read_text())


def secrets_example() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((KUBE / "secrets.example.yaml").read_text()))


def run_launcher_config(chart: dict[str, Any]) -> dict[str, Any]:
    """The ``run_launcher.config`` the chart renders into the instance ConfigMap."""
    launcher = chart["runLauncher"]["config"]["k8sRunLauncher"]
    return {
        "dagster_home": "/opt/dagster/dagster_home",
        "instance_config_map": f"{RELEASE}-dagster-instance",
        "postgres_password_secret": chart["global"]["postgresqlSecretName"],
        "service_account_name": f"{RELEASE}-dagster",
        "job_namespace": RELEASE,
        "load_incluster_config": launcher["loadInclusterConfig"],
        "image_pull_policy": launcher["imagePullPolicy"],
        "env_config_maps": [f"{RELEASE}-dagster-pipeline-env"]
        + [c["name"] for c in launcher["envConfigMaps"]],
        "env_secrets": [s["name"] for s in launcher["envSecrets"]],
        "resources": launcher["resources"],
        "fail_pod_on_run_failure": launcher["failPodOnRunFailure"],
    }


def pod_of(job: Any) -> Any:
    """The pod spec of a ``V1Job`` (kubernetes' models are untyped)."""
    assert job.spec is not None and job.spec.template.spec is not None
    return job.spec.template.spec


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[K8sRunLauncher]:
    """The run launcher an instance builds from the values, through Dagster's config schema (a
    kubeconfig file stands in for the cluster)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    config = {
        **run_launcher_config(values()),
        "load_incluster_config": False,
        "kubeconfig_file": str(kubeconfig),
    }
    launcher = {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config}
    with dg.instance_for_test(overrides={"run_launcher": launcher}) as instance:
        built = instance.run_launcher
        assert isinstance(built, K8sRunLauncher)
        yield built


def test_the_values_make_a_valid_k8s_run_launcher(launcher: K8sRunLauncher) -> None:
    assert launcher.env_secrets == ["mlops-lakefs", "mlops-s3", "mlops-dagster-postgresql-env"]
    assert launcher.job_namespace == RELEASE
    chart = values()
    # A user-code deployment of the project image, pinned, whose config runs inherit.
    (deployment,) = chart["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "mlops_assets"]
    assert deployment["image"]["tag"] not in ("", "latest")
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert {"name": "MLOPS_EXECUTOR", "value": "k8s"} in deployment["env"]
    # Queued runs with a concurrency bound, and the gpu pool limited.
    coordinator = chart["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator"
    assert coordinator["config"]["queuedRunCoordinator"]["maxConcurrentRuns"] >= 1
    assert chart["concurrency"]["enabled"] is True
    assert chart["concurrency"]["pools"]["defaultLimit"] >= 1
    assert chart["computeLogManager"]["type"] == "S3ComputeLogManager"


def test_every_secret_and_config_map_the_values_name_exists_and_covers_the_code() -> None:
    chart = values()
    objects = {(o["kind"], o["metadata"]["name"]): o for o in secrets_example()}
    (deployment,) = chart["dagster-user-deployments"]["deployments"]
    secret_names = {s["name"] for s in deployment["envSecrets"]}
    secret_names |= {
        s["name"] for s in chart["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"]
    }
    secret_names.add(chart["global"]["postgresqlSecretName"])
    config_maps = {c["name"] for c in deployment["envConfigMaps"]}
    assert {("Secret", n) for n in secret_names} | {("ConfigMap", n) for n in config_maps} <= set(
        objects
    )
    # Every variable the code and the instance read reaches the user-code and run pods.
    provided = {e["name"] for e in deployment["env"]}
    for (kind, name), obj in objects.items():
        if (kind == "Secret" and name in secret_names) or (
            kind == "ConfigMap" and name in config_maps
        ):
            provided |= set(obj.get("stringData", obj.get("data", {})))
    # DAGSTER_HOME is the chart's own; the rest have defaults that fit a pod.
    optional = {
        "DAGSTER_HOME",
        "MLOPS_MAIN_BRANCH",
        "MLOPS_OUTPUTS_BRANCH",
        "MLOPS_GIT_SHA",
        "MLOPS_SENSOR_INTERVAL_S",
        "MLOPS_SENSOR_BATCH_SCENES",
        "MLOPS_MAX_PIXELS",
        "MLOPS_RETRAIN_CRON",
        "MLOPS_DEBUG",
        "MLOPS_OUTPUT_PREFIX",
        "MLOPS_RUN_IMAGE",
        "AWS_ENDPOINT_URL",
    }
    assert sorted(code_variables() - provided - optional) == []
    # No secret value sits in the Helm values.
    text = (KUBE / "values.yaml").read_text()
    assert "change-me" not in text and "postgresqlPassword" not in text


def test_a_gpu_step_gets_a_gpu_pod_with_secrets_from_kubernetes(launcher: K8sRunLauncher) -> None:
    image = "registry.example.com/mlops-assets-cuda:0.1.0"
    # What the user-code deployment adds to every run (includeConfigInLaunchedRuns).
    (deployment,) = values()["dagster-user-deployments"]["deployments"]
    location = K8sContainerContext.create_from_config(
        {
            "k8s": {
                "env_secrets": [s["name"] for s in deployment["envSecrets"]],
                "env_config_maps": [c["name"] for c in deployment["envConfigMaps"]],
            }
        }
    )
    run_context = K8sContainerContext(
        env_config_maps=launcher.env_config_maps,
        env_secrets=launcher.env_secrets,
        resources=launcher.resources,
    ).merge(location)
    # Op tags reach the step handler JSON-encoded, as Dagster stores them.
    tags = {k: json.dumps(v) for k, v in gpu_op_tags().items()}
    step_context = run_context.merge(
        K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags))
    )
    job_config = step_context.get_k8s_job_config(image, launcher)
    job = construct_dagster_k8s_job(
        job_config=job_config,
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-abc123",
        pod_name="dagster-step-abc123",
        component="step_worker",
        user_defined_k8s_config=step_context.run_k8s_config,
        labels={"dagster/op": "cd__model"},
    )
    pod = pod_of(job)
    (container,) = pod.containers
    assert container.image == image
    assert container.resources.limits[GPU_RESOURCE] == "1"
    assert container.resources.requests[GPU_RESOURCE] == "1"
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [
        (GPU_RESOURCE, "Exists", "NoSchedule")
    ]
    from_secrets = {e.secret_ref.name for e in container.env_from if e.secret_ref}
    assert {"mlops-lakefs", "mlops-s3", "mlops-dagster-postgresql-env"} <= from_secrets
    assert {e.config_map_ref.name for e in container.env_from if e.config_map_ref} >= {
        "mlops-config"
    }
    literal = {e.name: e.value for e in container.env or [] if e.value is not None}
    assert not [n for n in literal if "SECRET" in n or "PASSWORD" in n or n.endswith("_KEY_ID")]
    # A step without the tag gets no GPU.
    plain = run_context.merge(K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig()))
    cpu_job = construct_dagster_k8s_job(
        job_config=plain.get_k8s_job_config(image, launcher),
        args=["dagster"],
        job_name="dagster-step-def456",
        user_defined_k8s_config=plain.run_k8s_config,
    )
    (cpu_container,) = pod_of(cpu_job).containers
    assert GPU_RESOURCE not in (cpu_container.resources.limits or {})
    assert pod_of(cpu_job).node_selector is None


def test_the_executor_setting() -> None:
    assert build_executor("default") is None
    executor = build_executor("k8s")
    assert isinstance(executor, dg.ExecutorDefinition) and executor.name == "k8s"
    assert Settings.from_env({"MLOPS_EXECUTOR": "k8s"}).executor == "k8s"
    with pytest.raises(SettingsError, match=r"MLOPS_EXECUTOR='kubernetes': expected"):
        Settings.from_env({"MLOPS_EXECUTOR": "kubernetes"})
