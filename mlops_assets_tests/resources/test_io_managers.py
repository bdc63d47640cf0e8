"""JsonIOManager: the same JSON values on local disk and in S3 (a real moto server)."""

import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest

from mlops_assets.resources.io_managers import JsonIOManager
from mlops_assets.settings import Settings

scenes = dg.StaticPartitionsDefinition(["farm", "river"])


@dg.asset(partitions_def=scenes, io_manager_key="json_io_manager", key=["cd", "manifest"])
def manifest(context: dg.AssetExecutionContext) -> dict[str, Any]:
    return {"scene": context.partition_key, "tiles": len(context.partition_key)}


@dg.asset(io_manager_key="json_io_manager", key=["cd", "summary"])
def summary(manifest: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {scene: value["tiles"] for scene, value in sorted(manifest.items())}


def _s3(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"tiles-{uuid.uuid4().hex[:8]}"
    _s3(moto_endpoint).create_bucket(Bucket=bucket)
    return bucket


def _materialise(io: JsonIOManager) -> None:
    with dg.instance_for_test() as instance:
        for key in ("farm", "river"):
            assert dg.materialize(
                [manifest], partition_key=key, instance=instance, resources={"json_io_manager": io}
            ).success
        result = dg.materialize(
            [manifest, summary],
            selection=[summary],
            instance=instance,
            resources={"json_io_manager": io},
        )
        assert result.success
        assert result.output_for_node("cd__summary") == {"farm": 4, "river": 5}


def test_values_live_in_s3_under_the_prefix(
    s3_env: str, moto_endpoint: str, tmp_path: Path
) -> None:
    io = JsonIOManager(base_dir=f"s3://{s3_env}/runs/assets", endpoint_url=moto_endpoint)
    _materialise(io)
    client = _s3(moto_endpoint)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_env)["Contents"])
    assert keys == [
        "runs/assets/cd/manifest/farm.json",
        "runs/assets/cd/manifest/river.json",
        "runs/assets/cd/summary.json",
    ]
    body = client.get_object(Bucket=s3_env, Key="runs/assets/cd/summary.json")["Body"].read()
    assert json.loads(body) == {"farm": 4, "river": 5}
    assert not any(tmp_path.iterdir())  # nothing on local disk


def test_a_missing_s3_value_names_the_object(s3_env: str, moto_endpoint: str) -> None:
    io = JsonIOManager(base_dir=f"s3://{s3_env}/assets", endpoint_url=moto_endpoint)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [manifest, summary],
            selection=[summary],
            instance=instance,
            resources={"json_io_manager": io},
            raise_on_error=False,
        )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_failure_data.error is not None
    message = failure.step_failure_data.error.to_string()
    assert f"s3://{s3_env}/assets/cd/manifest/farm.json: no such object" in message


def test_local_values_are_the_same_files(tmp_path: Path) -> None:
    _materialise(JsonIOManager(base_dir=str(tmp_path / "assets")))
    summary_file = tmp_path / "assets" / "cd" / "summary.json"
    assert json.loads(summary_file.read_text()) == {"farm": 4, "river": 5}
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, None),
        ({"MLOPS_OUTPUT_BUCKET": "tiles"}, "s3://tiles/assets"),
        (
            {"MLOPS_OUTPUT_BUCKET": "tiles", "MLOPS_OUTPUT_PREFIX": "/prod/"},
            "s3://tiles/prod/assets",
        ),
    ],
)
def test_assets_url_follows_the_output_store(env: dict[str, str], url: str | None) -> None:
    settings = Settings.from_env({"MLOPS_HOME": "/data/mlops", **env})
    assert settings.assets_url == (url or "/data/mlops/assets")


@dataclasses.dataclass(frozen=True)
class Tally:
    scene: str
    tiles: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Tally":
        return cls(**data)


@dg.asset(io_manager_key="json_io_manager", key=["cd", "tally"])
def tally() -> Tally:
    return Tally("farm", 4)


@dg.asset(io_manager_key="json_io_manager", key=["cd", "report"])
def report(tally: Tally) -> str:
    return f"{tally.scene}: {tally.tiles}"  # an attribute, not a key


@dg.asset(io_manager_key="json_io_manager", key=["cd", "maybe"])
def maybe(tally: Tally | None) -> int:
    return -1 if tally is None else tally.tiles


@dg.asset(io_manager_key="json_io_manager", key=["cd", "raw"])
def raw(tally: dict[str, Any]) -> list[str]:
    return sorted(tally)


def test_a_record_is_stored_as_its_dict_and_read_back_as_its_annotation(tmp_path: Path) -> None:
    io = JsonIOManager(base_dir=str(tmp_path / "assets"))
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [tally, report, maybe, raw], instance=instance, resources={"json_io_manager": io}
        )
    assert result.success
    stored = json.loads((tmp_path / "assets" / "cd" / "tally.json").read_text())
    assert stored == {"scene": "farm", "tiles": 4}
    assert result.output_for_node("cd__report") == "farm: 4"
    assert result.output_for_node("cd__maybe") == 4
    assert result.output_for_node("cd__raw") == ["scene", "tiles"]  # a dict input stays a dict
