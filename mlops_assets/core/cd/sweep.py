"""Hyper-parameter sweeps of the change-detection U-Net: an Optuna study over `train_change_model`.

A sweep is an Optuna study (TPE sampler, seeded per trial; a median or Hyperband pruner fed each
epoch's validation F1 through `train_change_model`'s epoch callback, so there is one training loop)
over a `SearchSpace` of `TrainConfig` fields. The default configuration of the preset is enqueued as
trial 0. The study lives in an Optuna storage: a journal file (safe for several processes) by
default, a PostgreSQL (RDB) database in production, so ``n_workers`` processes, or several runs,
join one study by name. A study remembers what it was run on (the tiles' lakeFS commits, the
search space, the fixed training settings, the git SHAs): resuming it on other data or another
space is refused.

Trial *n*'s random draws are seeded by ``(seed, n)`` (`TrialSeededSampler`): a new study is
reproducible, and a resumed study, a second worker or a second run joining the study draws afresh
instead of repeating the first trials. A running trial's worker stamps a heartbeat on it every
`HEARTBEAT_S`; whoever joins the study (`sweep_tracking.prepare_sweep`, and each worker before it
asks for a trial) fails the trials whose heartbeat stopped more than `STALE_AFTER_S` ago (a killed
worker's), in either storage, and ends their MLflow child runs (`end_trial_runs`). An interrupted
multi-process sweep terminates its workers and fails the trials they were running (`run_workers`).

Every trial trains on the same split (the base config's seed) and is logged as a child MLflow run
of the sweep's parent run (`mlops_assets.core.cd.sweep_tracking`). A trial whose loss stops being
finite, or that runs out of GPU memory, is recorded FAILED and the study goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import pickle
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from mlops_assets.core.cd.config import TrainConfig
from mlops_assets.core.cd.dataset import TileRef
from mlops_assets.core.cd.train import DivergedError, EpochMetrics, train_change_model
from mlops_assets.core.redact import redact_text, redact_uri

#: The deployment setting naming the study storage (read by `mlops_assets.settings`).
STORAGE_VARIABLE = "MLOPS_OPTUNA_STORAGE"
#: ``mlflow`` tag values a sweep's runs carry (`sweep_tracking` searches by them).
PruneKind = Literal["median", "hyperband", "none"]

_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
#: Study user attributes that identify what a study was run on.
ATTR_COMMITS = "data_commits"
ATTR_SPACE = "search_space"
ATTR_FIXED = "fixed_config"
ATTR_GIT = "git_shas"
#: Trial user attributes.
ATTR_RUN = "mlflow_run_id"
ATTR_PARENT = "sweep_run_id"
ATTR_REASON = "fail_reason"
ATTR_EPOCHS = "epochs_run"
ATTR_WORKER = "worker"
ATTR_HEARTBEAT = "heartbeat"  # time.time() of the running trial's worker's last sign of life
#: How often a running trial's worker stamps its heartbeat, and after how long without one the
#: trial counts as abandoned (its worker was killed) and is failed by whoever joins the study.
HEARTBEAT_S = 30.0
STALE_AFTER_S = 180.0
#: How long a worker waits for the others to start (spawning imports PyTorch: seconds each).
READY_TIMEOUT_S = 300.0
#: Fields of `TrainConfig` that change how fast or where a trial runs, not what it learns.
_NOT_IDENTITY = ("device", "num_threads", "overlay_images")


class SweepError(ValueError):
    """A sweep cannot start or cannot go on: the message names the setting and the problem."""


# The search space ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Param:
    kind: Literal["float", "int", "bool"]
    minimum: float  # the least value a trial may use (inclusive)
    maximum: float = math.inf


#: What can be searched: `TrainConfig` fields, and ``decoder_width``, the first (widest) decoder
#: stage; the others halve down to 8 channels, as every preset's decoder does.
PARAMS: dict[str, _Param] = {
    "learning_rate": _Param("float", 1e-9, 10.0),
    "weight_decay": _Param("float", 0.0, 1.0),
    "batch_size": _Param("int", 1, 1024),
    "encoder_depth": _Param("int", 1, 5),
    "decoder_width": _Param("int", 8, 4096),
    "dice_weight": _Param("float", 0.0, 100.0),
    "augment": _Param("bool", 0, 1),
}


@dataclass(frozen=True)
class ParamRange:
    """One searched parameter: ``low``..``high`` (``log``: on a log scale), or ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[float | int | bool, ...] = ()

    def describe(self) -> str:
        """``[low, high] log`` or ``{a, b}``."""
        if self.choices:
            return "{" + ", ".join(str(c) for c in self.choices) + "}"
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")

    def contains(self, value: float | bool) -> bool:
        """Whether ``value`` is one of the choices, or inside the range."""
        if self.choices:
            return value in self.choices
        return self.low is not None and self.high is not None and self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what a study stores and compares)."""
        if self.choices:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log}


SearchSpace = Mapping[str, ParamRange]


def decoder_channels(width: int, depth: int) -> tuple[int, ...]:
    """``width`` halving per stage, never below 8: (64, 32, 16, 8) for 64 and depth 4."""
    return tuple(max(8, width >> i) for i in range(depth))


def default_space(base: TrainConfig) -> dict[str, ParamRange]:
    """A space around ``base`` (a preset): every default value lies inside it."""
    width, depth, batch = base.decoder_channels[0], base.encoder_depth, base.batch_size
    return {
        "learning_rate": ParamRange(base.learning_rate / 10, base.learning_rate * 10, log=True),
        "weight_decay": ParamRange(1e-6, 1e-2, log=True),
        "batch_size": ParamRange(choices=(max(1, batch // 2), batch, batch * 2)),
        "encoder_depth": ParamRange(max(2, depth - 1), min(5, depth + 1)),
        "decoder_width": ParamRange(choices=(max(8, width // 2), width, width * 2)),
        "dice_weight": ParamRange(0.0, 2.0),
        "augment": ParamRange(choices=(True, False)),
    }


def _number(name: str, what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SweepError(f"search_space.{name}: {what} {value!r} is not a finite number")
    return float(value)


def _check_value(name: str, value: float) -> None:
    spec = PARAMS[name]
    if not spec.minimum <= value <= spec.maximum:
        raise SweepError(
            f"search_space.{name}: {value:g} is outside [{spec.minimum:g}, {spec.maximum:g}]"
        )
    if spec.kind == "int" and value != int(value):
        raise SweepError(f"search_space.{name}: {value:g} is not a whole number")


def parse_range(name: str, raw: Mapping[str, Any] | ParamRange) -> ParamRange:
    """Check one parameter's range (from run config or JSON); `SweepError` naming it otherwise."""
    if name not in PARAMS:
        raise SweepError(f"search_space: unknown parameter {name!r} (known: {', '.join(PARAMS)})")
    spec = PARAMS[name]
    if isinstance(raw, ParamRange):
        raw = {"low": raw.low, "high": raw.high, "log": raw.log, "choices": list(raw.choices)}
    unknown = sorted(set(raw) - {"low", "high", "log", "choices"})
    if unknown:
        raise SweepError(f"search_space.{name}: unknown key(s) {', '.join(unknown)}")
    choices = list(raw.get("choices") or ())
    low, high = raw.get("low"), raw.get("high")
    if choices and (low is not None or high is not None):
        raise SweepError(f"search_space.{name}: give low and high, or choices, not both")
    if choices:
        if spec.kind == "bool":
            if any(c not in (True, False, 0, 1) for c in choices):
                raise SweepError(f"search_space.{name}: choices must be true/false, got {choices}")
            values: list[float | int | bool] = [bool(c) for c in choices]
        else:
            values = []
            for c in choices:
                number = _number(name, "choice", c)
                _check_value(name, number)
                values.append(int(number) if spec.kind == "int" else number)
        if len(set(values)) != len(values):
            raise SweepError(f"search_space.{name}: choices {choices} repeat a value")
        return ParamRange(choices=tuple(values))
    if spec.kind == "bool":
        raise SweepError(f"search_space.{name}: give choices [true, false], not a range")
    if low is None or high is None:
        raise SweepError(f"search_space.{name}: give low and high, or choices")
    lo, hi = _number(name, "low", low), _number(name, "high", high)
    if lo > hi:
        raise SweepError(f"search_space.{name}: low {lo:g} > high {hi:g}")
    _check_value(name, lo)
    _check_value(name, hi)
    log = bool(raw.get("log", False))
    if log and lo <= 0:
        raise SweepError(f"search_space.{name}: a log scale needs low > 0, got {lo:g}")
    if spec.kind == "int":
        return ParamRange(int(lo), int(hi), log)
    return ParamRange(lo, hi, log)


