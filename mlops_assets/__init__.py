"""mlops-assets: a Dagster asset graph from versioned imagery to registered, rendered models.

``defs`` (the Dagster code location) is resolved lazily, so importing the pure core
(`mlops_assets.core`) or the CLI never imports Dagster's definitions or reads the environment.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "defs":
        from mlops_assets.definitions import defs

        return defs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return ["defs"]
