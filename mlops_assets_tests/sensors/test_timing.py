import pytest

from mlops_assets.sensors.timing import DAEMON_LOOP_S, EVALUATION_ALLOWANCE_S, tick_interval_s


def test_the_default_30_s_reaction_ticks_every_22_s() -> None:
    assert tick_interval_s(30) == 22
    assert tick_interval_s(30) + DAEMON_LOOP_S + EVALUATION_ALLOWANCE_S == 30


@pytest.mark.parametrize(("reaction", "tick"), [(9, 1), (8, 1), (2, 1), (1, 1), (10, 2)])
def test_short_reactions_tick_every_second(reaction: int, tick: int) -> None:
    assert tick_interval_s(reaction) == tick


def test_a_reaction_under_one_second_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1 s, got 0"):
        tick_interval_s(0)
