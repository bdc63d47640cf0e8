"""The outcome of a data-quality check, independent of any orchestrator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CheckOutcome:
    """One check on one scene: passed or not, why, and figures worth showing."""

    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=lambda: dict[str, Any]())


def failures(outcomes: list[CheckOutcome]) -> list[CheckOutcome]:
    """The outcomes that did not pass."""
    return [o for o in outcomes if not o.passed]
