"""Importing LEVIR-CD, LEVIR-CD+ and OSCD folders: layouts, conversion, checks, one commit."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

from mlops_assets.core.importers import FORMATS, base, dataset_format
from mlops_assets.core.importers.base import (
    ConvertedScene,
    DatasetImportError,
    commit_import,
    prepare_import,
    summarise,
)
from mlops_assets.core.scenes.cd import check_cd_scene, read_cd_scene
from mlops_assets.core.scenes.manifest import SceneManifest
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets.core.store.types import NoChangesError
from mlops_assets_tests.core.importers import (
    OSCD_IMAGES,
    OSCD_LABELS,
    make_levircd,
    make_levircd_plus,
    make_oscd,
    save_png,
)

SHARED_TORCHGEO = Path("/work/shared/data/torchgeo/tests/data")


def read(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read(), {
                "crs": src.crs,
                "scales": src.scales,
                "descriptions": src.descriptions,
                "nodata": src.nodata,
                "transform": src.transform,
            }


def prepare(name: str, root: Path, work: Path, *splits: str, prefix: str | None = None):
    dataset = dataset_format(name)
    return prepare_import(
        dataset, root, splits, dataset.default_prefix if prefix is None else prefix, work
    )


def test_levir_cd_split_folders_become_pixel_grid_scenes_named_by_split(tmp_path: Path) -> None:
    root = make_levircd(tmp_path / "LEVIR-CD")
    scenes = prepare("levir-cd", root, tmp_path / "work")
    assert [s.scene_id for s in scenes] == [
        f"levircd-{split}-{n}" for split in ("train", "val", "test") for n in (1, 2)
    ]
    scene = scenes[0]
    assert (scene.split, scene.width, scene.height, scene.bands, scene.grid) == (
        "train",
        64,
        64,
        3,
        "pixel",
    )
    pre, meta = read(scene.folder / "pre.tif")
    assert meta["crs"] is None and meta["descriptions"] == ("red", "green", "blue")
    source = np.asarray(Image.open(root / "train" / "A" / "train_1.png")).transpose(2, 0, 1)
    np.testing.assert_array_equal(pre, source)
    label, label_meta = read(scene.folder / "label.tif")
    original = np.asarray(Image.open(root / "train" / "label" / "train_1.png"))
    assert set(np.unique(original)) == {0, 255}
    np.testing.assert_array_equal(label[0], original == 255)  # LEVIR's 255 is stored as 1
    assert label_meta["nodata"] == 255 and scene.changed_pixels == int((original == 255).sum())
    manifest = SceneManifest.read(scene.folder)
    assert manifest is not None and manifest.pixel_grid and manifest.source == "levir-cd"
    assert (
        manifest.split == "train" and manifest.label_encoding == "0 no change, 255 change -> 0, 1"
    )
    assert manifest.original == {
        "pre": "train/A/train_1.png",
        "post": "train/B/train_1.png",
        "label": "train/label/train_1.png",
    }


def test_levir_cd_in_torchgeo_layout_pairs_as_torchgeo_reads_it(tmp_path: Path) -> None:
    from torchgeo.datasets import LEVIRCD

    root = make_levircd(tmp_path / "levircd", layout="torchgeo")
    scenes = prepare("levir-cd", root, tmp_path / "work", "train", "test", prefix="")
    assert [s.scene_id for s in scenes] == ["train-1", "train-2", "test-1", "test-2"]
    reference = LEVIRCD(root, split="train")  # reads a local root, downloads nothing
    assert len(reference) == 2
    sample = reference[0]
    pre, _ = read(scenes[0].folder / "pre.tif")
    label, _ = read(scenes[0].folder / "label.tif")
    np.testing.assert_array_equal(sample["image"][0].numpy(), pre)
    np.testing.assert_array_equal(sample["mask"][0].numpy(), label[0])


def test_levir_cd_plus_reads_its_folder_or_the_folder_above(tmp_path: Path) -> None:
    from torchgeo.datasets import LEVIRCDPlus

    root = make_levircd_plus(tmp_path / "plus")
    above = prepare("levir-cd-plus", root, tmp_path / "w1")
    inside = prepare("levir-cd-plus", root / "LEVIR-CD+", tmp_path / "w2", "test")
    assert [s.scene_id for s in above] == [
        "levircdplus-train-00",
        "levircdplus-train-01",
        "levircdplus-test-00",
        "levircdplus-test-01",
    ]
    assert [s.scene_id for s in inside] == ["levircdplus-test-00", "levircdplus-test-01"]
    assert len(LEVIRCDPlus(root, split="test")) == len(inside)


def test_oscd_stacks_13_bands_on_the_10m_grid_and_records_the_scaling(tmp_path: Path) -> None:
    from torchgeo.datasets import OSCD

    root = make_oscd(tmp_path / "oscd", native=False)
    scenes = prepare("oscd", root, tmp_path / "work")
    assert [s.scene_id for s in scenes] == [
        "oscd-train-abudhabi",
        "oscd-train-paris",
        "oscd-test-lasvegas",
    ]
    paris = scenes[1]
    assert (paris.bands, paris.dtype, paris.width, paris.grid) == (13, "uint16", 60, "pixel")
    pre, meta = read(paris.folder / "pre.tif")
    assert meta["scales"] == (1e-4,) * 13 and meta["descriptions"][8] == "B8A"
    # The same stack TorchGeo's OSCD reads from this folder, band for band.
    reference = OSCD(root, split="train")
    sample = next(
        reference[i] for i in range(len(reference)) if reference.files[i]["region"] == "paris"
    )
    np.testing.assert_array_equal(sample["image"][0].numpy(), pre.astype(np.float32))
    manifest = SceneManifest.read(paris.folder)
    assert manifest is not None and manifest.reflectance_scale == 1e-4
    assert manifest.dates == {"pre": "20161130", "post": "20170829"}
    assert manifest.bands[8] == "B8A" and manifest.split == "train"


def test_oscd_bands_at_their_native_resolution_are_resampled_onto_one_grid(
    tmp_path: Path,
) -> None:
    root = make_oscd(tmp_path / "oscd", cities={"paris": "train"}, native=True)
    (scene,) = prepare("oscd", root, tmp_path / "work")
    pre, _ = read(scene.folder / "pre.tif")
    assert pre.shape == (13, 60, 60)
    b02 = np.asarray(Image.open(root / OSCD_IMAGES / "paris" / "imgs_1_rect" / "B02.tif"))
    np.testing.assert_array_equal(pre[1], b02)  # a 10 m band is copied as it is
    b01 = np.asarray(Image.open(root / OSCD_IMAGES / "paris" / "imgs_1_rect" / "B01.tif"))
    assert b01.shape == (10, 10)  # 60 m: upsampled six times, keeping its values' range
    assert b01.min() <= pre[0].min() and pre[0].max() <= b01.max()


def test_oscd_bands_with_georeferencing_keep_it(tmp_path: Path) -> None:
    root = make_oscd(tmp_path / "oscd", cities={"paris": "train"}, crs="EPSG:32631")
    (scene,) = prepare("oscd", root, tmp_path / "work")
    assert scene.grid == "crs"
    for name in ("pre.tif", "post.tif", "label.tif"):
        _, meta = read(scene.folder / name)
        assert meta["crs"] == "EPSG:32631"
        assert meta["transform"].a == 10.0 and meta["transform"].c == 600000.0
    manifest = SceneManifest.read(scene.folder)
    assert manifest is not None and manifest.grid == "crs"


def _levir(tmp_path: Path) -> Path:
    return make_levircd(tmp_path / "levir", splits=("train", "val"))


def _break_levir(case: str, root: Path) -> tuple[str, list[str]]:
    """Damage a LEVIR-CD folder; (split to ask for, what the one error line must contain)."""
    if case == "missing split":
        return "test", [str(root / "test"), "missing"]
    if case == "missing label folder":
        shutil.rmtree(root / "val" / "label")
        return "val", [str(root / "val" / "label"), "missing"]
    if case == "unpaired names":
        (root / "train" / "B" / "train_2.png").rename(root / "train" / "B" / "train_9.png")
        return "train", [str(root / "train" / "A" / "train_2.png"), "no matching B/train_2"]
    if case == "bad label values":
        path = root / "train" / "label" / "train_1.png"
        label = np.asarray(Image.open(path)).copy()
        label[:3, :3] = 128
        save_png(path, label)
        return "train", [str(path), "label values 0, 128, 255; expected 0/1 or 0/255"]
    if case == "sizes differ":
        path = root / "train" / "B" / "train_2.png"
        Image.open(path).crop((0, 0, 64, 60)).save(path)
        return "train", [str(path), "is 64x60 px but", "train_2.png is 64x64 px"]
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["missing split", "missing label folder", "unpaired names", "bad label values", "sizes differ"],
)
def test_bad_levir_input_is_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    root = _levir(tmp_path)
    split, expected = _break_levir(case, root)
    with pytest.raises(DatasetImportError) as error:
        prepare("levir-cd", root, tmp_path / "work", split)
    message = str(error.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


@pytest.mark.parametrize("case", ["missing band", "missing date", "missing labels", "label size"])
def test_bad_oscd_input_is_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    root = make_oscd(tmp_path / "oscd", native=False)
    city = root / OSCD_IMAGES / "paris"
    if case == "missing band":
        (city / "imgs_2_rect" / "B8A.tif").unlink()
        expected = [str(city / "imgs_2_rect" / "B8A.tif"), "missing", "13 bands"]
    elif case == "missing date":
        (city / "dates.txt").write_text("date_1: 20161130\n")
        expected = [str(city / "dates.txt"), "no date_2"]
    elif case == "missing labels":
        shutil.rmtree(root / OSCD_LABELS["test"])
        expected = [OSCD_LABELS["test"], "missing", "'test'"]
    else:
        cm = root / OSCD_LABELS["train"] / "paris" / "cm" / "cm.png"
        Image.open(cm).crop((0, 0, 50, 60)).save(cm)
        expected = [str(cm), "is 50x60 px", "60x60 px"]
    with pytest.raises(DatasetImportError) as error:
        prepare("oscd", root, tmp_path / "work", "train", "test")
    assert "\n" not in str(error.value)
    for part in expected:
        assert part in str(error.value)


def test_an_unknown_split_or_an_empty_root_is_refused(tmp_path: Path) -> None:
    root = _levir(tmp_path)
    with pytest.raises(DatasetImportError, match="levir-cd-plus has no split 'val'"):
        prepare("levir-cd-plus", root, tmp_path / "work", "val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetImportError, match="empty: no levir-cd split found"):
        prepare("levir-cd", tmp_path / "empty", tmp_path / "work")
    # Without --split, the splits present are imported; a requested one must be there.
    assert [s.split for s in prepare("levir-cd", root, tmp_path / "w")] == ["train"] * 2 + [
        "val"
    ] * 2
    assert sorted(FORMATS) == ["levir-cd", "levir-cd-plus", "oscd"]


def test_an_import_is_one_commit_that_says_so_and_the_checks_pass(
    store: EmbeddedStore, tmp_path: Path
) -> None:
    dataset = dataset_format("levir-cd")
    root = make_levircd(tmp_path / "levir")
    scenes: list[ConvertedScene] = prepare("levir-cd", root, tmp_path / "work")
    before = store.resolve("main")
    commit = commit_import(store, "main", dataset, root, scenes)
    # One merge into main, of one commit on the import's own write- branch.
    assert store.resolve("main") == commit.id and commit.parents[0] == before
    (written,) = [c for c in store.log(commit.parents[1]) if c.id != before and before in c.parents]
    assert written.id == commit.parents[1]
    meta = store.get_commit(commit.id).metadata
    assert meta["source"] == "mlops-assets import levir-cd"
    assert meta["import_scene_count"] == "6" and meta["import_splits"] == "test,train,val"
    assert meta["scenes"].split(",") == [f"cd/{s.scene_id}" for s in scenes]
    scene = read_cd_scene(store, "main", "levircd-val-1")
    assert scene.grid == "pixel" and not scene.problems
    assert all(o.passed for o in check_cd_scene(scene))
    assert store.exists("main", "cd/levircd-val-1/scene.json")
    with pytest.raises(NoChangesError):  # the same import again records nothing
        commit_import(store, "main", dataset, root, prepare("levir-cd", root, tmp_path / "again"))
    summary = summarise(dataset, scenes)
    assert summary.per_split == {"train": 2, "val": 2, "test": 2}
    assert summary.without_change == 2 and summary.grid == "pixel"
    assert summary.lines()[0].startswith("6 levir-cd scenes (train 2, val 2, test 2)")


@pytest.mark.skipif(not SHARED_TORCHGEO.is_dir(), reason="needs ../shared/data/torchgeo")
@pytest.mark.parametrize(
    ("name", "folder", "label"),
    [
        ("levir-cd", "levircd/levircd", "label/train_0.png"),
        ("levir-cd-plus", "levircd/levircdplus", "LEVIR-CD+/train/label/00.png"),
        ("oscd", "oscd", f"{OSCD_LABELS['train']}/train1/cm/cm.png"),
    ],
)
def test_torchgeo_s_own_fixture_folders_are_read_and_their_random_masks_refused(
    tmp_path: Path, name: str, folder: str, label: str
) -> None:
    """TorchGeo's generated folders (../shared/data/torchgeo) are in the layouts read here, but
    their masks hold random grey levels (TorchGeo clamps them to 0/1): refused, file named."""
    root = SHARED_TORCHGEO / folder
    assert dataset_format(name).present_splits(root)
    with pytest.raises(DatasetImportError) as error:
        prepare(name, root, tmp_path / "work")
    assert str(error.value).startswith(f"{root / label}: label values 0, ")


def test_an_image_too_large_to_decode_whole_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _levir(tmp_path)  # 64 x 64 px crops
    monkeypatch.setattr(base, "MAX_PIXELS", 64 * 63)
    with pytest.raises(DatasetImportError) as error:
        prepare("levir-cd", root, tmp_path / "work", "train")
    assert str(error.value) == (
        f"{root / 'train' / 'A' / 'train_1.png'}: 64x64 px is too large to import (an import "
        "decodes each image whole, at most 4,032 px); cut it into crops or ingest it as a scene"
    )
