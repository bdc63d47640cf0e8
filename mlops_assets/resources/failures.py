"""Expected errors of a step as a `dagster.Failure` with one clear line, not a traceback.

An unreachable tracker or store, or a scene that cannot be read, is such an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import dagster as dg


@contextlib.contextmanager
def failure_on(
    *errors: type[BaseException], label: str = "", allow_retries: bool = True
) -> Generator[None]:
    """Re-raise ``errors`` from the block as a `dagster.Failure`: ``label`` then the message.

    ``label`` names what failed, e.g. ``cd/x: ``.
    """
    try:
        yield
    except errors as exc:
        raise dg.Failure(description=f"{label}{exc}", allow_retries=allow_retries) from exc
