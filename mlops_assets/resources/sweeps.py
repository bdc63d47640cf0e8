"""Where hyper-parameter sweeps keep their Optuna studies."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from mlops_assets.core.redact import redact_uri


# Dagster resources subclass ConfigurableResource unparameterised, as its API intends.
class OptunaStorageResource(dg.ConfigurableResource):  # pyright: ignore[reportMissingTypeArgument]
    """The study storage every sweep run and worker joins: a journal file or a database."""

    storage: str = Field(
        description="A journal file path (embedded default, safe for several processes) or a "
        "database URL such as postgresql+psycopg2://user:password@host/optuna "
        "(MLOPS_OPTUNA_STORAGE; kept an EnvVar there, it holds a password)."
    )

    @property
    def display(self) -> str:
        """The storage without credentials."""
        return redact_uri(self.storage)
