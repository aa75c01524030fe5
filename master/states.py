"""Job states and the transitions allowed between them: the one place that defines them.

    pending ──claim──▶ processing ──upload──▶ completed
       ▲                  │  │
       └──retry/requeue───┘  └──fail (fatal or attempts used up)──▶ failed
    pending|processing ──cancel──▶ cancelled
    processing ──skip (the source already matches the profile)──▶ skipped
    failed|cancelled|skipped ──retry──▶ pending

The store applies a transition with one UPDATE whose WHERE clause lists the allowed old states,
so two racing requests can never both move the same job.
"""

from __future__ import annotations

import enum


class JobStatus(str, enum.Enum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # the profile's skip rule: the source already matched, nothing was converted


class Transition(enum.Enum):
    """A named change of state: the states it may start from and the state it ends in."""

    CLAIM = ((JobStatus.PENDING,), JobStatus.PROCESSING)
    COMPLETE = ((JobStatus.PROCESSING,), JobStatus.COMPLETED)
    REQUEUE = ((JobStatus.PROCESSING,), JobStatus.PENDING)
    FAIL = ((JobStatus.PROCESSING,), JobStatus.FAILED)
    CANCEL = ((JobStatus.PENDING, JobStatus.PROCESSING), JobStatus.CANCELLED)
    SKIP = ((JobStatus.PROCESSING,), JobStatus.SKIPPED)
    RETRY = ((JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.SKIPPED), JobStatus.PENDING)

    @property
    def sources(self) -> tuple[JobStatus, ...]:
        return self.value[0]

    @property
    def target(self) -> JobStatus:
        return self.value[1]


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.SKIPPED})
ACTIVE = frozenset({JobStatus.PENDING, JobStatus.PROCESSING})


def allowed(old: JobStatus, new: JobStatus) -> bool:
    return any(old in t.sources and t.target is new for t in Transition)
