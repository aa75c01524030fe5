from master.states import TERMINAL, JobStatus, Transition, allowed


def test_seed_path_is_allowed():
    assert allowed(JobStatus.PENDING, JobStatus.PROCESSING)
    assert allowed(JobStatus.PROCESSING, JobStatus.COMPLETED)
    assert allowed(JobStatus.PROCESSING, JobStatus.FAILED)


def test_terminal_states_only_leave_through_retry():
    assert not allowed(JobStatus.COMPLETED, JobStatus.PENDING)
    assert not allowed(JobStatus.COMPLETED, JobStatus.PROCESSING)
    assert allowed(JobStatus.FAILED, JobStatus.PENDING)
    assert allowed(JobStatus.CANCELLED, JobStatus.PENDING)


def test_pending_cannot_complete_without_being_processed():
    assert not allowed(JobStatus.PENDING, JobStatus.COMPLETED)


def test_every_transition_targets_a_single_state():
    for transition in Transition:
        assert transition.target not in transition.sources


def test_skipped_is_terminal_reached_only_from_processing_and_left_by_retry():
    assert allowed(JobStatus.PROCESSING, JobStatus.SKIPPED)
    assert not allowed(JobStatus.PENDING, JobStatus.SKIPPED)
    assert not allowed(JobStatus.COMPLETED, JobStatus.SKIPPED)
    assert allowed(JobStatus.SKIPPED, JobStatus.PENDING)
    assert not allowed(JobStatus.SKIPPED, JobStatus.PROCESSING)
    assert not allowed(JobStatus.SKIPPED, JobStatus.COMPLETED)
    assert JobStatus.SKIPPED in TERMINAL
