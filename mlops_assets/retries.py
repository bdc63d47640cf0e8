"""Retry policies of the steps that talk to the scene store, S3 and MLflow.

A step that fails because a server restarted, throttled or dropped a connection is run again by
Dagster after an exponentially growing, jittered delay: before retry *n* (1, 2, ...) Dagster waits
``(2**n - 1) * delay``, +/- up to ``delay`` (`dagster._core.definitions.policy.calculate_delay`),
so a short outage costs a retry rather than a run, and the retries of many steps spread
out instead of hitting a recovering server together. The steps are idempotent: writes go through
a short-lived branch that is merged in one step, tile sets are published marker last under a key
that names their inputs, and a registration finds the version its MLflow run already produced
(`mlops_assets.core.tracking.Tracker.register`). Bad input fails the same way every time, so it
is not retried (`bad_input`: ``dg.Failure`` with ``allow_retries=False``).
"""

from __future__ import annotations

import dagster as dg

#: Steps that read or write the scene store, the S3 output store or MLflow.
EXTERNAL_RETRY = dg.RetryPolicy(
    max_retries=3,
    delay=2.0,  # seconds before retries 1, 2, 3: 2, 6, 14 (each +/- up to 2)
    backoff=dg.Backoff.EXPONENTIAL,
    jitter=dg.Jitter.PLUS_MINUS,
)

#: Training steps: a retry repeats minutes of work, so fewer and later.
TRAINING_RETRY = dg.RetryPolicy(
    max_retries=2,
    delay=5.0,  # seconds before retries 1, 2: 5, 15 (each +/- up to 5)
    backoff=dg.Backoff.EXPONENTIAL,
    jitter=dg.Jitter.PLUS_MINUS,
)


def bad_input(description: str) -> dg.Failure:
    """A failure no retry can fix (missing file, failed check): fail once, clearly."""
    return dg.Failure(description=description, allow_retries=False)
