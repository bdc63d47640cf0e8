"""The asset configs of change detection: presets, overrides and the scale knob."""

from mlops_assets.assets.cd.config import ModelConfig
from mlops_assets.assets.nvs.config import SplatsConfig


def test_scale_shrinks_every_step_count_and_one_is_the_preset() -> None:
    default = ModelConfig(preset="default")  # pyright: ignore[reportArgumentType]
    assert ModelConfig(preset="default", scale=1.0).to_core() == default.to_core()  # pyright: ignore[reportArgumentType]
    half = ModelConfig(preset="default", scale=0.5).to_core()  # pyright: ignore[reportArgumentType]
    assert half.epochs == default.to_core().epochs // 2
    assert half.learning_rate == default.to_core().learning_rate
    splats = SplatsConfig(preset="quality", scale=0.1).to_core()  # pyright: ignore[reportArgumentType]
    full = SplatsConfig(preset="quality").to_core()  # pyright: ignore[reportArgumentType]
    assert (splats.steps, splats.refine_stop_iter) == (
        full.steps // 10,
        full.refine_stop_iter // 10,
    )
