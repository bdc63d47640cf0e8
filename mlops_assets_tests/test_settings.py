from __future__ import annotations

from pathlib import Path

import pytest

from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.core.store.lakefs import LakeFSStore
from mlops_assets.settings import Settings, SettingsError


def test_defaults_need_no_environment(tmp_path: Path) -> None:
    settings = Settings.from_env({}, cwd=tmp_path)
    assert settings.mlops_home == tmp_path / ".mlops"
    assert settings.dagster_home == tmp_path / ".mlops" / "dagster"
    assert settings.store_kind == "embedded"
    assert isinstance(settings.open_store({}), EmbeddedStore)


def test_homes_are_honoured(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"MLOPS_HOME": "state", "DAGSTER_HOME": "/srv/dagster"}, cwd=tmp_path
    )
    assert settings.mlops_home == tmp_path / "state"
    assert settings.dagster_home == Path("/srv/dagster")


def test_lakefs_endpoint_switches_the_store(tmp_path: Path) -> None:
    env = {
        "LAKEFS_ENDPOINT": "http://lakefs:8000",
        "LAKEFS_ACCESS_KEY_ID": "AKIA",
        "LAKEFS_SECRET_ACCESS_KEY": "very-secret",
        "LAKEFS_RASTER_ACCESS": "s3_gateway",
    }
    settings = Settings.from_env(env, cwd=tmp_path)
    store = settings.open_store(env)
    assert isinstance(store, LakeFSStore)
    assert store.raster_access == "s3_gateway"
    # The spec the store factory opened it from holds the secret, and neither repr shows it.
    spec = settings.store_spec(env)
    assert spec.secret_access_key == "very-secret"
    assert "very-secret" not in repr(store) and "very-secret" not in repr(spec)


def test_missing_credentials_are_named(tmp_path: Path) -> None:
    settings = Settings.from_env({"LAKEFS_ENDPOINT": "http://lakefs:8000"}, cwd=tmp_path)
    with pytest.raises(SettingsError, match="LAKEFS_ACCESS_KEY_ID and LAKEFS_SECRET_ACCESS_KEY"):
        settings.open_store({"LAKEFS_ENDPOINT": "http://lakefs:8000"})


def test_bad_raster_access_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="LAKEFS_RASTER_ACCESS"):
        Settings.from_env({"LAKEFS_RASTER_ACCESS": "ftp"}, cwd=tmp_path)


def test_the_checks_pixel_budget_is_read_from_mlops_max_pixels(tmp_path: Path) -> None:
    assert Settings.from_env({}, cwd=tmp_path).max_pixels is None  # the checks' defaults
    settings = Settings.from_env({"MLOPS_MAX_PIXELS": "3000000000"}, cwd=tmp_path)
    assert settings.max_pixels == 3_000_000_000
    with pytest.raises(SettingsError, match=r"MLOPS_MAX_PIXELS='2\^31': expected a whole number"):
        Settings.from_env({"MLOPS_MAX_PIXELS": "2^31"}, cwd=tmp_path)


def test_sweep_studies_live_in_a_journal_file_unless_a_database_is_named(tmp_path: Path) -> None:
    settings = Settings.from_env({}, cwd=tmp_path)
    assert settings.sweep_storage == str(tmp_path / ".mlops" / "optuna" / "journal.log")
    url = "postgresql+psycopg2://optuna:pw@postgres:5432/optuna"
    assert Settings.from_env({"MLOPS_OPTUNA_STORAGE": url}, cwd=tmp_path).sweep_storage == url
