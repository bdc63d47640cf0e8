"""``mlops-assets``: put scenes into the versioned store and look at what is there.

Every command reads the same settings as the Dagster code location (``MLOPS_HOME``,
``LAKEFS_ENDPOINT`` ...), so it talks to the same store. Errors end the command with one line on
stderr and exit status 1; ``ingest --publish`` exits 3 when the scene failed its checks.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import sys
import tempfile
from collections.abc import Callable, Generator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from tqdm import tqdm

from mlops_assets.core.scenes.layout import SceneError, SceneKind, split_listing
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.types import StoreError
from mlops_assets.settings import Settings, SettingsError

if TYPE_CHECKING:
    from mlops_assets.core.scenes.ingest import UploadPlan

F = TypeVar("F", bound=Callable[..., Any])
#: Exit status of ``ingest --publish`` when the scene failed its checks (errors exit 1).
EXIT_CHECKS_FAILED = 3


def _fail_cleanly(fn: F) -> F:
    """Turn expected errors into one line on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (StoreError, SceneError, SettingsError, ValueError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _settings() -> Settings:
    return Settings.from_env()


def _store(settings: Settings) -> VersionedStore:
    store = settings.open_store()
    store.ensure_repository(settings.main_branch)
    return store


def _use_dagster_home(settings: Settings) -> None:
    """Point Dagster at the instance `make demo` / `make dev` use unless DAGSTER_HOME is set."""
    if "DAGSTER_HOME" not in os.environ:
        settings.dagster_home.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(settings.dagster_home)


@contextmanager
def _progress(total: int, description: str) -> Generator[Callable[[int], None], None, None]:
    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=description,
        disable=None,  # only on a terminal
        file=sys.stderr,
    ) as bar:

        def advance(n: int) -> None:
            bar.update(n)

        yield advance


@click.group()
@click.version_option(package_name="mlops-assets")
def main() -> None:
    """Versioned scenes for the mlops-assets Dagster pipeline.

    The scene store is the embedded one under MLOPS_HOME (default ./.mlops), or a lakeFS server
    when LAKEFS_ENDPOINT (with LAKEFS_ACCESS_KEY_ID / LAKEFS_SECRET_ACCESS_KEY) is set.
    """


@main.command("demo-data")
@click.option("--size", default=768, show_default=True, help="Side of each CD scene in pixels.")
@click.option(
    "--image-size", default=128, show_default=True, help="Side of each NVS photo in pixels."
)
@click.option("--branch", default=None, help="Branch to commit to (default: the main branch).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the generated scene folders here (default: a temporary directory).",
)
@_fail_cleanly
def demo_data(size: int, image_size: int, branch: str | None, out: Path | None) -> None:
    """Generate the demo scenes and commit them to the store in one commit.

    Deterministic: running it again commits nothing when the scenes are already there.
    """
    from mlops_assets.core.demo.publish import generate_demo_scenes, publish_scenes

    settings = _settings()
    store = _store(settings)
    target = branch or settings.main_branch
    with tempfile.TemporaryDirectory(prefix="mlops-demo-") as tmp:
        root = out or Path(tmp)
        click.echo(f"generating demo scenes in {root} ...", err=True)
        scenes = generate_demo_scenes(root, cd_size=size, nvs_image_size=image_size)
        total = sum(p.stat().st_size for _, _, d in scenes for p in d.rglob("*") if p.is_file())
        with _progress(total, "uploading") as progress:
            commit = publish_scenes(
                store,
                target,
                scenes,
                message=f"Add demo scenes ({len(scenes)} scenes, cd size {size})",
                metadata={"source": "mlops-assets demo-data", "cd_size": str(size)},
                progress=progress,
            )
    names = ", ".join(f"{kind.value}/{scene_id}" for kind, scene_id, _ in scenes)
    if commit is None:
        head = store.resolve(target)
        click.echo(f"demo scenes already up to date on {target!r} at {head[:12]}: {names}")
    else:
        click.echo(
            f"committed {len(scenes)} demo scenes to {target!r} as {commit.id[:12]}: {names}"
        )


