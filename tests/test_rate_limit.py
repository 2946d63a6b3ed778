import pytest
from hypothesis import given, strategies as st

from rmrrd.core.rate_limit import TokenBucket

pytestmark = pytest.mark.unit


def test_burst_then_refused_then_refilled() -> None:
    bucket = TokenBucket(rate=10.0, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.05) is False  # half a token
    assert bucket.take(0.1) is True  # one token after 0.1 s at 10/s
    assert bucket.take(0.1) is False


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=100.0, burst=2)
    bucket.take(0.0)
    assert [bucket.take(1000.0) for _ in range(3)] == [True, True, False]


def test_clock_going_backwards_grants_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


@given(st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=200))
def test_never_grants_more_than_burst_plus_rate_times_elapsed(times: list[float]) -> None:
    times.sort()
    bucket = TokenBucket(rate=2.0, burst=5)
    granted = sum(bucket.take(t) for t in times)
    assert granted <= 5 + 2.0 * (times[-1] - times[0]) + 1e-9


def test_rejects_nonsense_parameters() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=0)
