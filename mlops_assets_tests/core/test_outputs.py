"""Output stores: immutable artefact directories published with their marker last."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from mlops_assets.core.outputs import MARKER, LocalOutputStore, S3OutputStore

KEY = "cd/tiles/farm/c0ffee0123456789-1cc3ed9bb427"


def artefact(directory: Path, version: str = "1") -> Path:
    """A small tile-set-like directory: nested files and the marker."""
    (directory / "tiles").mkdir(parents=True)
    (directory / "tiles" / "000000.npz").write_bytes(b"tile-0-" + version.encode())
    (directory / "tiles" / "000001.npz").write_bytes(b"tile-1-" + version.encode() * 1000)
    (directory / "preview.png").write_bytes(b"png")
    (directory / MARKER).write_text(f'{{"version": "{version}"}}')
    return directory


def contents(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# LocalOutputStore ----------------------------------------------------------------------------


def test_local_publish_and_fetch(tmp_path: Path) -> None:
    store = LocalOutputStore(tmp_path / "outputs")
    source = artefact(tmp_path / "src")
    assert not store.is_published(KEY)
    store.publish(source, KEY)
    target = tmp_path / "outputs" / KEY
    assert store.is_published(KEY)
    assert store.uri(KEY) == target.resolve().as_uri()
    assert store.fetch(KEY, tmp_path / "cache") == target.resolve()  # nothing is copied
    assert contents(target) == contents(source)
    assert not (tmp_path / "cache").exists()
    # Nothing but the artefact is left next to it (the staging copy was renamed into place).
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_local_publish_is_idempotent(tmp_path: Path) -> None:
    store = LocalOutputStore(tmp_path / "outputs")
    store.publish(artefact(tmp_path / "v1"), KEY)
    before = contents(tmp_path / "outputs" / KEY)
    store.publish(artefact(tmp_path / "v2", version="2"), KEY)  # same key: a no-op
    assert contents(tmp_path / "outputs" / KEY) == before
    assert len(list((tmp_path / "outputs" / KEY).parent.iterdir())) == 1


def test_local_refuses_an_incomplete_artefact(tmp_path: Path) -> None:
    store = LocalOutputStore(tmp_path / "outputs")
    source = artefact(tmp_path / "src")
    (source / MARKER).unlink()
    with pytest.raises(ValueError, match=rf"{source} has no {MARKER}: refusing to publish"):
        store.publish(source, KEY)
    assert not store.is_published(KEY) and not (tmp_path / "outputs").exists()
    with pytest.raises(FileNotFoundError, match=rf"no published artefact at file://.*{KEY}"):
        store.fetch(KEY, tmp_path / "cache")


@pytest.mark.parametrize("key", ["../escape", "cd/../../escape", "", "/etc/passwd"])
def test_local_keys_stay_under_the_root(tmp_path: Path, key: str) -> None:
    store = LocalOutputStore(tmp_path / "outputs")
    with pytest.raises(ValueError, match="escapes"):
        store.publish(artefact(tmp_path / "src"), key)
    with pytest.raises(ValueError, match="escapes"):
        store.is_published(key)
    assert not (tmp_path / "escape").exists()


@pytest.fixture
def failing_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """``shutil.copytree`` fails on one tile, after copying the others (a full disk)."""
    copytree, copy2 = shutil.copytree, shutil.copy2

    def copy_file(src: str, dst: str) -> object:
        if src.endswith("000001.npz"):
            raise OSError(28, "No space left on device")
        return copy2(src, dst)

    def failing(src: Path, dst: Path, *args: Any, **kwargs: Any) -> Path:
        if args:  # copytree's own recursion passes its arguments positionally
            return copytree(src, dst, *args, **kwargs)
        return copytree(src, dst, copy_function=copy_file, **kwargs)

    monkeypatch.setattr(shutil, "copytree", failing)


@pytest.mark.usefixtures("failing_copy")
def test_local_publish_is_atomic_when_the_copy_fails(tmp_path: Path) -> None:
    store = LocalOutputStore(tmp_path / "outputs")
    with pytest.raises(shutil.Error, match="No space left on device"):
        store.publish(artefact(tmp_path / "src"), KEY)
    assert not store.is_published(KEY)
    assert not (tmp_path / "outputs" / KEY).exists()  # never a half-published directory


@pytest.mark.usefixtures("failing_copy")
def test_local_publish_leaves_nothing_behind_when_the_copy_fails(tmp_path: Path) -> None:
    store = LocalOutputStore(tmp_path / "outputs")
    with pytest.raises(shutil.Error):
        store.publish(artefact(tmp_path / "src"), KEY)
    parent = (tmp_path / "outputs" / KEY).parent
    assert [p.name for p in parent.iterdir()] == []


def test_local_publish_loses_a_race_gracefully(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another publisher renames the same key into place between our copy and our rename."""
    store = LocalOutputStore(tmp_path / "outputs")
    winner = artefact(tmp_path / "winner", version="winner")
    copytree = shutil.copytree

    def copy_then_lose(src: Path, dst: Path, *args: Any, **kwargs: Any) -> Path:
        result = copytree(src, dst, *args, **kwargs)
        if not args:  # the outermost call: the staging copy is complete
            copytree(winner, tmp_path / "outputs" / KEY)
        return result

    monkeypatch.setattr(shutil, "copytree", copy_then_lose)
    store.publish(artefact(tmp_path / "loser", version="loser"), KEY)  # no error
    assert contents(tmp_path / "outputs" / KEY) == contents(winner)
    assert [p.name for p in (tmp_path / "outputs" / KEY).parent.iterdir()] == [Path(KEY).name]


