"""From the promised reaction time to the interval Dagster is asked to tick at.

``MLOPS_SENSOR_INTERVAL_S`` is what a user cares about: the longest a commit (or an alias move,
or a failed check) waits before its runs exist. Dagster's ``minimum_interval_seconds`` is
something else: the sensor daemon looks for due sensors only every 5 s
(``MIN_INTERVAL_LOOP_TIME`` in ``dagster/_daemon/sensor.py``) and then spends a few seconds on the
evaluation (a gRPC call to the code server, the store diff, the partition and run writes). A
sensor asked to tick every 30 s therefore reacted to a commit made just after a tick in 34 s on
this project's machines. Ticking earlier by the loop period plus an evaluation allowance keeps
the worst case inside the configured interval; ticks are cheap when nothing changed (one head
lookup).
"""

DAEMON_LOOP_S = 5  # Dagster's sensor daemon loop period
EVALUATION_ALLOWANCE_S = 3  # the tick itself: the code-server call and the writes


def tick_interval_s(reaction_s: int) -> int:
    """``minimum_interval_seconds`` for a sensor that must react within ``reaction_s`` seconds.

    Under ``DAEMON_LOOP_S + EVALUATION_ALLOWANCE_S + 1`` s the daemon's own loop is the limit and
    the sensor simply ticks every second.
    """
    if reaction_s < 1:
        raise ValueError(f"a sensor interval must be at least 1 s, got {reaction_s}")
    return max(1, reaction_s - DAEMON_LOOP_S - EVALUATION_ALLOWANCE_S)
