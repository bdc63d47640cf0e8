from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import pytest
import torch

from mlops_assets.core.cd.config import TilingConfig, TrainConfig, preset
from mlops_assets.core.cd.dataset import TileRef, tile_refs
from mlops_assets.core.cd.model import BceDiceLoss
from mlops_assets.core.cd.train import (
    EarlyStopping,
    EpochMetrics,
    TrainingError,
    train_change_model,
    warmup_cosine,
)
from mlops_assets.core.demo.cd import DEMO_CD_SCENES, write_cd_scene
from mlops_assets_tests.core.cd import tile_folder

TILING = preset(TilingConfig, "tiny")
TINY = preset(TrainConfig, "tiny", device="cpu")
TIMING = ("seconds", "samples_per_second")


@pytest.fixture(scope="module")
def two_scenes(demo_cd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[TileRef]:
    """Tiles of two labelled 128 px demo scenes (9 windows each): one block per scene."""
    root = tmp_path_factory.mktemp("train")
    suburb = write_cd_scene(DEMO_CD_SCENES[1], root / "suburb-east", size=128)
    sets = [
        (root / "t-farm", tile_folder(demo_cd_dir, root / "t-farm", TILING, "farmland-north")),
        (root / "t-suburb", tile_folder(suburb, root / "t-suburb", TILING, "suburb-east")),
    ]
    return tile_refs(sets)


def _without_timing(history: list[EpochMetrics]) -> list[dict[str, float]]:
    return [{k: v for k, v in dataclasses.asdict(m).items() if k not in TIMING} for m in history]


@pytest.mark.slow
def test_training_is_seeded_reports_every_epoch_and_keeps_the_best(
    two_scenes: list[TileRef],
) -> None:
    seen: list[EpochMetrics] = []
    first = train_change_model(two_scenes, TINY, on_epoch=seen.append)
    second = train_change_model(two_scenes, TINY)

    assert [m.epoch for m in seen] == [1, 2] and seen == first.history
    assert _without_timing(first.history) == _without_timing(second.history)
    for a, b in zip(
        first.model.state_dict().values(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    # One whole scene validates, the other trains: no buffer is needed between them.
    assert (first.train_tiles, first.val_tiles, first.buffer_tiles) == (9, 9, 0)
    assert first.best.f1 == max(m.f1 for m in first.history)
    assert first.best in first.history
    for m in first.history:
        assert 0.0 <= m.f1 <= 1.0 and 0.0 <= m.iou <= m.f1
        assert m.train_loss > 0 and m.val_loss > 0 and m.samples_per_second > 0
    assert first.device == "cpu" and not first.model.training
    assert all(p.device.type == "cpu" for p in first.model.parameters())
    assert first.spec == {
        "in_channels": 8,
        "encoder": "tu-regnetx_002",
        "encoder_depth": 3,
        "decoder_channels": [16, 8, 8],
    }
    assert len(first.overlays) == TINY.overlay_images == 2
    for name, image in first.overlays:
        assert name.split("_")[0] in {"farmland-north", "suburb-east"}
        assert image.size == (64 + 4 + 64, 64)  # prediction | label


def test_no_tiles_is_an_error() -> None:
    with pytest.raises(TrainingError, match=r"^no tiles to train on$"):
        train_change_model([], TINY)


def test_one_scene_in_one_block_leaves_nothing_to_train_on(two_scenes: list[TileRef]) -> None:
    farm = [r for r in two_scenes if r.index.scene_id == "farmland-north"]
    with pytest.raises(
        TrainingError,
        match=r"need labelled tiles on both sides of the split; got 0 for training and 9 for "
        r"validation \(labelled scenes: \['farmland-north'\]\)",
    ):
        train_change_model(farm, TINY)


def test_unlabelled_tiles_are_not_trained_on(two_scenes: list[TileRef]) -> None:
    unlabelled = [
        dataclasses.replace(r, tile=dataclasses.replace(r.tile, labelled_pixels=0, change_pixels=0))
        for r in two_scenes
    ]
    with pytest.raises(TrainingError, match=r"got 0 for training and 0 for validation"):
        train_change_model(unlabelled, TINY)


def test_tile_sets_of_different_sensors_are_refused(two_scenes: list[TileRef]) -> None:
    suburb = next(r.index for r in two_scenes if r.index.scene_id == "suburb-east")
    three_bands = dataclasses.replace(suburb, bands=3)
    mixed = [
        dataclasses.replace(r, index=three_bands) if r.index is suburb else r for r in two_scenes
    ]
    with pytest.raises(TrainingError, match=r"different band counts: .*train one model per sensor"):
        train_change_model(mixed, TINY)


def test_a_diverging_run_fails_and_says_so(two_scenes: list[TileRef]) -> None:
    with pytest.raises(TrainingError, match=r"^loss became nan at epoch 1: training diverged$"):
        train_change_model(two_scenes, dataclasses.replace(TINY, learning_rate=1e30))


def test_a_nan_loss_stops_training_before_the_step(
    two_scenes: list[TileRef], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BceDiceLoss, "forward", lambda self, logits, target: logits.sum() * 0 / 0)
    epochs: list[EpochMetrics] = []
    with pytest.raises(TrainingError, match=r"^loss became nan at epoch 1: training diverged$"):
        train_change_model(two_scenes, TINY, on_epoch=epochs.append)
    assert epochs == []


def test_a_validation_scene_without_tiles_is_a_training_error(two_scenes: list[TileRef]) -> None:
    config = dataclasses.replace(TINY, split="scene", val_scenes=("river",))
    with pytest.raises(TrainingError, match=r"\['river'\]"):
        train_change_model(two_scenes, config)


@pytest.mark.skipif(torch.cuda.is_available(), reason="only where there is no CUDA")
def test_cuda_requested_without_cuda_is_an_error(two_scenes: list[TileRef]) -> None:
    with pytest.raises(TrainingError, match="device='cuda' was requested but CUDA is not"):
        train_change_model(two_scenes, dataclasses.replace(TINY, device="cuda"))


def _rates(total: int, warmup: float, lr: float = 0.3) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = warmup_cosine(optimizer, total, warmup)
    rates: list[float] = []
    for _ in range(total):
        rates.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        scheduler.step()
    return rates


def test_the_schedule_warms_up_to_the_configured_rate_then_decays_towards_zero() -> None:
    rates = _rates(total=20, warmup=5)
    assert 0 < rates[0] < rates[1] < rates[2] < rates[3] < rates[4] < 0.3
    assert rates[5] == pytest.approx(0.3) and max(rates) == pytest.approx(0.3)
    assert all(a > b for a, b in itertools.pairwise(rates[5:]))
    assert rates[-1] < 0.02 * 0.3


def test_without_warmup_the_schedule_is_plain_cosine_from_the_configured_rate() -> None:
    rates = _rates(total=10, warmup=0)
    expected = [0.3 * 0.5 * (1 + math.cos(math.pi * step / 10)) for step in range(10)]
    assert rates == pytest.approx(expected)


@pytest.mark.slow
def test_with_ema_the_averaged_weights_are_scored_and_returned(two_scenes: list[TileRef]) -> None:
    ema = dataclasses.replace(TINY, ema_decay=0.5, warmup_epochs=0.5)
    first, second = (train_change_model(two_scenes, ema) for _ in range(2))
    plain = train_change_model(two_scenes, dataclasses.replace(TINY, warmup_epochs=0.5))

    assert _without_timing(first.history) == _without_timing(second.history)
    assert [m.f1 for m in first.history] != [m.f1 for m in plain.history]
    for a, b in zip(
        first.model.state_dict().values(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert first.best.f1 == max(m.f1 for m in first.history)
    assert first.spec == plain.spec  # the averaged model has the trained model's architecture


def test_early_stopping_counts_epochs_without_a_gain_beyond_min_delta() -> None:
    stopping = EarlyStopping(patience=2, min_delta=0.01)
    # 0.5 best; 0.505 is not a gain of more than 0.01; 0.6 is; then two epochs without.
    assert [stopping.update(f1) for f1 in (0.5, 0.505, 0.6, 0.605, 0.59)] == [
        False,
        False,
        False,
        False,
        True,
    ]
    never = EarlyStopping(patience=0, min_delta=0.0)
    assert not any(never.update(0.5) for _ in range(50))


def test_training_stops_when_f1_stalls_and_returns_the_best_epochs_weights(
    two_scenes: list[TileRef], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlops_assets.core.cd.train as train

    scripted = iter([0.5, 0.8, 0.7, 0.79, 0.6, 0.95, 0.99])  # epoch 2 is the best seen in time
    scored: list[torch.Tensor] = []  # the weights each epoch was scored with

    def fake_evaluate(model: torch.nn.Module, *args: object, **kwargs: object) -> dict[str, float]:
        scored.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))
        f1 = next(scripted)
        return {"f1": f1, "iou": f1 / 2, "precision": f1, "recall": f1, "loss": 1 - f1}

    monkeypatch.setattr(train, "evaluate", fake_evaluate)
    config = dataclasses.replace(TINY, epochs=7, patience=3)
    result = train_change_model(two_scenes, config)

    assert [m.epoch for m in result.history] == [1, 2, 3, 4, 5]  # 3 epochs after the best, stop
    assert result.stopped_early and result.best.epoch == 2 and result.best.f1 == 0.8
    weights = torch.cat([p.detach().flatten() for p in result.model.parameters()])
    assert torch.equal(weights, scored[1]) and not torch.equal(weights, scored[-1])
    full = train_change_model(two_scenes, dataclasses.replace(config, patience=0, epochs=2))
    assert not full.stopped_early and len(full.history) == 2


def test_training_uses_the_configured_threads_and_reports_every_batch(
    two_scenes: list[TileRef],
) -> None:
    before = torch.get_num_threads()
    seen: list[tuple[int, int, int, int]] = []

    def on_batch(epoch: int, batch: int, batches: int, loss: float) -> None:
        assert loss > 0
        seen.append((epoch, batch, batches, torch.get_num_threads()))

    config = dataclasses.replace(TINY, epochs=1, num_threads=1)
    result = train_change_model(two_scenes, config, on_batch=on_batch)
    batches = math.ceil(result.train_tiles / TINY.batch_size)
    assert seen == [(1, b, batches, 1) for b in range(1, batches + 1)]
    assert torch.get_num_threads() == before  # restored for whatever runs next in the process


def test_patience_and_threads_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match=r"patience \(-1\), min_delta \(0.0\), min_epochs \(0\)"):
        dataclasses.replace(TINY, patience=-1)


def test_early_stopping_does_not_count_the_first_min_epochs() -> None:
    # The 1-thread demo trajectory of the default preset (epochs 13 to 28): with patience 5 it
    # would stop at 21 on epoch 16's 0.957; counted from epoch 20, it keeps going to epoch 23's
    # 0.960 and stops 5 epochs later.
    f1 = [0.951, 0.943, 0.950, 0.957, 0.950, 0.954, 0.953, 0.947, 0.956, 0.953, 0.960]
    f1 += [0.934, 0.954, 0.958, 0.955, 0.958]
    stopping = EarlyStopping(patience=5, min_epochs=20)
    stops = [stopping.update(score) for score in [0.6] * 12 + f1]
    assert stops.index(True) + 1 == 28 and stopping.best == 0.960