@main.command()
@click.argument("kind", type=click.Choice([k.value for k in SceneKind]))
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--scene", "scene_id", required=True, help="Scene id: [a-z0-9][a-z0-9_-]{0,62}.")
@click.option(
    "--branch",
    default=None,
    help="Branch to commit to, or with --publish to merge into (default: the main branch).",
)
@click.option("--message", default=None, help="Commit message.")
@click.option(
    "--publish",
    is_flag=True,
    help="Write-audit-publish: upload to a fresh branch ingest-<scene>-<UTC time>, run the "
    "raw-scene checks on that commit, and merge into the branch only if every check passes.",
)
@click.option(
    "--pixel-grid",
    is_flag=True,
    help="cd only: the rasters have no georeferencing (CRS-less, one size); store the scene on "
    "a pixel grid, with a scene.json saying so.",
)
@_fail_cleanly
def ingest(
    kind: str,
    src: Path,
    scene_id: str,
    branch: str | None,
    message: str | None,
    publish: bool,
    pixel_grid: bool = False,
) -> None:
    r"""Upload the scene folder SRC and commit it.

    \b
    cd:  SRC holds pre.tif, post.tif and optionally label.tif
    nvs: SRC holds images/*.png|jpg and sparse/0/ (a COLMAP model)

    Without --publish the folder is checked first; nothing is uploaded if it is not valid, and
    nothing stays staged if the upload fails. With --publish the checks that decide are the
    cd/scene or nvs/scene asset checks, run on the ingest branch's commit: a scene that fails
    them is not merged, its branch is kept for inspection, the failed checks are printed, and the
    exit status is 3.
    """
    from mlops_assets.core.scenes.ingest import ingest_scene, plan_upload

    settings = _settings()
    store = _store(settings)
    target = branch or settings.main_branch
    if pixel_grid:
        plan = _pixel_grid_plan(kind, src, scene_id, validate=not publish)
    else:
        plan = plan_upload(SceneKind(kind), src, scene_id, validate=not publish)
    for ignored in plan.ignored:
        click.echo(f"note: not uploading {ignored} (not part of the {kind} layout)", err=True)
    metadata = {"source": str(src.resolve()), "ingested_at": dt.datetime.now(dt.UTC).isoformat()}
    if publish:
        _publish(store, target, plan, message, metadata)
        return
    with _progress(plan.total_bytes, f"{kind}/{scene_id}") as progress:
        commit = ingest_scene(
            store, target, plan, message=message, metadata=metadata, progress=progress
        )
    click.echo(f"committed {kind}/{scene_id} to {target!r} as {commit.id}")


def _pixel_grid_plan(kind: str, src: Path, scene_id: str, validate: bool) -> UploadPlan:
    """``ingest --pixel-grid``: the folder's rasters plus a manifest.

    The manifest is written to a temporary folder that lives as long as the command.
    """
    from mlops_assets.core.scenes.pixel_grid import plan_pixel_grid_upload

    if kind != SceneKind.CD.value:
        raise SceneError(f"--pixel-grid applies to cd scenes, not {kind}")
    manifests = click.get_current_context().with_resource(
        tempfile.TemporaryDirectory(prefix="mlops-manifest-")
    )
    return plan_pixel_grid_upload(src, scene_id, Path(manifests), validate=validate)


def _publish(
    store: VersionedStore,
    target: str,
    plan: UploadPlan,
    message: str | None,
    metadata: dict[str, str],
) -> None:
    from mlops_assets.core.wap import write_audit_publish

    scene = f"{plan.kind.value}/{plan.scene_id}"
    with _progress(plan.total_bytes, scene) as progress:
        result = write_audit_publish(
            store,
            target,
            plan,
            when=dt.datetime.now(dt.UTC),
            message=message,
            metadata={**metadata, "ingested_by": "mlops-assets ingest --publish"},
            progress=progress,
        )
    if not result.merged:
        click.echo(
            f"error: {scene} failed {len(result.failed)} of {len(result.checks)} check(s) on "
            f"branch {result.branch!r} ({result.commit_id}); not merged, {target!r} unchanged "
            f"at {result.base}; the branch is kept for inspection",
            err=True,
        )
        for line in result.failure_lines():
            click.echo(f"  {line}", err=True)
        sys.exit(EXIT_CHECKS_FAILED)
    click.echo(
        f"published {scene}: {len(result.checks)} check(s) passed on {result.branch!r} "
        f"({result.commit_id}); merged into {target!r} as {result.merge_commit_id}"
    )


