"""The evaluation-set convention: ``eval/scenes.json`` on main, read at one commit."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mlops_assets.core.scenes.evaluation import (
    EVALUATION_PATH,
    EvaluationSet,
    EvaluationSetError,
    parse_evaluation_file,
    read_evaluation_set,
    write_evaluation_set,
)
from mlops_assets.core.scenes.layout import SceneKind
from mlops_assets.core.store.embedded import EmbeddedStore
from mlops_assets_tests.conftest import commit_folder


def test_no_file_is_an_empty_set_pinned_to_main(store: EmbeddedStore) -> None:
    found = read_evaluation_set(store, SceneKind.CD)
    assert found.scene_ids == () and not found
    assert found.commit_id == store.resolve("main")


def test_written_set_is_merged_into_main_and_read_back_at_that_commit(
    store: EmbeddedStore, demo_cd_dir: Path
) -> None:
    commit_folder(store, demo_cd_dir, "cd/farmland-north/")
    head = write_evaluation_set(store, SceneKind.CD, ["farmland-north"], metadata={"who": "test"})
    assert store.resolve("main") == head
    assert not [b for b in store.list_branches() if b.startswith("write-")]  # branch removed
    found = read_evaluation_set(store, SceneKind.CD)
    assert found.scene_ids == ("farmland-north",) and found.commit_id == head
    assert found.excludes("farmland-north") and not found.excludes("suburb-east")
    assert EvaluationSet.from_dict(found.to_dict()) == found
    # Setting another kind keeps this one; setting the same set again commits nothing.
    assert write_evaluation_set(store, SceneKind.CD, ["farmland-north"]) == head
    assert store.read_bytes(head, EVALUATION_PATH).startswith(b"{")


def test_a_listed_scene_must_exist_with_its_label(store: EmbeddedStore, demo_cd_dir: Path) -> None:
    for name in ("pre.tif", "post.tif"):
        store.put("main", f"cd/farmland-north/{name}", demo_cd_dir / name)
    store.commit("main", "unlabelled")
    write_evaluation_set(store, SceneKind.CD, ["farmland-north", "nowhere"])
    with pytest.raises(EvaluationSetError, match=r"lists cd/farmland-north but .*label\.tif"):
        read_evaluation_set(store, SceneKind.CD)
    assert read_evaluation_set(store, SceneKind.CD, check=False).scene_ids == (
        "farmland-north",
        "nowhere",
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "expected an object"),
        (b'{"sar": []}', "unknown key 'sar' \\(expected 'cd'\\)"),
        (b'{"cd": "a"}', "must be a list of scene ids"),
        (b'{"cd": ["../x"]}', "contains '..'"),
    ],
)
def test_malformed_file_is_one_clear_error(content: bytes, message: str) -> None:
    with pytest.raises(EvaluationSetError, match=f"{EVALUATION_PATH}.*{message}"):
        parse_evaluation_file(content)


def test_bad_scene_id_is_refused_before_anything_is_written(store: EmbeddedStore) -> None:
    before = store.resolve("main")
    with pytest.raises(EvaluationSetError, match="Upper"):
        write_evaluation_set(store, SceneKind.CD, ["Upper"])
    assert store.resolve("main") == before


def test_nvs_scenes_are_refused_with_where_nvs_holds_out_views(store: EmbeddedStore) -> None:
    """A listed NVS scene would still be trained on: the key is refused, not ignored."""
    store.put("main", EVALUATION_PATH, io.BytesIO(b'{"cd": [], "nvs": ["globe"]}'))
    store.commit("main", "an evaluation set listing an NVS capture")
    expected = f"{EVALUATION_PATH}: key 'nvs': NVS scenes are not held out whole"
    with pytest.raises(EvaluationSetError, match=expected) as raised:
        read_evaluation_set(store, SceneKind.CD)
    assert "held-out views, every holdout_every-th photo" in str(raised.value)
    assert "\n" not in str(raised.value)
    before = store.resolve("main")
    for call in (
        lambda: read_evaluation_set(store, SceneKind.NVS),
        lambda: write_evaluation_set(store, SceneKind.NVS, ["globe"]),
    ):
        with pytest.raises(EvaluationSetError, match="NVS scenes are not held out whole"):
            call()
    assert store.resolve("main") == before