def parse_space(raw: Mapping[str, Mapping[str, Any] | ParamRange]) -> dict[str, ParamRange]:
    """A checked search space; an empty one, or any bad entry, is a `SweepError`."""
    if not raw:
        raise SweepError(f"search_space is empty: give at least one of {', '.join(PARAMS)}")
    return {name: parse_range(name, raw[name]) for name in sorted(raw)}


def space_json(space: SearchSpace) -> str:
    """The canonical JSON of a space (equal spaces, equal strings)."""
    return json.dumps({k: space[k].to_dict() for k in sorted(space)}, sort_keys=True)


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """The trial's value of every searched parameter."""
    params: dict[str, Any] = {}
    for name, r in space.items():
        if r.choices:
            params[name] = trial.suggest_categorical(name, list(r.choices))
        elif PARAMS[name].kind == "int":
            assert r.low is not None and r.high is not None
            params[name] = trial.suggest_int(name, int(r.low), int(r.high), log=r.log)
        else:
            assert r.low is not None and r.high is not None
            params[name] = trial.suggest_float(name, r.low, r.high, log=r.log)
    return params


def overrides(params: Mapping[str, Any], base: TrainConfig) -> dict[str, Any]:
    """`TrainConfig` fields for searched ``params`` (``decoder_width`` becomes the channels)."""
    changes = {k: v for k, v in params.items() if k != "decoder_width"}
    if "encoder_depth" in params or "decoder_width" in params:
        depth = int(params.get("encoder_depth", base.encoder_depth))
        width = int(params.get("decoder_width", base.decoder_channels[0]))
        changes["decoder_channels"] = decoder_channels(width, depth)
    for name in ("batch_size", "encoder_depth"):
        if name in changes:
            changes[name] = int(changes[name])
    if "augment" in changes:
        changes["augment"] = bool(changes["augment"])
    return changes


