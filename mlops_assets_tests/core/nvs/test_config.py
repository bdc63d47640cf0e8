from __future__ import annotations

import dataclasses

import pytest

from mlops_assets.core.nvs.config import NVS_PRESETS, NVSTrainConfig, nvs_preset, scaled


def test_presets_are_sized_for_their_use() -> None:
    tiny, default, quality = (NVS_PRESETS[n] for n in ("tiny", "default", "quality"))
    assert tiny.max_image_size is not None and tiny.max_image_size <= 64
    assert default.max_image_size is not None and tiny.steps < default.steps < quality.steps
    assert quality.steps == 30_000 and quality.sh_degree == 3 and quality.max_image_size is None
    assert all(c.holdout_every == 8 and c.ssim_lambda == 0.2 for c in NVS_PRESETS.values())


def test_learning_rates_follow_simple_trainer() -> None:
    c = NVSTrainConfig()
    assert (c.means_lr, c.scales_lr, c.quats_lr, c.opacities_lr) == (1.6e-4, 5e-3, 1e-3, 5e-2)
    assert c.sh0_lr == 2.5e-3 and c.shN_lr == pytest.approx(2.5e-3 / 20)
    assert c.num_sh_bases == 16


def test_scaled_shrinks_every_step_count() -> None:
    half = scaled(NVS_PRESETS["quality"], 0.5)
    assert (half.steps, half.sh_degree_interval) == (15_000, 500)
    assert (half.refine_start_iter, half.refine_stop_iter, half.refine_every) == (250, 7_500, 50)
    assert half.reset_every == 1_500 and half.eval_every == 3_500
    assert scaled(NVSTrainConfig(steps=3), 0.01).steps == 1


def test_preset_overrides_and_unknown_names() -> None:
    assert nvs_preset("tiny", steps=7, seed=None).steps == 7
    with pytest.raises(ValueError, match="unknown NVS preset 'huge': choose one of tiny"):
        nvs_preset("huge")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", 0, "steps must be at least 1"),
        ("sh_degree", 5, "sh_degree must be in 0..4"),
        ("downscale", 0, "downscale must be a positive integer"),
        ("holdout_every", 1, "holdout_every must be at least 2"),
        ("ssim_lambda", 1.5, "ssim_lambda must be in"),
        ("num_threads", -1, "num_threads must be >= 0"),
    ],
)
def test_invalid_values_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(NVSTrainConfig(), **{field: value})
