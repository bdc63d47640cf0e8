"""The end of ``make demo``: what the demo made, read back from the Dagster instance it used.

Prints the CD model's validation F1, each change map's F1 against its scene's label and each NVS
capture's held-out PSNR, each marked against make demo's quality bar (default preset only), and
(given the timings ``scripts/demo.sh`` recorded) where the time went: wall and CPU seconds per run
with the load average after it, and under each run the wall time of each of its steps (one per
asset or check), read from the run's events. Reads ``DAGSTER_HOME``; writes nothing.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

CD_MODEL = dg.AssetKey(["cd", "model"])
CD_REGISTERED = dg.AssetKey(["cd", "registered_model"])
CD_EVALUATION = dg.AssetKey(["cd", "evaluation"])
CD_CHANGE_MAP = dg.AssetKey(["cd", "change_map"])
NVS_SPLATS = dg.AssetKey(["nvs", "splats"])
NVS_REGISTERED = dg.AssetKey(["nvs", "registered_splats"])


@dataclass(frozen=True)
class Bars:
    """The quality bars `make demo` holds with its default preset (issue 13; benchmarks/RESULTS.md).

    ``PRESET=tiny`` (and runs on smaller scenes or fewer NVS steps) make a quick, far weaker
    model: nothing is judged against these there.
    """

    val_f1: float = 0.95  # the CD model's validation F1
    map_f1: float = 0.93  # every demo change map's F1 against its label
    psnr_db: float = 30.0  # every NVS capture's held-out PSNR

    def describe(self) -> str:
        """The bars in a few words."""
        return (
            f"CD validation F1 >= {self.val_f1:g}, change-map F1 >= {self.map_f1:g}, "
            f"held-out PSNR >= {self.psnr_db:g} dB"
        )


DEMO_BARS = Bars()


@dataclass
class Verdicts:
    """Figures marked against their bars (``bars`` None: none judged), and the ones below.

    ``judged`` counts every figure that has a bar, missing ones (a failed run) included.
    """

    bars: Bars | None
    judged: int = 0
    below: list[str] = field(default_factory=list[str])

    def mark(self, what: str, value: Any, bar: float | None, digits: int) -> str:
        """``value`` for the table, followed by ``(bar B) ok`` or ``(bar B) BELOW BAR``."""
        text = figure(value, digits)
        if self.bars is None or bar is None:
            return text
        self.judged += 1
        if value is None:
            self.below.append(f"{what}: no figure")
            return f"{text} (bar {bar:g}) MISSING"
        if float(value) >= bar:
            return f"{text} (bar {bar:g}) ok"
        self.below.append(f"{what} {text} < {bar:g}")
        return f"{text} (bar {bar:g}) BELOW BAR"

    def lines(self, not_judged: str) -> list[str]:
        """The verdict over every marked figure, or why none was judged."""
        if self.bars is None:
            return [f"Quality bars: not judged ({not_judged})"]
        head = f"Quality bars ({self.bars.describe()}): "
        if not self.below:
            return [head + f"all {self.judged} figures held"]
        return [
            head + f"{len(self.below)} of {self.judged} BELOW BAR or missing",
            *(f"  {item}" for item in self.below),
        ]


def latest(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None = None
) -> dict[str, Any] | None:
    """The metadata values of ``key``'s latest materialisation (of ``partition``), if any."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=key, asset_partitions=None if partition is None else [partition]
        ),
        limit=1,
    ).records
    materialization = records[0].asset_materialization if records else None
    if materialization is None:
        return None
    return {name: value.value for name, value in materialization.metadata.items()}


def figure(value: Any, digits: int) -> str:
    """A number rounded for the table, or '-' when there is none."""
    return "-" if value is None else f"{float(value):.{digits}f}"


def cd_lines(instance: dg.DagsterInstance, verdicts: Verdicts) -> list[str]:
    """The CD model and its change maps, their F1 marked against ``verdicts``' bars."""
    bars = verdicts.bars
    val_bar, map_bar = (None, None) if bars is None else (bars.val_f1, bars.map_f1)
    lines = ["Change detection"]
    model = latest(instance, CD_MODEL)
    registered = latest(instance, CD_REGISTERED)
    if model is None:
        lines.append("  no model was trained (see the cd/model log)")
    else:
        version = registered.get("version") if registered else None
        lines.append(
            "  model: validation F1 "
            + verdicts.mark("cd/model validation F1", model.get("val_f1"), val_bar, 3)
            + f" (best epoch {model.get('best_epoch')} of {model.get('epochs_run', '?')} run), "
            f"{model.get('train_tiles')} training / {model.get('val_tiles')} validation tiles; "
            + (f"registered as v{version}" if version else "not registered")
        )
    evaluation = latest(instance, CD_EVALUATION)
    if evaluation is not None and evaluation.get("evaluation_scenes"):
        champion = evaluation.get("champion_version")
        lines.append(
            f"  held out (eval/scenes.json): {', '.join(evaluation['evaluation_scenes'])}: "
            f"F1 {figure(evaluation.get('eval_f1'), 3)} for this model"
            + (
                f", {figure(evaluation.get('champion_eval_f1'), 3)} for champion v{champion}"
                if champion
                else " (no champion before it)"
            )
        )
    if registered is not None and registered.get("gate"):
        lines.append(f"  promotion gate: {registered['gate']}")
    scenes = sorted(instance.get_dynamic_partitions("cd_scenes"))
    lines.append(f"  {'change map':<22}{'F1 vs label':<28}{'changed %':>9}  model")
    for scene in scenes:
        meta = latest(instance, CD_CHANGE_MAP, scene)
        what = f"cd/change_map {scene} F1"
        if meta is None:
            lines.append(f"  {scene:<22}" + verdicts.mark(what, None, map_bar, 3))
            continue
        f1 = meta.get("f1_vs_label")  # None: an unlabelled scene, nothing to judge
        marked = verdicts.mark(what, f1, None if f1 is None else map_bar, 3)
        lines.append(
            f"  {scene:<22}{marked:<28}"
            f"{figure(meta.get('changed_percent'), 2):>9}  {meta.get('model', '')}"
        )
    return lines


