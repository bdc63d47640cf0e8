"""mlops_assets.retries: transient faults cost a retry, bad input fails once."""

import dagster as dg
from dagster._core.execution.plan.objects import StepRetryData  # what STEP_UP_FOR_RETRY carries

from mlops_assets.core.store.types import StoreUnavailableError
from mlops_assets.retries import EXTERNAL_RETRY, TRAINING_RETRY, bad_input


def _fast(policy: dg.RetryPolicy) -> dg.RetryPolicy:
    """The same policy with millisecond delays, so the test takes no seconds."""
    return dg.RetryPolicy(
        max_retries=policy.max_retries, delay=0.01, backoff=policy.backoff, jitter=policy.jitter
    )


def test_the_policies_back_off_exponentially_with_jitter() -> None:
    for policy in (EXTERNAL_RETRY, TRAINING_RETRY):
        assert policy.backoff == dg.Backoff.EXPONENTIAL
        assert policy.jitter == dg.Jitter.PLUS_MINUS
        assert policy.max_retries >= 2 and (policy.delay or 0) > 0
    assert (TRAINING_RETRY.delay or 0) > (EXTERNAL_RETRY.delay or 0)


def _materialise(fails: int, error: Exception) -> tuple[dg.ExecuteInProcessResult, list[int]]:
    attempts: list[int] = []

    @dg.asset(retry_policy=_fast(EXTERNAL_RETRY))
    def flaky(context: dg.AssetExecutionContext) -> int:
        attempts.append(context.retry_number)
        if len(attempts) <= fails:
            raise error
        return len(attempts)

    with dg.instance_for_test() as instance:
        result = dg.materialize([flaky], instance=instance, raise_on_error=False)
    return result, attempts


def test_a_store_outage_costs_retries_not_the_run() -> None:
    result, attempts = _materialise(2, StoreUnavailableError("lakeFS at http://x unreachable"))
    assert result.success and result.output_for_node("flaky") == 3
    assert attempts == [0, 1, 2]


def test_retries_are_bounded() -> None:
    result, attempts = _materialise(10, StoreUnavailableError("lakeFS at http://x unreachable"))
    assert not result.success
    assert len(attempts) == EXTERNAL_RETRY.max_retries + 1


def test_bad_input_is_not_retried() -> None:
    result, attempts = _materialise(10, bad_input("cd/farm: pre.tif is missing"))
    assert not result.success and attempts == [0]


def _waits(policy: dg.RetryPolicy, scale: float) -> list[float]:
    """Seconds Dagster waits before each retry under ``policy`` (jitter off), from the event log.

    Measured with every delay divided by ``scale`` (so the test waits milliseconds), then scaled
    back: the waits grow in proportion to the delay.
    """

    @dg.asset(
        retry_policy=dg.RetryPolicy(policy.max_retries, (policy.delay or 0) / scale, policy.backoff)
    )
    def always_fails() -> None:
        raise StoreUnavailableError("lakeFS at http://x unreachable")

    with dg.instance_for_test() as instance:
        result = dg.materialize([always_fails], instance=instance, raise_on_error=False)
    retries = [e.event_specific_data for e in result.all_events if e.is_step_up_for_retry]
    return [
        round((d.seconds_to_wait or 0) * scale, 6) for d in retries if isinstance(d, StepRetryData)
    ]


def test_the_delays_are_the_ones_the_policies_state() -> None:
    # retries.py: before retry n Dagster waits (2**n - 1) * delay, +/- up to delay of jitter.
    assert _waits(EXTERNAL_RETRY, 200.0) == [2.0, 6.0, 14.0]
    assert _waits(TRAINING_RETRY, 500.0) == [5.0, 15.0]
    for n in (1, 2, 3):
        waits = {EXTERNAL_RETRY.calculate_delay(n) for _ in range(200)}
        centre = (2**n - 1) * 2.0
        assert centre - 2.0 <= min(waits) < max(waits) <= centre + 2.0
