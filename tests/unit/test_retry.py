import pytest

from worker.errors import FatalError, RetryableError
from worker.retry import RetryPolicy


def test_seed_backoff_is_2_4_8_seconds():
    policy = RetryPolicy(attempts=3, base_delay=2, factor=2, cap=60)
    assert [policy.delay(n) for n in (1, 2, 3)] == [2, 4, 8]


def test_cap_bounds_the_delay():
    assert RetryPolicy(attempts=10, base_delay=2, factor=2, cap=5).delay(6) == 5


def test_retryable_errors_are_retried_with_the_policy_delays():
    slept, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RetryableError("boom")
        return "ok"

    assert RetryPolicy(3, 2, 2, 60, sleep=slept.append).call(flaky, what="t") == "ok"
    assert slept == [2, 4] and len(calls) == 3


def test_attempts_are_bounded_and_last_error_reraised():
    calls = []

    def always():
        calls.append(1)
        raise RetryableError(f"try {len(calls)}")

    with pytest.raises(RetryableError, match="try 3"):
        RetryPolicy(3, 0, 2, 0).call(always, what="t")
    assert len(calls) == 3


def test_fatal_errors_are_not_retried():
    calls = []

    def fatal():
        calls.append(1)
        raise FatalError("no")

    with pytest.raises(FatalError):
        RetryPolicy(3, 0, 2, 0).call(fatal, what="t")
    assert len(calls) == 1


def test_on_retry_hook_sees_each_retried_error():
    seen = []
    with pytest.raises(RetryableError):
        RetryPolicy(3, 0, 2, 0).call(lambda: (_ for _ in ()).throw(RetryableError("x")), what="t",
                                     on_retry=seen.append)
    assert len(seen) == 2
