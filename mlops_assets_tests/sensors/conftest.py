"""Fixtures for the sensor tests."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """An in-memory Dagster instance (runs, dynamic partitions, materialisations) in milliseconds.

    Overrides the suite's SQLite instance, which spends seconds on migrations per test; a test
    that needs an instance ref (``evaluate_tick`` resolving partitions) opens that one itself.
    """
    memory = dg.DagsterInstance.ephemeral()
    try:
        yield memory
    finally:
        memory.dispose()
