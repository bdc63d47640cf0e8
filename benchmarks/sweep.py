"""Sweeps: what a small study finds, what a trial costs beyond training, what a second worker adds.

Three rows from one run on the demo scenes (the last one held out of every sweep and training):

- held-out F1 of the best trial's params against trial 0's (the preset's defaults), each trained
  once more on the sweep's scenes with `train_change_model` and scored on the held-out scene;
- overhead: `train_change_model` alone (what ``cd/model`` runs) against a 1-trial study of the same
  params and epochs (Optuna, the MLflow child run, per-epoch reports), alternating, best of each;
- trials per hour with two worker processes against one, each for the same wall-clock budget.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.common import BenchResult, Target, ratio
from benchmarks.training import tile_demo_scenes
from mlops_assets.core.cd.config import TilingConfig, TrainConfig, preset
from mlops_assets.core.cd.dataset import ChangeTileDataset, TileRef
from mlops_assets.core.cd.model import BceDiceLoss
from mlops_assets.core.cd.sweep import SweepConfig, apply, overrides
from mlops_assets.core.cd.sweep_tracking import SweepResult, run_sweep
from mlops_assets.core.cd.train import evaluate, train_change_model
from mlops_assets.core.demo.cd import DEMO_CD_SCENES
from mlops_assets.core.tracking import Tracker


def heldout_f1(refs: Sequence[TileRef], held: Sequence[TileRef], config: TrainConfig) -> float:
    """Train on ``refs`` with ``config``; F1 of the kept epoch on the ``held`` tiles."""
    result = train_change_model(refs, config)
    loader: DataLoader[dict[str, torch.Tensor]] = DataLoader(
        ChangeTileDataset(held), batch_size=config.batch_size
    )
    device = torch.device("cpu")
    loss = BceDiceLoss(config.dice_weight)
    scores = evaluate(result.model, loader, loss, device, config.threshold)
    return scores["f1"]


def _sweep(
    refs: Sequence[TileRef],
    base: TrainConfig,
    work: Path,
    name: str,
    tracker: Tracker,
    **settings: object,
) -> tuple[SweepResult, float]:
    config = SweepConfig(study_name=name, **settings)  # type: ignore[arg-type]
    started = time.perf_counter()
    result = run_sweep(
        refs, base, config, str(work / "journal.log"), tracker, tags={}, git_sha="bench"
    )
    return result, time.perf_counter() - started


def _demo_tiles(work: Path, size: int) -> tuple[list[TileRef], list[TileRef], str, Tracker]:
    """The demo scenes tiled under ``work``: (sweep tiles, held-out tiles, held-out id, tracker).

    The last demo scene is held out of every sweep and training.
    """
    held_id = DEMO_CD_SCENES[-1].scene_id
    refs = tile_demo_scenes(DEMO_CD_SCENES, size, TilingConfig(), work / "tiles")
    train = [r for r in refs if r.index.scene_id != held_id]
    held = [r for r in refs if r.index.scene_id == held_id]
    tracker = Tracker(f"sqlite:///{work / 'mlflow.db'}", "bench-sweep", work / "art")
    return train, held, held_id, tracker


def bench_sweep(
    size: int = 512,
    epochs: int = 10,
    minutes: float = 20.0,
    overhead_rounds: int = 2,
    scaling_epochs: int = 2,
    scaling_minutes: float = 6.0,
) -> list[BenchResult]:
    """The three rows (see the module docstring); ``minutes`` bounds the study."""
    base = preset(TrainConfig, "default", epochs=epochs, patience=0, min_epochs=0)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        work = Path(tmp)
        train, held, held_id, tracker = _demo_tiles(work, size)
        study, study_s = _sweep(
            train, base, work, "study", tracker, n_trials=10_000, timeout_s=minutes * 60
        )
        default = next(o for o in study.evaluated if o.number == 0)
        f1_default = heldout_f1(train, held, apply(base, overrides(default.params, base)))
        f1_best = heldout_f1(train, held, apply(base, overrides(study.best_params, base)))
        counts = study.counts()
        study_row = BenchResult(
            name=f"sweep: held-out F1, best trial vs trial 0 ({size} px, {epochs} ep)",
            unit="F1",
            measured=f1_best,
            reference=f1_default,
            ratio=ratio(f1_best, f1_default),
            target=Target("ratio", ">=", 1.0),
            judged=False,
            note=(
                f"{len(study.evaluated)} trials in {study_s / 60:.1f} min ({counts}); best trial "
                f"{study.best_number} (val F1 {study.best_value:.3f}); held out: {held_id}"
            ),
            details={
                "best_params": study.best_params,
                "default_params": default.params,
                "trials": [dataclasses.asdict(o) for o in study.evaluated],
            },
        )

        config = apply(base, overrides(default.params, base))
        model_s: list[float] = []
        trial_s: list[float] = []
        for k in range(overhead_rounds):
            started = time.perf_counter()
            train_change_model(train, dataclasses.replace(config, overlay_images=0))
            model_s.append(time.perf_counter() - started)
            one, _ = _sweep(train, base, work, f"overhead-{k}", tracker, n_trials=1, pruner="none")
            trial_s.append(one.evaluated[0].seconds)
        overhead_row = BenchResult(
            name=f"sweep: cd/model training time / trial time ({epochs} ep)",
            unit="s",
            measured=min(model_s),
            reference=min(trial_s),
            ratio=ratio(min(model_s), min(trial_s)),
            target=Target("ratio", ">=", 0.9),
            note=f"best of {overhead_rounds} each, alternating; trial 0's params",
            details={"model_s": model_s, "trial_s": trial_s},
        )

        scaling_row = _scaling_row(train, base, work, tracker, scaling_epochs, scaling_minutes)
    return [study_row, overhead_row, scaling_row]


def _scaling_row(
    train: Sequence[TileRef],
    base: TrainConfig,
    work: Path,
    tracker: Tracker,
    epochs: int,
    minutes: float,
) -> BenchResult:
    """Trials per hour of one study with two worker processes against one, the same budget."""
    fast = dataclasses.replace(base, epochs=epochs)
    rates: dict[int, float] = {}
    counts: dict[int, int] = {}
    for workers in (1, 2):
        run, seconds = _sweep(
            train,
            fast,
            work,
            f"workers-{workers}",
            tracker,
            n_trials=10_000,
            timeout_s=minutes * 60,
            n_workers=workers,
            pruner="none",
        )
        counts[workers] = len(run.evaluated)
        rates[workers] = counts[workers] / (seconds / 3600)
    return BenchResult(
        name=f"sweep: trials/hour, 2 workers vs 1 ({epochs} ep)",
        unit="trials/h",
        measured=rates[2],
        reference=rates[1],
        ratio=ratio(rates[2], rates[1]),
        target=Target("ratio", ">=", 1.0),
        judged=False,
        note=(
            f"{minutes:g} min budget each, no pruning, the same sampler seed; "
            f"{counts[1]} vs {counts[2]} trials"
        ),
        details={"rates": rates, "trials": counts},
    )


def bench_sweep_workers(
    size: int = 512, epochs: int = 2, minutes: float = 6.0
) -> list[BenchResult]:
    """Only the last row of `bench_sweep`: two worker processes against one."""
    base = preset(TrainConfig, "default", epochs=epochs, patience=0, min_epochs=0)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-workers-") as tmp:
        train, _, _, tracker = _demo_tiles(Path(tmp), size)
        return [_scaling_row(train, base, Path(tmp), tracker, epochs, minutes)]
