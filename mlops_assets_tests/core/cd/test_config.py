from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from mlops_assets.core.cd.config import (
    PRESETS,
    GateConfig,
    InferenceConfig,
    PresetName,
    TilingConfig,
    TrainConfig,
    config_hash,
    preset,
    scaled,
)

KINDS = (TilingConfig, TrainConfig, InferenceConfig, GateConfig)


@pytest.mark.parametrize("name", ["tiny", "default", "quality"])
def test_every_preset_has_a_valid_config_of_every_kind(name: PresetName) -> None:
    for kind in KINDS:
        config = preset(kind, name)
        assert isinstance(config, kind)
        assert config == PRESETS[name][kind]
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.seed = 1  # type: ignore[attr-defined]  # frozen: presets cannot drift


def test_tiny_is_smaller_than_default_and_default_smaller_than_quality() -> None:
    tiny, default, quality = (preset(TrainConfig, n) for n in ("tiny", "default", "quality"))
    assert tiny.epochs < default.epochs < quality.epochs
    assert len(tiny.decoder_channels) == tiny.encoder_depth == 3
    sizes = [preset(TilingConfig, n).tile_size for n in ("tiny", "default", "quality")]
    assert sizes == sorted(sizes) and sizes[0] == 64
    assert preset(GateConfig, "tiny").min_f1 == 0.0  # a 2-epoch model is never gated out


def test_overrides_replace_fields_and_none_keeps_the_preset() -> None:
    config = preset(TrainConfig, "tiny", epochs=5, learning_rate=None, seed=7)
    assert config.epochs == 5 and config.seed == 7
    assert config.learning_rate == PRESETS["tiny"][TrainConfig].learning_rate
    assert config.decoder_channels == (16, 8, 8)


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown preset 'huge': choose one of tiny, default"):
        preset(TrainConfig, "huge")


def test_scaled_shrinks_epochs_but_keeps_at_least_one() -> None:
    default = preset(TrainConfig, "default")
    assert scaled(default, 0.5).epochs == default.epochs // 2
    assert scaled(default, 0.5).min_epochs == default.min_epochs // 2 == 10
    assert scaled(default, 0.0).epochs == 1
    assert scaled(default, 0.5).learning_rate == default.learning_rate


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TilingConfig(tile_size=40), "tile_size 40 must be a multiple of 16"),
        (lambda: TilingConfig(tile_size=0), "tile_size 0 must be a multiple of 16, at least 16"),
        (lambda: TilingConfig(tile_size=64, overlap=64), r"overlap 64 must be in \[0, tile_size\)"),
        (lambda: TilingConfig(overlap=-1), r"overlap -1 must be in \[0, tile_size\)"),
        (lambda: TilingConfig(max_nodata_fraction=1.5), r"max_nodata_fraction 1.5 must be in"),
        (
            lambda: TrainConfig(encoder_depth=3),
            "decoder_channels has 4 entries; encoder_depth is 3",
        ),
        (lambda: TrainConfig(val_scenes=("a",)), "val_scenes needs split='scene'"),
        (
            lambda: InferenceConfig(tile_size=64, overlap=33),
            r"overlap 33 must be in \[0, tile_size / 2\]",
        ),
        (lambda: TrainConfig(ema_decay=1.0), r"ema_decay 1.0 must be in \[0, 1\)"),
        (lambda: TrainConfig(warmup_epochs=-1), "warmup_epochs -1 must be >= 0"),
        # An override that breaks a preset is refused the same way.
        (
            lambda: preset(TrainConfig, "tiny", encoder_depth=4),
            "decoder_channels has 3 entries; encoder_depth is 4",
        ),
    ],
)
def test_invalid_configs_say_what_is_wrong(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_boundary_values_are_accepted() -> None:
    assert TilingConfig(tile_size=16, overlap=15, max_nodata_fraction=1.0).stride == 1
    assert TilingConfig(tile_size=64, overlap=0).stride == 64
    assert InferenceConfig(tile_size=64, overlap=32).overlap == 32
    assert TrainConfig(split="scene", val_scenes=("a",)).val_scenes == ("a",)
    assert TrainConfig(ema_decay=0.0, warmup_epochs=0.0).ema_decay == 0.0


def test_config_hash_is_short_stable_and_sensitive_to_every_field() -> None:
    tiny = preset(TilingConfig, "tiny")
    # Pinned: tile sets are published under this hash, so a change here orphans every
    # published tile set. Update it only on purpose.
    assert config_hash(tiny) == "b145f8427643"
    assert (
        config_hash(
            TilingConfig(tile_size=64, overlap=16, alignment_samples=4, alignment_window=32)
        )
        == "b145f8427643"
    )
    assert len(config_hash(TrainConfig())) == 12
    changed = {
        "tile_size": 128,
        "overlap": 8,
        "max_nodata_fraction": 0.5,
        "resampling": "nearest",
        "alignment_samples": 5,
        "alignment_window": 64,
        "alignment_min_confidence": 8.0,
    }
    hashes = {config_hash(dataclasses.replace(tiny, **{k: v})) for k, v in changed.items()}
    assert len(hashes) == len(changed) and config_hash(tiny) not in hashes
    assert config_hash(preset(TrainConfig, "tiny")) != config_hash(preset(TrainConfig, "default"))
