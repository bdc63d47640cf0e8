"""``mlops-assets``: put scenes into the versioned store and look at what is there.

Every command reads the same settings as the Dagster code location (``MLOPS_HOME``,
``LAKEFS_ENDPOINT`` ...), so it talks to the same store. Every error, expected or not, ends the
command with one line on stderr (the file and the problem, secrets redacted) and exit status 1;
``ingest --publish`` exits 3 when the scene failed its checks. GDAL's and rasterio's warnings are
folded into that line, or shown once each after a command that succeeds. SIGTERM is handled as
Ctrl-C: the writer deletes its branch and the target stays as it was (exit 130, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import functools
import logging
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import uuid
import warnings
from collections.abc import Callable, Generator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click
from tqdm import tqdm

from mlops_assets.core.redact import redact_text
from mlops_assets.core.scenes.layout import SceneError, SceneKind, split_listing
from mlops_assets.core.store.base import VersionedStore
from mlops_assets.core.store.types import StoreError
from mlops_assets.settings import Settings

if TYPE_CHECKING:
    from mlops_assets.core.scenes.checks import CheckLimits
    from mlops_assets.core.scenes.ingest import UploadPlan

F = TypeVar("F", bound=Callable[..., Any])
#: Exit status of ``ingest --publish`` when the scene failed its checks (errors exit 1).
EXIT_CHECKS_FAILED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
#: Set to get the Python traceback of an unexpected error instead of its one line.
DEBUG_VARIABLE = "MLOPS_DEBUG"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so cleanup runs exactly as for Ctrl-C."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def _blocking_file(path: str) -> Path | None:
    """The first ancestor of ``path`` that exists and is not a directory."""
    for parent in [Path(path), *Path(path).parents]:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def describe_error(exc: BaseException) -> str:
    """One line saying what went wrong and where, whatever raised it."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        text = f"{where}: {exc.strerror}" if where else exc.strerror
        if exc.filename2 is not None:
            text = f"{where} -> {exc.filename2}: {exc.strerror}"
        if isinstance(exc, NotADirectoryError | FileExistsError) and exc.filename:
            blocker = _blocking_file(str(exc.filename))
            if blocker is not None:
                text += f" ({blocker} is a file, not a directory)"
        if exc.errno == errno.ENOSPC:
            text += " (the disk is full: free space and run the command again)"
        elif isinstance(exc, PermissionError):
            text += " (check the file's and its folder's permissions)"
    elif isinstance(exc, sqlite3.Error):
        text = f"the store's database: {exc}"
    elif isinstance(exc, StoreError | ValueError | click.ClickException):
        text = str(exc)
    else:
        text = f"unexpected {type(exc).__name__}: {exc} (set {DEBUG_VARIABLE}=1 for a traceback)"
    return redact_text(" ".join(text.split()))


#: Warnings for developers, which Python hides by default too.
_HIDDEN_WARNINGS = (
    DeprecationWarning,
    PendingDeprecationWarning,
    FutureWarning,
    ImportWarning,
    ResourceWarning,
)


class _Warnings(logging.Handler):
    """Collects GDAL/rasterio log warnings and Python warnings, each distinct one once."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._logged: list[str] = []
        self.caught: list[warnings.WarningMessage] = []

    def emit(self, record: logging.LogRecord) -> None:
        self._logged.append(record.getMessage())

    @property
    def messages(self) -> list[str]:
        """Every distinct warning so far, in order, on one line each, secrets redacted."""
        found = [
            *self._logged,
            *(
                f"{w.category.__name__}: {w.message}"
                for w in self.caught
                if not issubclass(w.category, _HIDDEN_WARNINGS)
            ),
        ]
        distinct: list[str] = []
        for message in found:
            message = redact_text(" ".join(message.split()))
            if message and message not in distinct:
                distinct.append(message)
        return distinct

    def folded(self) -> str:
        """`` (GDAL/rasterio said: ...)`` to end an error line with, or nothing."""
        messages = self.messages
        if not messages:
            return ""
        shown = "; ".join(messages[:3])
        more = f"; and {len(messages) - 3} more" if len(messages) > 3 else ""
        return f" (GDAL/rasterio said: {shown}{more})"


@contextmanager
def _collected_warnings() -> Generator[_Warnings, None, None]:
    handler = _Warnings()
    logger = logging.getLogger("rasterio")
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # not also to stderr through logging's last-resort handler
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            handler.caught = caught
            yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


_MAX_PIXELS_OPTION = click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=None,
    help="Refuse rasters and photos with more pixels than this before decoding them "
    "(default MLOPS_MAX_PIXELS, which the pipeline's checks read too; unset: 2^31 for rasters, "
    "2^26 for photos).",
)


def _fail_cleanly(fn: F) -> F:
    """Turn every error into one line on stderr and exit status 1 (130/143 when interrupted)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.getsignal(signal.SIGTERM)
        with contextlib.suppress(ValueError):  # only the main thread may set handlers
            signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            with _collected_warnings() as collected:
                try:
                    result = fn(*args, **kwargs)
                except (click.exceptions.Exit, click.Abort, SystemExit):
                    raise
                except KeyboardInterrupt as exc:
                    name = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"
                    click.echo(
                        f"error: interrupted ({name}); what this command had not merged or "
                        "committed was dropped",
                        err=True,
                    )
                    sys.exit(EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED)
                except Exception as exc:
                    if os.environ.get(DEBUG_VARIABLE):
                        raise
                    click.echo(f"error: {describe_error(exc)}{collected.folded()}", err=True)
                    sys.exit(1)
            for message in collected.messages:
                click.echo(f"warning: {message}", err=True)
            return result
        finally:
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signal.SIGTERM, previous)

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


