"""Code lineage: which commit of this repository produced an output."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path


@functools.cache
def git_sha(repo_dir: Path) -> str:
    """The checked-out commit of ``repo_dir`` (``-dirty`` if tracked files changed), or ``unknown``.

    Cached per directory: the answer cannot change while a process runs from the same checkout.
    """
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo_dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha
