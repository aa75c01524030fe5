import threading

import pytest

from worker.errors import FatalError, MasterUnreachable, RetryableError, Shutdown
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


def test_a_window_retries_for_its_seconds_not_its_attempts_with_the_delay_capped():
    slept, calls = [], []

    def away_for_six_tries():
        calls.append(1)
        if len(calls) < 6:
            raise MasterUnreachable("connection refused")
        return "delivered"

    policy = RetryPolicy(3, 2, 2, 60, sleep=slept.append).within(900, cap=5)
    assert policy.call(away_for_six_tries, what="t", retry_on=MasterUnreachable) == "delivered"
    assert slept == [2, 4, 5, 5, 5]


def test_a_window_retries_only_the_errors_it_is_for():
    calls = []

    def refused():
        calls.append(1)
        raise RetryableError("digest mismatch")

    with pytest.raises(RetryableError):
        RetryPolicy(3, 0, 2, 0).within(900, cap=1).call(refused, what="t", retry_on=MasterUnreachable)
    assert len(calls) == 1


def test_a_window_ends_when_its_time_is_up():
    with pytest.raises(MasterUnreachable):
        RetryPolicy(3, 0.05, 1, 0.05).within(0.2, cap=1).call(
            lambda: (_ for _ in ()).throw(MasterUnreachable("refused")), what="t", retry_on=MasterUnreachable)


def test_cancel_ends_the_wait_between_tries():
    cancel = threading.Event()

    def away():
        cancel.set()  # e.g. the heartbeat learnt that the job is no longer ours
        raise MasterUnreachable("refused")

    with pytest.raises(Shutdown):
        RetryPolicy(3, 60, 2, 60).within(900, cap=60).call(away, what="t", retry_on=MasterUnreachable, cancel=cancel)
