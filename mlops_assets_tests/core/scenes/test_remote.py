"""Scene folders in S3 (a real moto server): fetched whole, or refused with one clear line."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner

from mlops_assets.cli import main
from mlops_assets.core.scenes.layout import SceneError
from mlops_assets.core.scenes.remote import S3Folder, fetch_s3_folder, is_s3_source
from mlops_assets.core.store.embedded import EmbeddedStore


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any, demo_cd_dir: Path) -> str:
    """A bucket holding the demo CD scene under ``scenes/farm/``."""
    name = f"raw-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    for path in sorted(demo_cd_dir.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), name, f"scenes/farm/{path.relative_to(demo_cd_dir)}")
    s3.put_object(Bucket=name, Key="scenes/farm/")  # a console-made "folder" marker
    return name


def test_parse() -> None:
    assert S3Folder.parse("s3://b/a/b/") == S3Folder("b", "a/b/")
    assert S3Folder.parse("s3://b") == S3Folder("b", "")
    assert is_s3_source("s3://b/x") and not is_s3_source("/data/s3:/x")
    with pytest.raises(SceneError, match="expected s3://bucket/prefix/"):
        S3Folder.parse("s3:///nobucket")


def test_fetch_copies_the_folder(s3: Any, bucket: str, demo_cd_dir: Path, tmp_path: Path) -> None:
    fetched = fetch_s3_folder(s3, f"s3://{bucket}/scenes/farm", tmp_path / "farm")
    names = sorted(p.name for p in fetched.rglob("*") if p.is_file())
    assert names == sorted(p.name for p in demo_cd_dir.rglob("*") if p.is_file())
    assert (fetched / "pre.tif").read_bytes() == (demo_cd_dir / "pre.tif").read_bytes()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://{bucket}/scenes/nowhere/", "s3://{bucket}/scenes/nowhere/: no such folder"),
        ("s3://absent-bucket-x/scenes/", "s3://absent-bucket-x/scenes/: no such bucket"),
    ],
)
def test_a_source_that_does_not_exist_is_named(
    s3: Any, bucket: str, tmp_path: Path, url: str, message: str
) -> None:
    with pytest.raises(SceneError, match=message.format(bucket=bucket)):
        fetch_s3_folder(s3, url.format(bucket=bucket), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_bounds_and_escaping_keys_are_refused(s3: Any, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(SceneError, match="more than 1 objects"):
        fetch_s3_folder(s3, f"s3://{bucket}/scenes/farm/", tmp_path / "a", max_objects=1)
    s3.put_object(Bucket=bucket, Key="evil/../../etc/x", Body=b"x")
    with pytest.raises(SceneError, match="escapes the folder"):
        fetch_s3_folder(s3, f"s3://{bucket}/evil/", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_cli_ingests_an_s3_source(
    s3: Any, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    url = f"s3://{bucket}/scenes/farm/"
    result = CliRunner().invoke(main, ["ingest", "cd", url, "--scene", "farm"])
    assert result.exit_code == 0, result.output
    store = EmbeddedStore(tmp_path / "home" / "lakefs", "scenes")
    head = store.get_commit(store.resolve("main"))
    assert {"cd/farm/pre.tif", "cd/farm/post.tif"} <= {
        o.path for o in store.list("main", "cd/farm/")
    }
    assert store.get_commit(head.parents[-1]).metadata["source"] == url
    missing = CliRunner().invoke(main, ["ingest", "cd", f"s3://{bucket}/none/", "--scene", "x"])
    assert missing.exit_code != 0
    assert f"s3://{bucket}/none/: no such folder" in missing.output, missing.output
    assert len(missing.output.strip().splitlines()) == 1, missing.output


def test_a_download_that_fails_is_one_line(s3: Any, bucket: str, tmp_path: Path) -> None:
    class Denied:
        """The real client, but every object download is refused as S3 refuses it."""

        def __getattr__(self, name: str) -> Any:
            return getattr(s3, name)

        def download_file(self, bucket: str, key: str, filename: str) -> None:
            from botocore.exceptions import ClientError

            error = {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}
            raise ClientError(error, "GetObject")  # type: ignore[arg-type]

    with pytest.raises(
        SceneError, match=r"s3://.+/scenes/farm/\S+: cannot download \(AccessDenied\)"
    ):
        fetch_s3_folder(Denied(), f"s3://{bucket}/scenes/farm/", tmp_path / "x")  # type: ignore[arg-type]


def test_cli_a_bad_endpoint_is_one_line(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "not a url")
    result = CliRunner().invoke(
        main, ["ingest", "cd", f"s3://{bucket}/scenes/farm/", "--scene", "f"]
    )
    assert result.exit_code != 0
    assert "Traceback" not in result.output and "not a url" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