def apply(base: TrainConfig, changes: Mapping[str, Any]) -> TrainConfig:
    """``base`` with ``changes`` (`TrainConfig` field names; lists become tuples)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise SweepError(f"not TrainConfig fields: {', '.join(unknown)}")
    typed = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
    return dataclasses.replace(base, **typed)


def default_params(base: TrainConfig, space: SearchSpace) -> dict[str, Any]:
    """Trial 0: the base config's value of each searched parameter that lies in the space."""
    values: dict[str, Any] = {
        "learning_rate": base.learning_rate,
        "weight_decay": base.weight_decay,
        "batch_size": base.batch_size,
        "encoder_depth": base.encoder_depth,
        "decoder_width": base.decoder_channels[0],
        "dice_weight": base.dice_weight,
        "augment": base.augment,
    }
    inside: dict[str, Any] = {}
    for name, r in space.items():
        if r.contains(values[name]):
            inside[name] = values[name]
    return inside


# The sweep's settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep searches and how long; ``space`` None: `default_space` of the base config."""

    study_name: str
    n_trials: int = 20
    timeout_s: float | None = None
    n_workers: int = 1
    pruner: PruneKind = "median"
    # Median: trials that must finish before any is pruned, and epochs never pruned in.
    pruner_startup_trials: int = 2
    pruner_warmup_epochs: int = 0
    seed: int = 0  # the sampler's; trial n's random draws are seeded by (seed, n)
    space: Mapping[str, ParamRange | Mapping[str, Any]] | None = None  # checked on creation

    def __post_init__(self) -> None:
        if not _STUDY_NAME.match(self.study_name):
            raise SweepError(
                f"study_name {self.study_name!r}: use 1-128 letters, digits, '_', '.', '-'"
            )
        if self.n_trials < 1:
            raise SweepError(f"n_trials {self.n_trials} must be >= 1")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise SweepError(f"timeout_s {self.timeout_s} must be > 0 (or unset)")
        if not 1 <= self.n_workers <= 64:
            raise SweepError(f"n_workers {self.n_workers} must be in [1, 64]")
        if self.pruner not in ("median", "hyperband", "none"):
            raise SweepError(f"pruner {self.pruner!r}: choose median, hyperband or none")
        if min(self.pruner_startup_trials, self.pruner_warmup_epochs) < 0:
            raise SweepError("pruner_startup_trials and pruner_warmup_epochs must be >= 0")
        if self.space is not None:
            object.__setattr__(self, "space", parse_space(self.space))

    def resolved_space(self, base: TrainConfig) -> dict[str, ParamRange]:
        """The space searched: the configured one, or the default around ``base``."""
        return parse_space(self.space) if self.space is not None else default_space(base)