def nvs_lines(instance: dg.DagsterInstance, verdicts: Verdicts) -> list[str]:
    """Each capture's splats and their registration, PSNR marked against ``verdicts``' bar."""
    bar = None if verdicts.bars is None else verdicts.bars.psnr_db
    lines = [
        "Novel-view synthesis (held-out views; versions of gaussian-splats)",
        f"  {'capture':<22}{'PSNR dB':<26}{'SSIM':>6}{'Gaussians':>11}",
    ]
    for scene in sorted(instance.get_dynamic_partitions("nvs_scenes")):
        meta = latest(instance, NVS_SPLATS, scene)
        registered = latest(instance, NVS_REGISTERED, scene)
        what = f"nvs/splats {scene} PSNR"
        if meta is None:
            lines.append(f"  {scene:<22}" + verdicts.mark(what, None, bar, 2) + " (not trained)")
            continue
        version = registered.get("version") if registered else None
        psnr = verdicts.mark(what, meta.get("psnr"), bar, 2)
        lines.append(
            f"  {scene:<22}{psnr:<26}{figure(meta.get('ssim'), 3):>6}"
            f"{meta.get('num_gaussians', '-'):>11}  "
            + (f"registered as v{version}" if version else "not registered")
        )
    return lines


def newest_runs(instance: dg.DagsterInstance) -> dict[tuple[frozenset[str], str], str]:
    """The newest run's id per asset selection (``cd/model`` ...) and partition ('-' for none)."""
    runs: dict[tuple[frozenset[str], str], str] = {}
    for record in instance.get_run_records():  # newest first
        run = record.dagster_run
        if run.asset_selection is not None:
            selection = frozenset(key.to_user_string() for key in run.asset_selection)
            runs.setdefault((selection, run.tags.get("dagster/partition", "-")), run.run_id)
    return runs


def step_lines(instance: dg.DagsterInstance, run_id: str, run_wall: float) -> list[str]:
    """The wall seconds of each step of the run (an asset or a check), in the order they ran.

    Then what the run spent outside its steps: process start, imports, Dagster's bookkeeping.
    """
    stats = sorted(instance.get_run_step_stats(run_id), key=lambda stat: stat.start_time or 0.0)
    lines: list[str] = []
    in_steps = 0.0
    for stat in stats:
        name = stat.step_key.replace("__", "/")
        status = "" if stat.status is None else stat.status.value.lower()
        note = "" if status == "success" else f"  {status}"
        if stat.start_time is None or stat.end_time is None:
            lines.append(f"    {name:<56}{'-':>8}{note}")
            continue
        wall = stat.end_time - stat.start_time
        in_steps += wall
        lines.append(f"    {name:<56}{wall:>8.1f}{note}")
    if lines:
        rest = max(run_wall - in_steps, 0.0)
        lines.append(f"    {'outside the steps (start-up, imports, events)':<56}{rest:>8.1f}")
    return lines


def timing_lines(path: Path, total: int | None, instance: dg.DagsterInstance) -> list[str]:
    """Wall and CPU seconds per run or command, and under each run its steps' wall seconds.

    The two chains overlap, so the walls add up to more than the script's. The steps' times come
    from the run's events in the instance (the newest run of that selection and partition).
    """
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    runs = newest_runs(instance)
    lines = [
        "Where the time went (the [cd] and [nvs] chains run side by side; under each run, its",
        "steps: one per asset or check)",
        f"  {'step':<58}{'wall s':>8}{'CPU s':>8}{'load':>7}",
    ]
    for label, wall, cpu, load, *run in rows:
        lines.append(f"  {label:<58}{float(wall):>8.1f}{float(cpu):>8.1f}{load:>7}")
        if len(run) == 2 and run[0] != "-":  # a Dagster run: its selection and partition
            run_id = runs.get((frozenset(run[0].split(",")), run[1]))
            if run_id is not None:
                lines.extend(step_lines(instance, run_id, float(wall)))
    cpu_total = sum(float(row[2]) for row in rows)
    lines.append(f"  {'CPU seconds, all steps':<58}{'':>8}{cpu_total:>8.1f}")
    if total is not None:
        lines.append(f"  {'wall time of the demo script':<58}{total:>8}")
    return lines


def main() -> None:
    """Print the summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timings", type=Path, help="timings.tsv written by scripts/demo.sh")
    parser.add_argument("--total", type=int, help="the demo script's wall seconds")
    parser.add_argument(
        "--not-judged",
        metavar="WHY",
        help="do not mark the figures against make demo's quality bars, and say why "
        "(PRESET=tiny, smaller scenes, fewer NVS steps)",
    )
    args = parser.parse_args()
    verdicts = Verdicts(None if args.not_judged else DEMO_BARS)
    with dg.DagsterInstance.get() as instance:
        sections = [
            cd_lines(instance, verdicts),
            nvs_lines(instance, verdicts),
            verdicts.lines(args.not_judged or ""),
        ]
        if args.timings is not None and args.timings.is_file():
            sections.append(timing_lines(args.timings, args.total, instance))
    sys.stdout.write("\n" + "\n\n".join("\n".join(section) for section in sections) + "\n")


if __name__ == "__main__":
    main()
