"""``mlops-assets``: put scenes into the versioned store and look at what is there.

Every command reads the same settings as the Dagster code location (``MLOPS_HOME``,
``LAKEFS_ENDPOINT`` ...), so it talks to the same store. Errors end the command with one line on
stderr and exit status 1.
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
from typing import Any, TypeVar

import click
from tqdm import tqdm

from mlops_assets.core.scenes.layout import SceneError, SceneKind, split_listing
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.types import StoreError
from mlops_assets.settings import Settings, SettingsError

F = TypeVar("F", bound=Callable[..., Any])


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
@click.option("--branch", default=None, help="Branch to commit to (default: the main branch).")
@click.option("--message", default=None, help="Commit message.")
@_fail_cleanly
def ingest(kind: str, src: Path, scene_id: str, branch: str | None, message: str | None) -> None:
    r"""Upload the scene folder SRC and commit it.

    \b
    cd:  SRC holds pre.tif, post.tif and optionally label.tif
    nvs: SRC holds images/*.png|jpg and sparse/0/ (a COLMAP model)

    The folder is checked first; nothing is uploaded if it is not valid, and nothing stays staged
    if the upload fails.
    """
    from mlops_assets.core.scenes.ingest import ingest_scene, plan_upload

    settings = _settings()
    store = _store(settings)
    target = branch or settings.main_branch
    plan = plan_upload(SceneKind(kind), src, scene_id)
    for ignored in plan.ignored:
        click.echo(f"note: not uploading {ignored} (not part of the {kind} layout)", err=True)
    with _progress(plan.total_bytes, f"{kind}/{scene_id}") as progress:
        commit = ingest_scene(
            store,
            target,
            plan,
            message=message,
            metadata={
                "source": str(src.resolve()),
                "ingested_at": dt.datetime.now(dt.UTC).isoformat(),
            },
            progress=progress,
        )
    click.echo(f"committed {kind}/{scene_id} to {target!r} as {commit.id}")


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
    if "DAGSTER_HOME" not in os.environ:  # same default as `make demo` / `make dev`
        settings.dagster_home.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
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


if __name__ == "__main__":  # pragma: no cover
    main()