def make_pruner(sweep: SweepConfig, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner ``sweep`` names, stepping in epochs."""
    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=sweep.pruner_startup_trials,
            n_warmup_steps=sweep.pruner_warmup_epochs,
        )
    if sweep.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs))
    return optuna.pruners.NopPruner()


# Storage and the study ----------------------------------------------------------------------------


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The study storage ``url`` names.

    ``postgresql://...`` (or ``sqlite:///...``) is Optuna's RDB storage; anything else is the path
    of a journal file (safe for several processes), created with its folder.

    An unreachable database is a `SweepError` naming the setting, the password masked.
    """
    if url.split(":", 1)[0].split("+", 1)[0] in _RDB_SCHEMES:
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            kwargs["connect_args"] = {"connect_timeout": 10}
        try:
            # No RDB heartbeat: Optuna beats and fails stale trials only inside Study.optimize
            # (and warns on every ask otherwise); this module's own heartbeat works in both
            # storages (`fail_stale_trials`).
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception as exc:  # sqlalchemy's errors vary by driver; all mean "cannot use it"
            detail = redact_text(" ".join(str(exc).split()))[:300]
            raise SweepError(
                f"study storage {redact_uri(url)} ({STORAGE_VARIABLE}) is unreachable: "
                f"{type(exc).__name__}: {detail}"
            ) from None
    path = Path(url.removeprefix("journal://")).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SweepError(
            f"study storage {path} ({STORAGE_VARIABLE}): cannot create its folder: {exc.strerror}"
        ) from None
    return JournalStorage(JournalFileBackend(str(path)))


@dataclass(frozen=True)
class StudyIdentity:
    """What a study's trials were run on; a study resumes only on the same."""

    data_commits: dict[str, str]  # scene id -> lakeFS commit of its tiles
    space: str  # `space_json`
    fixed: str  # the base config's JSON, without searched and speed-only fields
    git_sha: str

    @classmethod
    def of(
        cls, refs: Sequence[TileRef], base: TrainConfig, space: SearchSpace, git_sha: str
    ) -> StudyIdentity:
        """The identity of a sweep over ``refs``."""
        commits = {r.index.scene_id: r.index.commit_id for r in refs}
        searched = set(overrides({k: 0 for k in space}, base))
        fixed = {
            k: v
            for k, v in dataclasses.asdict(base).items()
            if k not in searched and k not in _NOT_IDENTITY
        }
        # The same commit tiled otherwise (tile size, overlap ...) is other data too.
        fixed["tile_config_hashes"] = sorted({r.index.config_hash for r in refs})
        return cls(dict(sorted(commits.items())), space_json(space), json.dumps(fixed), git_sha)


def prepare_study(
    storage: optuna.storages.BaseStorage, name: str, identity: StudyIdentity
) -> tuple[optuna.Study, bool]:
    """Create the study ``name``, or load it when what it ran on matches ``identity``.

    Returns the study and whether it is new. Resuming on other tiles, another search space or
    other fixed settings is a `SweepError` that says what differs.
    """
    study = optuna.create_study(
        storage=storage, study_name=name, direction="maximize", load_if_exists=True
    )
    attrs = study.user_attrs
    if ATTR_COMMITS not in attrs:
        if study.get_trials(deepcopy=False):
            raise SweepError(
                f"study {name!r} has trials but no record of the data it ran on: choose another "
                "study_name"
            )
        study.set_user_attr(ATTR_COMMITS, identity.data_commits)
        study.set_user_attr(ATTR_SPACE, identity.space)
        study.set_user_attr(ATTR_FIXED, identity.fixed)
        study.set_user_attr(ATTR_GIT, [identity.git_sha])
        return study, True
    if attrs[ATTR_COMMITS] != identity.data_commits:
        raise SweepError(
            f"study {name!r} was run on tiles at lakeFS commits "
            f"{_short(attrs[ATTR_COMMITS])}; these tiles are at {_short(identity.data_commits)}: "
            "trials on other data are not comparable; choose another study_name"
        )
    if attrs[ATTR_SPACE] != identity.space:
        raise SweepError(
            f"study {name!r} has another search space ({attrs[ATTR_SPACE]}; asked: "
            f"{identity.space}): choose another study_name"
        )
    if attrs[ATTR_FIXED] != identity.fixed:
        before, now = json.loads(attrs[ATTR_FIXED]), json.loads(identity.fixed)
        differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        raise SweepError(
            f"study {name!r} was run with other training settings ({', '.join(differ)} differ; "
            "e.g. another preset): choose another study_name"
        )
    shas = list(attrs.get(ATTR_GIT, []))
    if identity.git_sha not in shas:
        study.set_user_attr(ATTR_GIT, [*shas, identity.git_sha])
    return study, False


def _short(commits: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{k}: {v[:12]}" for k, v in sorted(commits.items())) + "}"


# Seeds, heartbeats, abandoned trials --------------------------------------------------------------


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number``'s random draws in a study seeded ``seed`` (32 bits)."""
    digest = hashlib.sha256(f"{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """TPE whose random draws for trial *n* are seeded by ``(seed, n)``, not by the process.

    A `TPESampler(seed)` built afresh in each process or run starts the same random sequence,
    so a resumed study, a second worker or a second run would repeat the first trials' params.
    Trial numbers are unique in a study, so here no two trials share a seed, and a new study
    with one worker still draws the same trials every time.
    """

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._tpe = optuna.samplers.TPESampler(seed=trial_seed(seed, 0))

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Seed this trial's draws (TPE keeps no other state between trials)."""
        self._tpe = optuna.samplers.TPESampler(seed=trial_seed(self._seed, trial.number))
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, optuna.distributions.BaseDistribution]:
        """TPE's."""
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, optuna.distributions.BaseDistribution],
    ) -> dict[str, Any]:
        """TPE's."""
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: optuna.distributions.BaseDistribution,
    ) -> Any:
        """TPE's."""
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """TPE's."""
        self._tpe.after_trial(study, trial, state, values)