class _OneLineGroup(click.Group):
    """A command group whose usage errors are one line too (click prints usage, hint and error)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Run the command line; with ``standalone_mode``, exit with its status."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            status = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            click.echo(f"error: {redact_text(exc.format_message())}{where}", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            click.echo(f"error: {redact_text(exc.format_message())}", err=True)
            sys.exit(1)
        except click.Abort:
            click.echo("error: aborted; nothing was changed", err=True)
            sys.exit(1)
        sys.exit(status if isinstance(status, int) else 0)


@click.group(cls=_OneLineGroup)
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


_SOURCE_URL = "mlops_assets.source_url"


class _SceneSource(click.ParamType[Path, Any]):
    """A local scene folder, or ``s3://bucket/prefix/`` copied into a temporary folder first."""

    name = "folder or s3://bucket/prefix"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        from mlops_assets.core.scenes.remote import fetch_s3_folder, is_s3_source

        text = str(value)
        if not is_s3_source(text):
            local = click.Path(exists=True, file_okay=False, path_type=Path)
            return local.convert(value, param, ctx)
        import boto3

        assert ctx is not None
        staging = Path(ctx.with_resource(tempfile.TemporaryDirectory(prefix="mlops-s3-scene-")))
        # This runs while click parses the arguments, outside the commands' one-line errors.
        try:
            client: Any = boto3.client("s3", endpoint_url=_settings().s3_endpoint_url)
            fetched = fetch_s3_folder(client, text, staging / "scene")
        except SceneError as error:
            self.fail(str(error), param, ctx)
        except Exception as error:
            self.fail(describe_error(error), param, ctx)
        ctx.meta[_SOURCE_URL] = text
        return fetched


@main.command()
@click.argument("kind", type=click.Choice([k.value for k in SceneKind]))
@click.argument("src", type=_SceneSource())
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
    "--follow-symlinks",
    is_flag=True,
    help="Upload what a symbolic link in SRC points to when that lies inside SRC (without this, "
    "any symbolic link is refused; one that points outside SRC always is).",
)
@_MAX_PIXELS_OPTION
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
    follow_symlinks: bool,
    max_pixels: int | None,
    pixel_grid: bool,
) -> None:
    r"""Upload the scene folder SRC and commit it.

    \b
    cd:  SRC holds pre.tif, post.tif and optionally label.tif
    nvs: SRC holds images/*.png|jpg and sparse/0/ (a COLMAP model)
    SRC may be s3://bucket/prefix/ (AWS_ENDPOINT_URL and AWS_* credentials): it is copied to a
    temporary folder first.

    Without --publish the folder is checked first; nothing is uploaded if it is not valid. The
    upload goes to a short-lived branch write-<scene>-..., is committed there and merged into
    the branch in one step: an ingest that fails, is interrupted or killed leaves the branch as
    it was. With --publish the checks that decide are the cd/scene or nvs/scene asset checks,
    run on the ingest branch's commit: a scene that fails them is not merged, its branch is kept
    for inspection, the failed checks are printed, and the exit status is 3.
    """
    from mlops_assets.core.scenes.checks import CheckLimits
    from mlops_assets.core.scenes.folders import folder_check
    from mlops_assets.core.scenes.ingest import ingest_scene, plan_upload

    settings = _settings()
    store = _store(settings)
    target = branch or settings.main_branch
    limits = CheckLimits.with_max_pixels(max_pixels or settings.max_pixels)
    if pixel_grid:
        plan = _pixel_grid_plan(
            kind, src, scene_id, not publish, follow_symlinks=follow_symlinks, limits=limits
        )
    else:
        scene_kind = SceneKind(kind)
        check = None if publish else folder_check(scene_kind, limits)
        plan = plan_upload(scene_kind, src, scene_id, check, follow_symlinks=follow_symlinks)
    for ignored in plan.ignored:
        click.echo(f"note: not uploading {ignored} (not part of the {kind} layout)", err=True)
    source = click.get_current_context().meta.get(_SOURCE_URL) or str(src.resolve())
    metadata = {"source": source, "ingested_at": dt.datetime.now(dt.UTC).isoformat()}
    if publish:
        _publish(store, target, plan, message, metadata, limits)
        return
    with _progress(plan.total_bytes, f"{kind}/{scene_id}") as progress:
        commit = ingest_scene(
            store, target, plan, message=message, metadata=metadata, progress=progress
        )
    click.echo(f"committed {kind}/{scene_id} to {target!r} as {commit.id}")