# S3OutputStore against a real S3 API (moto's server) -----------------------------------------


@dataclass(frozen=True)
class Bucket:
    client: Any  # boto3 S3 client
    name: str


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A boto3 client on the moto server and a fresh bucket (dummy credentials)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = Bucket(client, f"outputs-{uuid.uuid4().hex[:12]}")
    client.create_bucket(Bucket=bucket.name)
    return bucket


class Recording:
    """A boto3 client that records what is uploaded and downloaded, and whether the key was
    published at each upload."""

    def __init__(self, client: Any, store: S3OutputStore | None = None, key: str = "") -> None:
        self.client = client
        self.exceptions = client.exceptions
        self.store = store
        self.key = key
        self.uploads: list[tuple[str, bool]] = []  # (object key, published before it)
        self.downloads: list[str] = []
        self.listings = 0

    def upload_file(self, filename: str, bucket: str, key: str) -> None:
        published = self.store.is_published(self.key) if self.store else False
        self.uploads.append((key, published))
        self.client.upload_file(filename, bucket, key)

    def download_file(self, bucket: str, key: str, filename: str) -> None:
        self.downloads.append(key)
        self.client.download_file(bucket, key, filename)

    def get_paginator(self, name: str) -> Any:
        self.listings += 1
        return self.client.get_paginator(name)

    def head_object(self, **kwargs: Any) -> Any:
        return self.client.head_object(**kwargs)


@pytest.mark.integration
def test_s3_marker_is_uploaded_last_and_publishes_the_key(s3: Bucket, tmp_path: Path) -> None:
    bucket = s3.name
    recording = Recording(s3.client)
    store = S3OutputStore(recording, bucket, prefix="/pipeline/")
    recording.store, recording.key = S3OutputStore(s3.client, bucket, "pipeline"), KEY
    assert store.uri(KEY) == f"s3://{bucket}/pipeline/{KEY}/"
    assert not store.is_published(KEY)
    store.publish(artefact(tmp_path / "src"), KEY)
    keys = [k for k, _ in recording.uploads]
    base = f"pipeline/{KEY}/"
    assert keys[-1] == base + MARKER
    assert sorted(keys) == sorted(base + name for name in contents(tmp_path / "src"))
    # Not published until the marker exists: every upload before it saw an unpublished key.
    assert [published for _, published in recording.uploads] == [False] * len(keys)
    assert store.is_published(KEY)
    listed = s3.client.list_objects_v2(Bucket=bucket, Prefix=base)["Contents"]
    assert len(listed) == len(keys)


@pytest.mark.integration
def test_s3_publish_is_idempotent_and_refuses_incomplete_artefacts(
    s3: Bucket, tmp_path: Path
) -> None:
    bucket = s3.name
    recording = Recording(s3.client)
    store = S3OutputStore(recording, bucket)
    incomplete = artefact(tmp_path / "incomplete")
    (incomplete / MARKER).unlink()
    with pytest.raises(ValueError, match=f"has no {MARKER}: refusing to publish"):
        store.publish(incomplete, KEY)
    assert recording.uploads == [] and "Contents" not in s3.client.list_objects_v2(Bucket=bucket)
    store.publish(artefact(tmp_path / "v1"), KEY)
    uploads = len(recording.uploads)
    store.publish(artefact(tmp_path / "v2", version="2"), KEY)
    assert len(recording.uploads) == uploads  # already published: nothing uploaded
    body = s3.client.get_object(Bucket=bucket, Key=f"{KEY}/{MARKER}")["Body"].read()
    assert body == b'{"version": "1"}'


@pytest.mark.integration
def test_s3_fetch_round_trips_and_reuses_its_cache(s3: Bucket, tmp_path: Path) -> None:
    bucket = s3.name
    source = artefact(tmp_path / "src")
    S3OutputStore(s3.client, bucket, "p").publish(source, KEY)
    # A key that shares a prefix with ours must not leak into the fetched directory.
    other = artefact(tmp_path / "other", "9")
    S3OutputStore(s3.client, bucket, "p").publish(other, KEY + "-other")
    recording = Recording(s3.client)
    store = S3OutputStore(recording, bucket, "p")
    fetched = store.fetch(KEY, tmp_path / "cache")
    assert fetched == tmp_path / "cache" / bucket / "p" / KEY
    assert contents(fetched) == contents(source)
    assert len(recording.downloads) == len(contents(source))
    assert [p.name for p in fetched.parent.iterdir()] == [fetched.name]  # no staging left
    again = store.fetch(KEY, tmp_path / "cache")
    assert again == fetched and len(recording.downloads) == 4 and recording.listings == 1
    with pytest.raises(FileNotFoundError, match=rf"no published artefact at s3://{bucket}/p/x/"):
        store.fetch("x", tmp_path / "cache")


@pytest.mark.integration
def test_s3_publishing_to_a_missing_bucket_fails_loudly(s3: Bucket, tmp_path: Path) -> None:
    store = S3OutputStore(s3.client, "no-such-bucket")
    assert not store.is_published(KEY)  # a missing bucket answers 404, like a missing key
    with pytest.raises(Exception, match=r"NoSuchBucket|does not exist"):
        store.publish(artefact(tmp_path / "src"), KEY)