@main.command()
@click.option("--ref", default=None, help="Branch, tag or commit (default: the main branch).")
@click.option("--kind", type=click.Choice([k.value for k in SceneKind]), default=None)
@click.option("--ids", is_flag=True, help="Print bare scene ids, one per line (for scripts).")
@_fail_cleanly
def scenes(ref: str | None, kind: str | None, ids: bool) -> None:
    """List the scenes at a ref."""
    settings = _settings()
    store = _store(settings)
    at = ref or settings.main_branch
    kinds = [SceneKind(kind)] if kind else list(SceneKind)
    for scene_kind in kinds:
        listing = split_listing(store.list_prefixes(at, f"{scene_kind.value}/"), scene_kind)
        for scene_id in listing.valid:
            click.echo(scene_id if ids else f"{scene_kind.value}/{scene_id}")
        for name, problem in listing.invalid.items():
            click.echo(f"warning: ignoring {scene_kind.value}/{name}: {problem}", err=True)


@main.command()
@click.option("--ref", default=None, help="Branch, tag or commit (default: the main branch).")
@click.option("--limit", default=20, show_default=True, help="How many commits to show.")
@click.option("--prefix", "prefixes", multiple=True, help="Only commits touching this prefix.")
@_fail_cleanly
def log(ref: str | None, limit: int, prefixes: tuple[str, ...]) -> None:
    """Show the commit history of a ref, newest first."""
    settings = _settings()
    store = _store(settings)
    for commit in store.log(ref or settings.main_branch, list(prefixes) or None, limit):
        when = dt.datetime.fromtimestamp(commit.creation_date, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{commit.id[:12]}  {when}  {commit.message}")
        for key, value in sorted(commit.metadata.items()):
            click.echo(f"{'':14}{key}: {value}")


@main.command()
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--ref", default=None, help="Branch, tag or commit (default: the outputs branch).")
@click.option("--prefix", default="", help="Only objects under this prefix, e.g. cd/farm/.")
@_fail_cleanly
def export(dest: Path, ref: str | None, prefix: str) -> None:
    """Copy the objects under PREFIX at REF into the local folder DEST (keeping their paths)."""
    settings = _settings()
    store = _store(settings)
    at = ref or settings.outputs_branch
    objects = list(store.list(at, prefix))
    if not objects:
        raise StoreError(f"nothing under {prefix or '/'} at {at!r} in {store.repository!r}")
    for obj in objects:
        target = dest / obj.path
        store.download(at, obj.path, target)
        click.echo(str(target))


@main.group()
def partitions() -> None:
    """Keep Dagster's scene partitions in step with the store."""


@partitions.command("sync")
@click.option("--ref", default=None, help="Branch, tag or commit (default: the main branch).")
@_fail_cleanly
def partitions_sync(ref: str | None) -> None:
    """Add a partition for every scene at REF (needs DAGSTER_HOME, as the Dagster CLI does)."""
    from mlops_assets.partitions import sync_partitions

    settings = _settings()
    _use_dagster_home(settings)
    store = _store(settings)
    at = ref or settings.main_branch
    listings = {
        kind: split_listing(store.list_prefixes(at, f"{kind.value}/"), kind) for kind in SceneKind
    }
    added = sync_partitions({kind: listing.valid for kind, listing in listings.items()})
    for kind, keys in added.items():
        total = len(listings[kind].valid)
        click.echo(
            f"{kind.value}: {total} scene partition(s), {len(keys)} new: {', '.join(keys) or '-'}"
        )


@main.command()
@click.option(
    "--preset",
    type=click.Choice(["tiny", "default", "quality"]),
    default=None,
    help="Training and gate preset (default: the assets' default).",
)
@_fail_cleanly
def retrain(preset: str | None) -> None:
    """Run the cd_retrain job now: train cd/model on every labelled scene and register it.

    The run executes in this process against the Dagster instance in DAGSTER_HOME (the one
    `make dev` uses), so it shows in the UI like any other run, tagged mlops/trigger=cli; the
    promotion gate decides whether the champion moves. From the UI: Jobs, cd_retrain, Launchpad.
    """
    import dagster as dg

    from mlops_assets.definitions import build_defs
    from mlops_assets.sensors.jobs import cd_retrain

    settings = _settings()
    _use_dagster_home(settings)
    job = build_defs(settings).resolve_job_def(cd_retrain.name)
    ops = ("cd__model", "cd__registered_model")
    run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    if preset:
        run_config["ops"] = {op: {"config": {"preset": preset}} for op in ops}
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            run_config=run_config,
            instance=instance,
            tags={"mlops/trigger": "cli"},
            raise_on_error=False,
        )
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    if not result.success:
        reasons = [
            (data.user_failure_data.description if data.user_failure_data else None)
            or (data.error.message.strip() if data.error else "failed")
            for data in (e.step_failure_data for e in result.all_events if e.is_step_failure)
        ]
        reasons += [
            f"{name}: {e.description}" for name, e in sorted(checks.items()) if not e.passed
        ]
        why = "; ".join(reasons) or "see the run in the UI"
        click.echo(f"error: cd_retrain run {result.run_id} failed: {why}", err=True)
        sys.exit(1)
    gate = checks.get("promotion_gate")
    click.echo(
        f"cd_retrain run {result.run_id} succeeded"
        + (f"; promotion_gate: {gate.description}" if gate is not None else "")
    )