def _pixel_grid_plan(
    kind: str,
    src: Path,
    scene_id: str,
    validate: bool,
    *,
    follow_symlinks: bool,
    limits: CheckLimits,
) -> UploadPlan:
    """``ingest --pixel-grid``: the folder's rasters plus a manifest.

    The manifest is written to a temporary folder that lives as long as the command.
    """
    from mlops_assets.core.scenes.pixel_grid import plan_pixel_grid_upload

    if kind != SceneKind.CD.value:
        raise SceneError(f"--pixel-grid applies to cd scenes, not {kind}")
    manifests = click.get_current_context().with_resource(
        tempfile.TemporaryDirectory(prefix="mlops-manifest-")
    )
    return plan_pixel_grid_upload(
        src,
        scene_id,
        Path(manifests),
        validate=validate,
        follow_symlinks=follow_symlinks,
        limits=limits,
    )


def _publish(
    store: VersionedStore,
    target: str,
    plan: UploadPlan,
    message: str | None,
    metadata: dict[str, str],
    limits: CheckLimits,
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
            limits=limits,
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
    # Everything is downloaded (and checked) beside DEST first, then moved into place: a
    # damaged object or an interruption leaves no partial export.
    staging = dest / f".export-{uuid.uuid4().hex[:8]}"
    try:
        for obj in objects:
            store.download(at, obj.path, staging / obj.path)
        for obj in objects:
            target = dest / obj.path
            target.parent.mkdir(parents=True, exist_ok=True)
            (staging / obj.path).replace(target)
            click.echo(str(target))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@main.command()
@click.option(
    "--ref",
    default=None,
    help="Only the objects at this ref (default: every object the repository references; "
    "on lakeFS, every branch).",
)
@_fail_cleanly
def fsck(ref: str | None) -> None:
    """Read every stored object back and check it against its recorded checksum.

    Embedded store: the SHA-256 of every object any commit or staged change references. lakeFS:
    each object is streamed and its size and ETag compared with what lakeFS recorded. Damaged
    objects are listed one per line; ingesting the original file again repairs one.
    """
    settings = _settings()
    store = _store(settings)
    report = store.fsck(ref)
    for problem in report.problems:
        click.echo(f"damaged: {problem}")
    size = _size(report.bytes)
    if report.problems:
        raise StoreError(
            f"{len(report.problems)} of {report.objects} object(s) in {store.repository!r} are "
            f"damaged ({report.method}); ingest the original files again to repair them"
        )
    click.echo(f"{report.objects} object(s), {size}, all intact ({report.method})")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@main.command()
@click.option(
    "--grace-hours",
    type=click.FloatRange(min=0),
    default=24.0,
    show_default=True,
    help="Leave alone what is younger than this: its writer may still be running.",
)
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@_fail_cleanly
def gc(grace_hours: float, dry_run: bool) -> None:
    """Remove what interrupted writers left behind.

    Branches write-*, publish-* and ingest-* older than the grace period are removed, except an
    ingest-* branch whose scene failed its checks (kept for inspection). On the embedded store,
    objects that no commit and no staged change references, and partial uploads, go too (on
    lakeFS, its own garbage collection does that).
    """
    from mlops_assets.core.store.branches import collect_branches
    from mlops_assets.core.store.embedded import EmbeddedStore

    settings = _settings()
    store = _store(settings)
    grace = dt.timedelta(hours=grace_hours)
    verdicts = collect_branches(store, dt.datetime.now(dt.UTC), grace, dry_run)
    verb = "would remove" if dry_run else "removed"
    for verdict in verdicts:
        action = verb if verdict.remove else "kept"
        click.echo(f"{action} branch {verdict.name}: {verdict.reason}")
    removed = sum(v.remove for v in verdicts)
    click.echo(f"branches: {verb} {removed}, kept {len(verdicts) - removed}")
    if isinstance(store, EmbeddedStore):
        report = store.collect_garbage(grace.total_seconds(), dry_run)
        click.echo(
            f"objects: {verb} {report.objects} unreferenced ({_size(report.bytes)}) and "
            f"{report.partial_uploads} partial upload(s)"
        )
    else:
        click.echo("objects: left to lakeFS's own garbage collection")


@main.command()
@click.argument("branch")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_fail_cleanly
def reset(branch: str, yes: bool) -> None:
    """Drop the uncommitted changes on BRANCH (its commits stay as they are).

    Nothing can be merged into a branch with uncommitted changes; an interrupted ingest of an
    older version of this tool could leave some on main.
    """
    settings = _settings()
    store = _store(settings)
    changes = store.uncommitted(branch)
    head = store.resolve(branch)
    if not changes:
        click.echo(f"nothing to reset: {branch!r} has no uncommitted changes (at {head[:12]})")
        return
    for change in changes[:10]:
        click.echo(f"  {change.type.value:8} {change.path}")
    if len(changes) > 10:
        click.echo(f"  ... and {len(changes) - 10} more")
    if not yes:
        click.confirm(f"Drop these {len(changes)} uncommitted change(s) on {branch!r}?", abort=True)
    store.reset(branch)
    click.echo(f"dropped {len(changes)} uncommitted change(s) on {branch!r}; head {head[:12]}")


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

    from mlops_assets import keys
    from mlops_assets.definitions import build_defs
    from mlops_assets.sensors.jobs import cd_retrain

    settings = _settings()
    _use_dagster_home(settings)
    job = build_defs(settings).resolve_job_def(cd_retrain.name)
    ops = (keys.CD_MODEL_OP, keys.CD_EVALUATION_OP, keys.CD_REGISTERED_MODEL_OP)
    run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    if preset:
        run_config["ops"] = {op: {"config": {"preset": preset}} for op in ops}
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            run_config=run_config,
            instance=instance,
            tags={keys.TAG_TRIGGER: "cli"},
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
        why = redact_text("; ".join(reasons)) or "see the run in the UI"
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
@_MAX_PIXELS_OPTION
@_fail_cleanly
def import_dataset(
    dataset: str,
    root: Path,
    splits: tuple[str, ...],
    prefix: str | None,
    branch: str | None,
    message: str | None,
    max_pixels: int | None,
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
    from mlops_assets.core.scenes.checks import CheckLimits
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
                limits=CheckLimits.with_max_pixels(max_pixels or settings.max_pixels),
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


@main.command()
@click.option(
    "--preset",
    type=click.Choice(["tiny", "default", "quality"]),
    default=None,
    help="Each trial's epochs and model size, and the space around them (default: default).",
)
@click.option("--trials", type=click.IntRange(min=1), default=None, help="Trials to add (20).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds after which no trial starts (default: none).",
)
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="Processes at once (1).")
@click.option("--study", default=None, help="Study to create or resume (cd-unet-<preset>).")
@_fail_cleanly
def sweep(
    preset: str | None,
    trials: int | None,
    timeout: float | None,
    workers: int | None,
    study: str | None,
) -> None:
    """Run the cd_sweep job now: an Optuna study of the CD U-Net on every labelled scene.

    Like `retrain`, the run executes in this process against the Dagster instance in
    DAGSTER_HOME, tagged mlops/trigger=cli; each trial is an MLflow child run of the sweep's run.
    A study of the same name resumes (refused if its tiles or search space changed). Then
    `cd/model` with params_from: sweep trains with the best params. From the UI: Jobs, cd_sweep,
    Launchpad (every knob, the search space included).
    """
    import dagster as dg

    from mlops_assets import keys
    from mlops_assets.core.cd.records import SweepRecord
    from mlops_assets.definitions import build_defs
    from mlops_assets.jobs.sweep import SWEEP_OP, cd_sweep_job

    settings = _settings()
    _use_dagster_home(settings)
    job = build_defs(settings).resolve_job_def(cd_sweep_job.name)
    given = {"preset": preset, "n_trials": trials, "timeout_s": timeout, "n_workers": workers}
    config = {k: v for k, v in (given | {"study_name": study}).items() if v is not None}
    run_config: dict[str, Any] = {
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
        "ops": {SWEEP_OP: {"config": config}},
    }
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            run_config=run_config,
            instance=instance,
            tags={keys.TAG_TRIGGER: "cli"},
            raise_on_error=False,
        )
    if not result.success:
        reasons = [
            (data.user_failure_data.description if data.user_failure_data else None)
            or (data.error.message.strip() if data.error else "failed")
            for data in (e.step_failure_data for e in result.all_events if e.is_step_failure)
        ]
        why = redact_text("; ".join(reasons)) or "see the run in the UI"
        click.echo(f"error: cd_sweep run {result.run_id} failed: {why}", err=True)
        sys.exit(1)
    record: SweepRecord = result.output_for_node(SWEEP_OP)  # the asset's value, in memory
    best = ", ".join(f"{k}={v}" for k, v in sorted(record.best_params.items()))
    click.echo(
        f"cd_sweep run {result.run_id} succeeded: study {record.study_name!r}, best trial "
        f"{record.best_trial} F1 {record.best_value:.4f} ({best}); MLflow run "
        f"{record.run_id}; storage {record.storage}"
    )


