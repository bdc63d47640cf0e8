"""The end of ``make demo``: what the demo made, read back from the Dagster instance it used.

Prints the CD model's validation F1, each change map's F1 against its scene's label, each NVS
capture's held-out PSNR, and (given the timings ``scripts/demo.sh`` recorded) where the time went:
wall and CPU seconds per step with the load average after it. Reads ``DAGSTER_HOME``; writes
nothing.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

import dagster as dg

CD_MODEL = dg.AssetKey(["cd", "model"])
CD_REGISTERED = dg.AssetKey(["cd", "registered_model"])
CD_EVALUATION = dg.AssetKey(["cd", "evaluation"])
CD_CHANGE_MAP = dg.AssetKey(["cd", "change_map"])
NVS_SPLATS = dg.AssetKey(["nvs", "splats"])
NVS_REGISTERED = dg.AssetKey(["nvs", "registered_splats"])


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


def cd_lines(instance: dg.DagsterInstance) -> list[str]:
    """The CD model and its change maps."""
    lines = ["Change detection"]
    model = latest(instance, CD_MODEL)
    registered = latest(instance, CD_REGISTERED)
    if model is None:
        lines.append("  no model was trained (see the cd/model log)")
    else:
        version = registered.get("version") if registered else None
        lines.append(
            f"  model: validation F1 {figure(model.get('val_f1'), 3)} (best epoch "
            f"{model.get('best_epoch')} of {model.get('epochs_run', '?')} run), "
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
    lines.append(f"  {'change map':<22}{'F1 vs label':>12}{'changed %':>11}  model")
    for scene in scenes:
        meta = latest(instance, CD_CHANGE_MAP, scene)
        if meta is None:
            lines.append(f"  {scene:<22}{'(no map)':>12}")
            continue
        lines.append(
            f"  {scene:<22}{figure(meta.get('f1_vs_label'), 3):>12}"
            f"{figure(meta.get('changed_percent'), 2):>11}  {meta.get('model', '')}"
        )
    return lines


def nvs_lines(instance: dg.DagsterInstance) -> list[str]:
    """Each capture's splats and their registration."""
    lines = [
        "Novel-view synthesis (held-out views; versions of gaussian-splats)",
        f"  {'capture':<22}{'PSNR dB':>9}{'SSIM':>8}{'Gaussians':>11}",
    ]
    for scene in sorted(instance.get_dynamic_partitions("nvs_scenes")):
        meta = latest(instance, NVS_SPLATS, scene)
        registered = latest(instance, NVS_REGISTERED, scene)
        if meta is None:
            lines.append(f"  {scene:<22}{'(not trained)':>9}")
            continue
        version = registered.get("version") if registered else None
        lines.append(
            f"  {scene:<22}{figure(meta.get('psnr'), 2):>9}{figure(meta.get('ssim'), 3):>8}"
            f"{meta.get('num_gaussians', '-'):>11}  "
            + (f"registered as v{version}" if version else "not registered")
        )
    return lines


def timing_lines(path: Path, total: int | None) -> list[str]:
    """Wall and CPU seconds per step (the two chains overlap, so walls add up to more)."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    lines = [
        "Where the time went (the [cd] and [nvs] chains run side by side)",
        f"  {'step':<58}{'wall s':>8}{'CPU s':>8}{'load':>7}",
    ]
    for label, wall, cpu, load in rows:
        lines.append(f"  {label:<58}{float(wall):>8.1f}{float(cpu):>8.1f}{load:>7}")
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
    args = parser.parse_args()
    with dg.DagsterInstance.get() as instance:
        sections = [cd_lines(instance), nvs_lines(instance)]
    if args.timings is not None and args.timings.is_file():
        sections.append(timing_lines(args.timings, args.total))
    sys.stdout.write("\n" + "\n\n".join("\n".join(section) for section in sections) + "\n")


if __name__ == "__main__":
    main()
