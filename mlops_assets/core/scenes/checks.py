"""Check outcomes and scene fingerprints, independent of any orchestrator."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CheckOutcome:
    """One check on one scene: passed or not, why, and figures worth showing."""

    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=lambda: dict[str, Any]())


def content_hash(files: Iterable[tuple[str, str]], problems: Mapping[str, str]) -> str:
    """A fingerprint of a scene's own files (path, checksum) and problems.

    Used as the scene asset's data version: a commit that changes other scenes leaves it equal.
    """
    digest = hashlib.sha256()
    for path, checksum in files:
        digest.update(f"{path}\0{checksum}\n".encode())
    for path, problem in sorted(problems.items()):
        digest.update(f"{path}\0{problem}\n".encode())
    return digest.hexdigest()[:16]


def failures(outcomes: list[CheckOutcome]) -> list[CheckOutcome]:
    """The outcomes that did not pass."""
    return [o for o in outcomes if not o.passed]