# predict: a registered model over any pair on disk (issue 15) -------------------------------


@main.command()
@click.argument("pre", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("post", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The change map GeoTIFF to write; the overlay goes beside it as <stem>.png.",
)
@click.option(
    "--model",
    "model_ref",
    default="change-detection-unet@champion",
    show_default=True,
    help="Registered model: NAME@ALIAS or NAME/VERSION.",
)
@click.option("--tile-size", default=256, show_default=True, help="Window side in pixels.")
@click.option("--overlap", default=64, show_default=True, help="Window overlap in pixels.")
@click.option("--threshold", type=float, default=None, help="Default: the model's own.")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@_fail_cleanly
def predict(
    pre: Path,
    post: Path,
    out: Path,
    model_ref: str,
    tile_size: int,
    overlap: int,
    threshold: float | None,
    device: str,
) -> None:
    """Predict the change between PRE.tif and POST.tif with a registered model.

    Any pair, in the store or not: POST is warped onto PRE's grid (or, when neither has a CRS,
    compared pixel for pixel), and the map is predicted with the same sliding windows as the
    cd/change_map asset. Writes OUT (probability and mask on PRE's grid) and OUT's .png overlay;
    nothing when anything fails.
    """
    import dataclasses

    from mlops_assets.core.cd.config import InferenceConfig
    from mlops_assets.core.cd.predict import (
        ModelRef,
        inference_config,
        load_model,
        overlay_path,
        predict_pair,
    )
    from mlops_assets.core.compute import select_device
    from mlops_assets.core.tracking import Tracker, TrackingError, redact_uri

    ref = ModelRef.parse(model_ref)
    settings = _settings()
    tracker = Tracker(settings.tracking_uri, "change-detection", settings.mlflow_artifact_root)
    try:
        tracker.check_reachable()
        model = load_model(tracker, ref)
    except TrackingError as exc:
        raise click.ClickException(f"--model {ref}: {exc}") from None
    config = inference_config(
        model,
        InferenceConfig(tile_size=tile_size, overlap=overlap, device=device),  # type: ignore[arg-type]
    )
    if threshold is not None:
        config = dataclasses.replace(config, threshold=threshold)
    with tqdm(total=0, unit="window", desc="predicting", disable=None, file=sys.stderr) as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        summary = predict_pair(pre, post, out, model, config, select_device(config.device), advance)
    area = (
        f"{summary.changed_pixels:,} px"
        if summary.changed_area_m2 is None
        else f"{summary.changed_area_m2:,.0f} m²"
    )
    click.echo(
        f"{out}: {summary.width}x{summary.height}, {area} changed "
        f"({summary.changed_percent:.2f}% of valid pixels) by {model.name} v{model.version} "
        f"from {redact_uri(settings.tracking_uri)}; overlay {overlay_path(out)}"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
