"""mlops_assets.retries: transient faults cost a retry, bad input fails once."""

import dagster as dg

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
