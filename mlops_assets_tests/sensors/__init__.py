"""Helpers for the sensor tests: tiny scenes on the embedded store, ticks, partition requests.

The sensors only look at paths, so a scene here is a few small objects laid out as the real
store lays scenes out (``cd/<id>/pre.tif`` ..., ``nvs/<id>/images/...``).
"""

from __future__ import annotations

import io
import socket
from collections.abc import Mapping
from typing import Any

import dagster as dg

from mlops_assets.core.store.embedded import EmbeddedStore

CD_FILES = ("pre.tif", "post.tif", "label.tif")
NVS_FILES = ("images/a.png", "sparse/0/cameras.txt")


def put_scene(
    store: EmbeddedStore, kind: str, scene: str, tag: str = "", branch: str = "main"
) -> None:
    """Stage a tiny scene (the bytes name the scene, so a new ``tag`` changes every file)."""
    for name in CD_FILES if kind == "cd" else NVS_FILES:
        store.put(branch, f"{kind}/{scene}/{name}", io.BytesIO(f"{scene}{name}{tag}".encode()))


def drop_scene(store: EmbeddedStore, kind: str, scene: str, branch: str = "main") -> None:
    """Stage the removal of every file of a scene."""
    for stat in list(store.list(branch, f"{kind}/{scene}/")):
        store.delete(branch, stat.path)


def tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    resources: Mapping[str, Any],
    cursor: str | None,
) -> dg.SensorResult | dg.SkipReason:
    """One evaluation of ``sensor`` with ``cursor``, as the daemon would run it."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = sensor(context)
    assert isinstance(result, dg.SensorResult | dg.SkipReason), result
    return result


def apply_partitions(result: dg.SensorResult, instance: dg.DagsterInstance) -> None:
    """Apply a result's partition requests to ``instance``, as the daemon does."""
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


def partitions_requested(result: dg.SensorResult) -> dict[str, tuple[str, list[str]]]:
    """``{partitions name: (add|delete, keys)}`` of a result."""
    out: dict[str, tuple[str, list[str]]] = {}
    for request in result.dynamic_partitions_requests or []:
        verb = "add" if isinstance(request, dg.AddDynamicPartitionsRequest) else "delete"
        out[request.partitions_def_name] = (verb, list(request.partition_keys))
    return out


def free_port() -> int:
    """A TCP port nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dg.op
def _noop() -> None:
    """Does nothing: the runs below only need to exist, with a job name, tags and a status."""


def record_run(
    instance: dg.DagsterInstance,
    job_name: str,
    tags: Mapping[str, str],
    status: dg.DagsterRunStatus,
) -> Any:
    """A run of a job called ``job_name`` in ``instance``, as if a sensor had launched it."""

    @dg.job(name=job_name)
    def stand_in() -> None:
        _noop()

    return instance.create_run_for_job(stand_in, status=status, tags=dict(tags))
