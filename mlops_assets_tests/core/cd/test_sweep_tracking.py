"""The sweep's MLflow side without training: plots of a study, a sweep's choice applied.

The end-to-end lineage (parent and child runs of a real study) is in ``test_sweep.py``.
"""

from __future__ import annotations

import optuna

from mlops_assets.core.cd.config import TrainConfig, preset
from mlops_assets.core.cd.sweep_tracking import SweepChoice, study_plots


def _study(trials: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(
        lambda t: (
            t.suggest_float("learning_rate", 1e-4, 1e-2, log=True) * 10
            + t.suggest_categorical("augment", [True, False])
        ),
        n_trials=trials,
    )
    return study


def test_a_study_gets_its_three_plots() -> None:
    plots, notes = study_plots(_study(6))
    assert set(plots) == {"history", "importances", "parallel_coordinates"} and notes == []
    for image in plots.values():
        assert image.mode == "RGB" and min(image.size) > 100


def test_one_trial_gets_the_history_and_says_why_not_the_rest() -> None:
    plots, notes = study_plots(_study(1))
    assert set(plots) == {"history"}
    assert notes == [
        "no importance or parallel-coordinate plot: they need two complete trials whose "
        "params differ (1 complete)"
    ]
    empty = optuna.create_study(direction="maximize")
    assert study_plots(empty) == ({}, ["no plots: no trial completed"])


def test_a_choice_replaces_the_searched_settings_only() -> None:
    base = preset(TrainConfig, "tiny")
    choice = SweepChoice(
        run_id="r1",
        study_name="s",
        value=0.5,
        overrides={"learning_rate": 0.01, "decoder_channels": [32, 16], "encoder_depth": 2},
    )
    tuned = choice.apply(base)
    assert (tuned.learning_rate, tuned.encoder_depth) == (0.01, 2)
    assert tuned.decoder_channels == (32, 16) and tuned.epochs == base.epochs
    assert choice.config_fields()["decoder_channels"] == (32, 16)
    assert choice.tags() == {"sweep.run_id": "r1", "sweep.study": "s"}