@main.command("import")
@click.argument(
    "dataset", metavar="FORMAT", type=click.Choice(["levir-cd", "levir-cd-plus", "oscd"])
)
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--split",
    "splits",
    multiple=True,
    help="Import only this split (repeatable; default: every split of the format).",
)
@click.option(
    "--prefix",
    default=None,
    help="Scene id prefix (default: the format's, e.g. levircd-): ids are <prefix><split>-<name>.",
)
@click.option("--branch", default=None, help="Branch to commit to (default: the main branch).")
@click.option("--message", default=None, help="Commit message.")
@_fail_cleanly
def import_dataset(
    dataset: str,
    root: Path,
    splits: tuple[str, ...],
    prefix: str | None,
    branch: str | None,
    message: str | None,
) -> None:
    r"""Import a downloaded change-detection dataset ROOT as scenes, in one commit.

    \b
    levir-cd       ROOT/{train,val,test}/{A,B,label}/*.png
                   (or TorchGeo's layout: ROOT/{A,B,label}/<split>_*.png)
    levir-cd-plus  ROOT/LEVIR-CD+/{train,test}/{A,B,label}/*.png
    oscd           ROOT/Onera Satellite Change Detection dataset - Images/<city>/
                   {imgs_1_rect,imgs_2_rect}/B*.tif and dates.txt, with <city>/cm/cm.png in
                   ... - Train Labels/ and ... - Test Labels/

    Every scene is converted (labels 255 -> 1; OSCD's 13 bands onto the 10 m grid) and checked
    before anything is uploaded; the first bad file stops the import with one line naming it,
    and nothing is committed. PNG crops have no georeferencing: they are stored as pixel-grid
    scenes. The commit's metadata says it is an import (source: mlops-assets import FORMAT) and
    how many scenes it holds. Importing the same data again commits nothing.
    """
    from mlops_assets.core.importers import dataset_format
    from mlops_assets.core.importers.base import commit_import, prepare_import, summarise
    from mlops_assets.core.store.types import NoChangesError

    fmt = dataset_format(dataset)
    settings = _settings()
    store = _store(settings)
    target = branch or settings.main_branch
    with tempfile.TemporaryDirectory(prefix="mlops-import-") as tmp:
        with tqdm(desc=f"checking {dataset}", unit="scene", disable=None, file=sys.stderr) as bar:

            def found(count: int) -> None:
                bar.reset(total=count)

            def converted(_: object) -> None:
                bar.update(1)

            scenes = prepare_import(
                fmt,
                root,
                splits,
                fmt.default_prefix if prefix is None else prefix,
                Path(tmp),
                on_scene=converted,
                on_found=found,
            )
        summary = summarise(fmt, scenes)
        total = sum(local.stat().st_size for s in scenes for local, _ in s.plan.files)
        try:
            with _progress(total, "uploading") as progress:
                commit = commit_import(store, target, fmt, root, scenes, progress, message)
        except NoChangesError:
            head = store.resolve(target)
            click.echo(
                f"nothing to commit: the {len(scenes)} {dataset} scenes are already on "
                f"{target!r} at {head[:12]}"
            )
            return
    click.echo(f"imported into {target!r} as {commit.id}:")
    for line in summary.lines():
        click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    main()
