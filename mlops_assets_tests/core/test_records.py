"""Typed records between assets read back what they wrote, and what the old dicts held."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from mlops_assets.core.cd.records import (
    CDRegistrationRecord,
    ChangeMapRecord,
    TilesRecord,
    tiles_by_scene,
)
from mlops_assets.core.nvs.records import SplatsRecord, SplatsRegistrationRecord
from mlops_assets.core.records import ModelRef
from mlops_assets.core.scenes.cd import read_cd_scene
from mlops_assets.core.scenes.nvs import NVSScene, read_nvs_scene
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.keys import model_output_version, parse_model_version
from mlops_assets_tests.conftest import commit_folder

TILES = {
    "scene_id": "farm",
    "repository": "scenes",
    "commit_id": "c" * 64,
    "key": "cd/tiles/farm/abc",
    "uri": "file:///x",
    "published": True,
    "tile_count": 4,
    "labelled_tiles": 3,
    "has_label": True,
    "config_hash": "abc",
    "sources": {"pre": "lakefs://scenes/c/cd/farm/pre.tif"},
}


def test_records_round_trip_through_json_and_ignore_unknown_keys() -> None:
    tiles = TilesRecord.from_dict(json.loads(json.dumps({**TILES, "added_later": 1})))
    assert tiles.labelled_tiles == 3 and tiles.sources["pre"].endswith("pre.tif")
    assert tiles.to_dict() == TILES
    assert tiles.data_version == f"{'c' * 16}-abc"
    change = ChangeMapRecord(
        scene_id="farm",
        source_commit="c",
        outputs_branch="outputs",
        outputs_commit="o",
        model=ModelRef("m", "2", "r"),
        change_map="u1",
        overlay="u2",
        changed_area_m2=None,
        changed_pixels=5,
        changed_percent=1.5,
        f1=None,
    )
    assert ChangeMapRecord.from_dict(json.loads(json.dumps(change.to_dict()))) == change
    assert change.to_dict()["model"] == {"name": "m", "version": "2", "run_id": "r"}
    splats = SplatsRecord(
        run_id="r",
        model_uri="models:/m",
        experiment="e",
        metrics={"psnr": 21.5},
        lakefs_repository="scenes",
        git_sha="sha",
        scene_id="s",
        lakefs_commit="c",
    )
    assert splats.version_tags() == {
        "psnr": "21.500000",
        "scene_id": "s",
        "lakefs.repository": "scenes",
        "lakefs.commit": "c",
        "git_sha": "sha",
        "mlflow.run_id": "r",
    }
    assert SplatsRecord.from_dict(json.loads(json.dumps(splats.to_dict()))) == splats


#: What cd/registered_model and nvs/registered_splats stored before they had a record class.
CD_REGISTRATION = {
    "model_name": "change-detection-unet",
    "run_id": "r1",
    "gate": "no champion yet",
    "metrics": {"val_f1": 0.8},
    "lakefs_commits": {"farm": "c1"},
    "git_sha": "sha",
    "registered": True,
    "version": "3",
    "aliases": ["challenger", "champion"],
}
NVS_REGISTRATION = {
    "scene_id": "room",
    "model_name": "gaussian-splats",
    "run_id": "r2",
    "gate": "held-out PSNR 12.0 below the minimum 20.0",
    "metrics": {"psnr": 12.0},
    "lakefs_commit": "c2",
    "git_sha": "sha",
    "registered": False,
    "version": None,
    "aliases": [],
}


def test_registration_records_read_what_was_stored_and_ignore_unknown_keys() -> None:
    cd = CDRegistrationRecord.from_dict({**CD_REGISTRATION, "added_later": 1})
    assert cd.version == "3" and cd.lakefs_commits == {"farm": "c1"}
    assert cd.to_dict() == CD_REGISTRATION  # the same keys and values as before
    nvs = SplatsRegistrationRecord.from_dict(json.loads(json.dumps(NVS_REGISTRATION)))
    assert not nvs.registered and nvs.scene_id == "room"
    assert nvs.to_dict() == NVS_REGISTRATION
    # Before the gate: nothing registered; after it, the version and the aliases moved.
    gated = dataclasses.replace(cd, registered=False, version=None, aliases=[])
    assert gated.registered_as("4", ["challenger"]) == dataclasses.replace(
        cd, version="4", aliases=["challenger"]
    )
    assert gated.registered_as(None, ["challenger"]) == gated  # refused: no aliases moved


def test_tiles_input_loads_as_one_value_many_or_none() -> None:
    assert tiles_by_scene(None) == {}
    assert list(tiles_by_scene(TILES)) == ["farm"]
    both = tiles_by_scene({"river": {**TILES, "scene_id": "river"}, "farm": TILES})
    assert list(both) == ["farm", "river"] and both["river"].scene_id == "river"
    record = TilesRecord.from_dict(TILES)  # a memory IO manager hands on the record itself
    assert tiles_by_scene(record) == {"farm": record}
    assert tiles_by_scene({"farm": record}) == {"farm": record}


def test_scene_records_read_back_what_the_assets_stored(
    store: EmbeddedStore, demo_cd_dir: Path, demo_nvs_dir: Path
) -> None:
    commit_folder(store, demo_cd_dir, "cd/farm/")
    commit_folder(store, demo_nvs_dir, "nvs/room/")
    cd = read_cd_scene(store, "main", "farm")
    assert cd.pre is not None and cd.label is not None  # nested records are read back too
    stored = json.loads(json.dumps(cd.to_dict()))
    assert type(cd).from_dict(stored) == cd
    assert type(cd).from_dict(stored).content_hash == cd.content_hash
    nvs = read_nvs_scene(store, "main", "room")
    assert nvs.model_location is not None and nvs.model is not None
    again = NVSScene.from_dict(json.loads(json.dumps(nvs.to_dict())))
    assert again == nvs and again.to_dict() == nvs.to_dict()


def test_the_output_data_version_is_parsed_back_for_its_model_only() -> None:
    version = model_output_version("c" * 40, "change-detection-unet", "12")
    assert version == f"{'c' * 16}-change-detection-unet-v12"
    assert parse_model_version(version, "change-detection-unet") == "12"
    assert parse_model_version(version, "other") is None
    assert parse_model_version(None, "change-detection-unet") is None