@contextlib.contextmanager
def heartbeat(trial: optuna.Trial, interval_s: float = HEARTBEAT_S) -> Generator[None]:
    """Stamp ``trial`` with the time every ``interval_s`` while the block runs (a thread)."""
    trial.set_user_attr(ATTR_HEARTBEAT, time.time())
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            # A storage hiccup only delays this beat; the next one retries. The trial is
            # failed as stale only after STALE_AFTER_S (six beats) without one.
            with contextlib.suppress(Exception):
                trial.set_user_attr(ATTR_HEARTBEAT, time.time())

    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _fail(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Mark ``trial`` FAIL with ``reason``; False when it finished meanwhile."""
    try:
        # Optuna has no public call to write the attributes of a trial one did not ask for.
        study._storage.set_trial_user_attr(trial._trial_id, ATTR_REASON, reason)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True


def fail_stale_trials(study: optuna.Study, stale_after_s: float | None = None) -> list[int]:
    """Fail the running trials without a heartbeat for ``stale_after_s``; their numbers.

    Their worker was killed (or its machine lost): nothing else would ever finish them, and a
    RUNNING trial counts against the budget and shows in the dashboard forever. A trial that
    never beat (another version's) counts from its start. ``stale_after_s``: `STALE_AFTER_S`.
    Heartbeats are the workers' clocks: hosts sharing a study must keep time (NTP).
    """
    stale_after_s = STALE_AFTER_S if stale_after_s is None else stale_after_s
    now = time.time()
    failed: list[int] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = trial.user_attrs.get(ATTR_HEARTBEAT)
        if isinstance(beat, int | float):
            last = float(beat)
        else:
            last = now if trial.datetime_start is None else trial.datetime_start.timestamp()
        if now - last > stale_after_s:
            silent = f"abandoned: no heartbeat from its worker for {now - last:.0f} s"
            if _fail(study, trial, silent):
                failed.append(trial.number)
    return failed


def fail_running_trials(study: optuna.Study, parent_run_id: str, reason: str) -> list[int]:
    """Fail the running trials of the sweep run ``parent_run_id`` (its workers were stopped)."""
    failed: list[int] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(ATTR_PARENT) == parent_run_id and _fail(study, trial, reason):
            failed.append(trial.number)
    return failed


# Workers ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackingTarget:
    """Where trials are logged: enough to build a `Tracker` in another process."""

    tracking_uri: str
    experiment: str
    artifact_root: str | None
    parent_run_id: str
    tags: dict[str, str] = field(default_factory=lambda: dict[str, str]())


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker process needs to join the study (picklable)."""

    storage_url: str
    study_name: str
    refs: tuple[TileRef, ...]
    base: TrainConfig
    space: dict[str, ParamRange]
    sweep: SweepConfig
    target_trials: int  # stop asking once this many trials of the study have started
    deadline: float | None  # time.time() after which no trial starts
    tracking: TrackingTarget
    worker: int = 0


@dataclass(frozen=True)
class TrialOutcome:
    """One evaluated trial, as its worker saw it."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL
    value: float | None
    params: dict[str, Any]
    epochs: int
    seconds: float
    run_id: str
    reason: str = ""
    worker: int = 0


#: ``on_trial(outcome)``: called in the main process for each trial it evaluates itself.
TrialCallback = Callable[[TrialOutcome], None]


def _tolerated(exc: BaseException) -> bool:
    """A trial's own failure (the study goes on), not the sweep's."""
    return isinstance(exc, DivergedError | torch.OutOfMemoryError)


def evaluate_trial(
    trial: optuna.Trial, job: WorkerJob, tracker: Any
) -> tuple[TrialOutcome, TrialState, float | None]:
    """Train one trial through `train_change_model`, logged as a child run of the sweep.

    ``tracker`` is a `mlops_assets.core.tracking.Tracker`.
    """
    params = suggest(trial, job.space)
    config = apply(job.base, overrides(params, job.base))
    epochs: list[EpochMetrics] = []
    tags = {**job.tracking.tags, "optuna.study_name": job.study_name}
    tags |= {"optuna.trial_number": str(trial.number), "mlops.kind": "cd-sweep-trial"}
    started = time.perf_counter()
    state, value, reason, run_id = TrialState.COMPLETE, None, "", ""
    try:
        with tracker.run(
            f"trial-{trial.number}", tags, parent_run_id=job.tracking.parent_run_id
        ) as run_id:
            trial.set_user_attr(ATTR_RUN, run_id)
            shown = params | {"decoder_channels": list(config.decoder_channels)}
            tracker.log_params(run_id, shown | {"epochs": config.epochs, "worker": job.worker})

            def on_epoch(m: EpochMetrics) -> None:
                values = {k: v for k, v in dataclasses.asdict(m).items() if k != "epoch"}
                tracker.log_metrics(run_id, values, step=m.epoch)
                epochs.append(m)
                trial.report(m.f1, m.epoch)
                # After the last epoch the trial is done: pruning it would only drop its value.
                if m.epoch < config.epochs and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {m.epoch} (F1 {m.f1:.4f})")

            try:
                result = train_change_model(job.refs, config, on_epoch)
                value = result.best.f1
            except optuna.TrialPruned as exc:
                state, reason = TrialState.PRUNED, str(exc)
            seconds = time.perf_counter() - started
            tracker.set_tags(run_id, {"optuna.state": state.name})
            done = {"duration_s": seconds, "epochs_run": len(epochs)}
            tracker.log_metrics(run_id, done | ({"value": value} if value is not None else {}), 0)
    except BaseException as exc:
        if not _tolerated(exc):
            job_failed = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr(ATTR_REASON, redact_text(job_failed)[:500])
            raise
        state, reason = TrialState.FAIL, redact_text(" ".join(str(exc).split()))[:500]
        if run_id:
            tracker.set_tags(run_id, {"optuna.state": state.name, "fail_reason": reason})
    seconds = time.perf_counter() - started
    trial.set_user_attr(ATTR_EPOCHS, len(epochs))
    if reason:
        trial.set_user_attr(ATTR_REASON, reason)
    outcome = TrialOutcome(
        number=trial.number,
        state=state.name,
        value=value,
        params=params,
        epochs=len(epochs),
        seconds=seconds,
        run_id=run_id,
        reason=reason,
        worker=job.worker,
    )
    return outcome, state, value


def run_worker(
    job: WorkerJob, on_trial: TrialCallback | None = None, ready: Any = None
) -> list[TrialOutcome]:
    """Join the study and evaluate trials until the budget or the deadline; what it evaluated.

    ``ready`` (a barrier shared by the workers) holds this worker until every worker has started,
    at most `READY_TIMEOUT_S`: one that starts sooner would otherwise take the first trials alone.
    Before each trial it fails the study's abandoned trials (`fail_stale_trials`); while a trial
    runs, its heartbeat goes on. Interrupted, it fails the trial it was running and re-raises.
    """
    from mlops_assets.core.tracking import Tracker

    if ready is not None:
        with contextlib.suppress(threading.BrokenBarrierError):  # a late worker: go on anyway
            ready.wait(READY_TIMEOUT_S)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(job.storage_url)
    study = optuna.load_study(
        study_name=job.study_name,
        storage=storage,
        sampler=TrialSeededSampler(job.sweep.seed),
        pruner=make_pruner(job.sweep, job.base.epochs),
    )
    root = Path(job.tracking.artifact_root) if job.tracking.artifact_root else None
    tracker = Tracker(job.tracking.tracking_uri, job.tracking.experiment, root)
    outcomes: list[TrialOutcome] = []
    while job.deadline is None or time.time() < job.deadline:
        abandoned = fail_stale_trials(study)
        if abandoned:
            end_trial_runs(study, abandoned, job.tracking)
        # Several workers may pass this check at once: the budget can be exceeded by at most
        # n_workers - 1 trials (Optuna's own n_trials with several processes behaves alike).
        if len(started(study)) >= job.target_trials:
            break
        trial = study.ask()
        try:
            trial.set_user_attr(ATTR_PARENT, job.tracking.parent_run_id)
            trial.set_user_attr(ATTR_WORKER, job.worker)
            with heartbeat(trial):
                outcome, state, value = evaluate_trial(trial, job, tracker)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        if state == TrialState.COMPLETE:
            study.tell(trial, value)
        else:
            study.tell(trial, state=state)
        outcomes.append(outcome)
        if on_trial is not None:
            on_trial(outcome)
    return outcomes


#: What a spawned worker hands back: its number, its outcomes, and its error (None when none).
_Report = tuple[int, list[TrialOutcome], BaseException | None]


def _exit_with_parent() -> None:
    """Exit this process at once when the process that spawned it is gone (a watcher thread).

    A sweep killed outright (SIGKILL, OOM) cannot stop its workers; they must not train on
    unseen. Their running trial is then failed as stale (`fail_stale_trials`).
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _spawned_worker(job: WorkerJob, ready: Any, results: Any) -> None:
    """`run_worker` in a spawned process (top-level, so it pickles); reports on ``results``."""
    _exit_with_parent()
    try:
        report: _Report = (job.worker, run_worker(job, ready=ready), None)
    except BaseException as exc:
        error: BaseException = exc
        try:
            pickle.dumps(exc)
        except Exception:  # an exception that does not pickle still reaches the caller
            text = redact_text(" ".join(f"{type(exc).__name__}: {exc}".split()))[:500]
            error = SweepError(f"worker {job.worker} failed: {text}")
        report = (job.worker, [], error)
    with contextlib.suppress(Exception):  # the main process is gone: nobody to tell
        results.put(report)


def outcome_of(trial: FrozenTrial) -> TrialOutcome:
    """A finished trial as its worker reported it (read back from the study)."""
    return TrialOutcome(
        number=trial.number,
        state=trial.state.name,
        value=trial.value,
        params=dict(trial.params),
        epochs=int(trial.user_attrs.get(ATTR_EPOCHS, len(trial.intermediate_values))),
        seconds=0.0 if trial.duration is None else trial.duration.total_seconds(),
        run_id=str(trial.user_attrs.get(ATTR_RUN, "")),
        reason=str(trial.user_attrs.get(ATTR_REASON, "")),
        worker=int(trial.user_attrs.get(ATTR_WORKER, 0)),
    )


#: How long a terminated worker may take to exit before it is killed.
_STOP_GRACE_S = 10.0


def _stop(processes: Sequence[Any]) -> None:
    """Terminate (SIGTERM), then kill what is still alive after `_STOP_GRACE_S`."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    limit = time.monotonic() + _STOP_GRACE_S
    for process in processes:
        process.join(max(0.0, limit - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def end_trial_runs(study: optuna.Study, numbers: Sequence[int], target: TrackingTarget) -> None:
    """End the MLflow child runs of failed trials whose worker could not (KILLED, with why).

    Best effort: the MLflow side of a trial already failed in the study is bookkeeping, and an
    unreachable tracker must not stop a sweep (or hide why it stopped).
    """
    from mlops_assets.core.tracking import Tracker

    root = Path(target.artifact_root) if target.artifact_root else None
    tracker = Tracker(target.tracking_uri, target.experiment, root)
    for trial in study.get_trials(deepcopy=False):
        run_id = str(trial.user_attrs.get(ATTR_RUN, ""))
        if trial.number in numbers and run_id:
            reason = str(trial.user_attrs.get(ATTR_REASON, "the worker stopped"))
            with contextlib.suppress(Exception):
                tracker.set_tags(run_id, {"optuna.state": "FAIL", "fail_reason": reason})
                tracker.client.set_terminated(run_id, "KILLED")


@contextlib.contextmanager
def _sigterm_interrupts() -> Generator[None]:
    """SIGTERM raises KeyboardInterrupt in the block, where it would kill Python outright.

    Only where nobody handles SIGTERM yet (Dagster's own processes map it to their interrupt),
    and only in the main thread (where Python runs signal handlers).
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_workers(
    jobs: Sequence[WorkerJob], on_trial: TrialCallback | None, poll_s: float = 2.0
) -> list[TrialOutcome]:
    """One job in this process, or each job in its own spawned process, all at once.

    With several processes, they start together (none front-runs the others while they import
    PyTorch); this process waits and reports each trial they finish through ``on_trial``. A
    worker's error is raised once every worker is done; a worker that dies without a word is a
    `SweepError`. Interrupted (KeyboardInterrupt, Dagster's terminate, SIGTERM) or failing, it
    terminates the workers at once and fails the trials they were running, then re-raises.
    """
    if len(jobs) == 1:
        return run_worker(jobs[0], on_trial)
    context = multiprocessing.get_context("spawn")  # forking a process holding PyTorch is unsafe
    study = optuna.load_study(
        study_name=jobs[0].study_name, storage=open_storage(jobs[0].storage_url)
    )
    seen = {t.number for t in finished(study)}

    def report_finished() -> None:
        for trial in finished(study):
            if trial.number not in seen and on_trial is not None:
                on_trial(outcome_of(trial))
            seen.add(trial.number)

    reports: dict[int, _Report] = {}
    processes: list[Any] = []
    # No Manager: its server process would outlive a killed sweep (and hold its pipes open).
    ready, results = context.Barrier(len(jobs)), context.Queue()
    with _sigterm_interrupts():
        try:
            for job in jobs:
                process = context.Process(
                    target=_spawned_worker, args=(job, ready, results), name=f"sweep-{job.worker}"
                )
                process.start()
                processes.append(process)
            while len(reports) < len(jobs):
                with contextlib.suppress(queue.Empty):
                    report: _Report = results.get(timeout=poll_s)
                    reports[report[0]] = report
                    continue  # drain every report before looking for silent deaths
                report_finished()
                dead = [
                    (job.worker, process.exitcode)
                    for job, process in zip(jobs, processes, strict=True)
                    if job.worker not in reports and process.exitcode is not None
                ]
                if dead and results.empty():  # a report put just before it exited is read first
                    worker, code = dead[0]
                    raise SweepError(
                        f"study {jobs[0].study_name!r}: worker {worker} died without a report "
                        f"(exit code {code}; out of memory?)"
                    )
            report_finished()
        except BaseException:
            _stop(processes)
            reason = "interrupted: the sweep was stopped while this trial ran"
            # Best effort on the way out: what stopped the sweep is what must surface.
            with contextlib.suppress(Exception):
                stopped = fail_running_trials(study, jobs[0].tracking.parent_run_id, reason)
                end_trial_runs(study, stopped, jobs[0].tracking)
            raise
        finally:
            for process in processes:
                process.join()
    errors = [r[2] for _, r in sorted(reports.items()) if r[2] is not None]
    if errors:
        raise errors[0]
    return sorted((o for r in reports.values() for o in r[1]), key=lambda o: o.number)


def worker_threads(base: TrainConfig, n_workers: int) -> int:
    """PyTorch threads per worker: the configured count, else the cores shared out."""
    if base.num_threads or n_workers == 1:
        return base.num_threads
    return max(1, (os.cpu_count() or 1) // n_workers)


def started(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials that ran or run (not those enqueued and waiting)."""
    return [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """The study's finished trials (complete, pruned, failed), by number."""
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sorted(study.get_trials(deepcopy=False, states=states), key=lambda t: t.number)
