"""Scale-out: what a GPU step asks Kubernetes for, and the executor the code location runs with.

On one machine (the embedded default, docker/compose.yaml) every step of a run runs in the run's
own process tree and the ``gpu`` pool keeps GPU steps one at a time. On Kubernetes
(docker/kubernetes/, ``MLOPS_EXECUTOR=k8s``) dagster-k8s's ``k8s_job_executor`` gives each step a
pod of its own, and a step tagged with `gpu_op_tags` gets a GPU there: ``nvidia.com/gpu: 1``, a GPU
node (the label NVIDIA's GPU operator sets) and the toleration GPU node pools carry. Other
executors ignore the tag. Nothing here reads the environment.
"""

from __future__ import annotations

from typing import Any, Literal

import dagster as dg

ExecutorKind = Literal["default", "k8s"]
EXECUTOR_KINDS: tuple[ExecutorKind, ...] = ("default", "k8s")

#: The concurrency pool of the steps that want the GPU (training, rendering).
GPU_POOL = "gpu"
#: The tag dagster-k8s reads per step (`dagster_k8s.job.get_user_defined_k8s_config`).
K8S_CONFIG_TAG = "dagster-k8s/config"

GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATIONS = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]


def gpu_k8s_config(gpus: int = 1, memory: str = "16Gi") -> dict[str, Any]:
    """The ``dagster-k8s/config`` of a GPU step: the GPU limit, a GPU node, its toleration."""
    if gpus < 1:
        raise ValueError(f"gpus={gpus}: a GPU step needs at least one GPU")
    return {
        "container_config": {
            "resources": {
                "requests": {GPU_RESOURCE: str(gpus), "cpu": "2", "memory": memory},
                "limits": {GPU_RESOURCE: str(gpus), "memory": memory},
            }
        },
        "pod_spec_config": {
            "node_selector": dict(GPU_NODE_SELECTOR),
            "tolerations": [dict(t) for t in GPU_TOLERATIONS],
        },
    }


def gpu_op_tags() -> dict[str, Any]:
    """Op tags for a GPU step (beside ``pool=GPU_POOL``)."""
    return {K8S_CONFIG_TAG: gpu_k8s_config()}


#: The pools the deployments configure (dagster.yaml, dagster.scale.yaml, Helm values).
KNOWN_POOLS = frozenset({GPU_POOL})


def check_pools(defs: dg.Definitions) -> None:
    """Refuse a step in a pool no deployment limits (Dagster would silently use the default).

    Raises ``ValueError`` naming the step and the pool, when the code location is loaded, so no
    run is ever started with it.
    """
    for asset in defs.resolve_asset_graph().assets_defs:
        if not asset.is_executable:
            continue
        pool = asset.op.pool
        if pool is not None and pool not in KNOWN_POOLS:
            known = ", ".join(sorted(KNOWN_POOLS))
            raise ValueError(f"step {asset.op.name!r}: unknown pool {pool!r} (known: {known})")


def build_executor(kind: ExecutorKind) -> dg.ExecutorDefinition | None:
    """The executor for ``MLOPS_EXECUTOR``: None keeps Dagster's default (multiprocess)."""
    if kind == "default":
        return None
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as error:  # the optional [scale] extra
        raise ImportError(
            "MLOPS_EXECUTOR=k8s needs dagster-k8s: install the scale extra "
            "(pip install 'mlops-assets[scale]')"
        ) from error
    return k8s_job_executor
