"""The CLI and the Dagster resource open the same store from the one `Settings.store_spec`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.core.store.factory import StoreSpec
from mlops_assets.resources.scene_store import (
    EmbeddedSceneStore,
    LakeFSSceneStore,
    scene_store_resource,
)
from mlops_assets.settings import Settings

# Every store setting away from its default, so a setting that is dropped anywhere shows.
LAKEFS_ENV = {
    "MLOPS_REPOSITORY": "imagery",
    "LAKEFS_ENDPOINT": "http://lakefs.test:8000",
    "LAKEFS_ACCESS_KEY_ID": "AKIA-test",
    "LAKEFS_SECRET_ACCESS_KEY": "very-secret",
    "LAKEFS_STORAGE_NAMESPACE": "s3://bucket/imagery",
    "LAKEFS_RASTER_ACCESS": "s3_gateway",
}
SPEC_FIELDS = {f.name for f in dataclasses.fields(StoreSpec)}


def test_the_cli_spec_fills_in_every_store_setting(tmp_path: Path) -> None:
    spec = Settings.from_env(LAKEFS_ENV, cwd=tmp_path).store_spec(LAKEFS_ENV)
    left_at_default = [
        f.name
        for f in dataclasses.fields(StoreSpec)
        if f.default is not dataclasses.MISSING and getattr(spec, f.name) == f.default
    ]
    assert left_at_default == []


def test_the_two_resources_carry_every_spec_field_between_them() -> None:
    embedded = set(EmbeddedSceneStore.spec_fields().values())
    lakefs = set(LakeFSSceneStore.spec_fields().values())
    assert embedded == {"repository", "embedded_root"}
    assert lakefs == SPEC_FIELDS - {"embedded_root"}


def test_the_lakefs_resource_opens_the_spec_the_cli_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in LAKEFS_ENV.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env(LAKEFS_ENV, cwd=tmp_path)
    resource = scene_store_resource(settings)
    assert isinstance(resource, LakeFSSceneStore)
    # Until a run resolves them, the endpoint and the credentials are variable names only.
    assert "very-secret" not in repr(resource) and "AKIA-test" not in repr(resource)
    assert isinstance(resource.secret_access_key, dg.EnvVar)
    assert isinstance(resource.endpoint, dg.EnvVar)
    with dg.build_resources({"scene_store": resource}) as built:
        resolved = built.scene_store
    assert isinstance(resolved, LakeFSSceneStore)
    assert resolved.secret_access_key == "very-secret"
    assert "very-secret" not in repr(resolved) and "AKIA-test" not in repr(resolved)
    cli_spec = settings.store_spec(LAKEFS_ENV)
    assert resolved.spec() == dataclasses.replace(cli_spec, embedded_root=None)


def test_the_embedded_resource_opens_the_spec_the_cli_opens(tmp_path: Path) -> None:
    settings = Settings.from_env({"MLOPS_REPOSITORY": "imagery"}, cwd=tmp_path)
    resource = scene_store_resource(settings)
    assert isinstance(resource, EmbeddedSceneStore)
    cli_spec = settings.store_spec({})
    assert resource.spec() == StoreSpec(cli_spec.repository, embedded_root=cli_spec.embedded_root)
    assert resource.get_store().repository == "imagery"
