"""The webhooks' outbox in the store (migration 6), on both backends: events written by the job's own status
change, worker-lost and queue-drained events once each, guarded fan-out, claims and marks."""

import re

from master.store import JobStore

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")



def add(store, job_id="j1", max_attempts=1):
    return store.create_job(job_id=job_id, source_path="in/a.mp4", output_path=f"out/{job_id}.mp4",
                            profile="h264-720p", source_size=10, source_sha256="00" * 32, source_mtime_ns=1,
                            max_attempts=max_attempts)


def events(store):
    return [(e["type"], e["job_id"], e["worker_id"]) for e in store.webhook_events_to_fan_out()]


def fan_out_all(store, subscription="s1", now=None):
    for event in store.webhook_events_to_fan_out():
        store.fan_out_webhook_event(event["id"], [(event["id"] + "-d", subscription, "http://x/", "{}")],
                                    event_type=event["type"], job_id=event["job_id"], worker_id=event["worker_id"],
                                    now=now)


def test_each_job_ending_writes_one_event_in_its_own_statement(store):
    for job_id in ("done", "broken", "dropped", "waiting"):
        add(store, job_id)
    store.claim_next("w1", 30)
    store.complete("done", 5, "ab" * 32, worker_id="w1")
    store.claim_next("w1", 30)
    store.fail("broken", worker_id="w1", error="bad", retryable=False, retry_delay=0)
    store.cancel("dropped")
    assert events(store) == [("job.completed", "done", None), ("job.failed", "broken", None),
                             ("job.cancelled", "dropped", None)]
    assert all(UUID.match(e["id"]) for e in store.webhook_events_to_fan_out())
    store.retry("broken")  # back to pending: no event
    assert len(events(store)) == 3


def test_a_job_requeued_writes_no_event(store):
    add(store, max_attempts=3)
    store.claim_next("w1", 30)
    store.fail("j1", worker_id="w1", error="again", retryable=True, retry_delay=0)
    assert events(store) == []


def test_a_lost_worker_is_announced_once_per_disappearance(store):
    store.register_worker(worker_id="w1", hostname="h", capabilities={}, concurrency=1, now=100)
    assert store.note_lost_workers(online_since=90, horizon=0, now=110) == 0
    assert store.note_lost_workers(online_since=150, horizon=0, now=160) == 1
    assert store.note_lost_workers(online_since=160, horizon=0, now=170) == 0
    assert events(store) == [("worker.lost", None, "w1")]
    store.register_worker(worker_id="w1", hostname="h", capabilities={}, concurrency=1, now=200)
    assert store.note_lost_workers(online_since=250, horizon=0, now=260) == 1
    assert store.note_lost_workers(online_since=250, horizon=240, now=260) == 0


def test_the_queue_drains_once_after_jobs_ended(store):
    assert not store.note_queue_drained()  # nothing ever ran
    add(store, "a")
    add(store, "b")
    store.claim_next("w1", 30)
    store.complete("a", 5, "ab" * 32, worker_id="w1")
    assert not store.note_queue_drained()  # b still pending
    store.cancel("b")
    assert store.note_queue_drained()
    assert not store.note_queue_drained()
    add(store, "c")
    store.cancel("c")
    assert store.note_queue_drained()
    assert [t for t, _, _ in events(store)].count("queue.drained") == 2


def test_fan_out_is_done_by_one_master_and_deliveries_once_each(store):
    add(store)
    store.cancel("j1")
    event = store.webhook_events_to_fan_out()[0]
    deliveries = [("d1", "s1", "http://a/", "{}"), ("d2", "s2", "http://b/", "{}")]
    assert store.fan_out_webhook_event(event["id"], deliveries, event_type=event["type"], job_id="j1",
                                       worker_id=None, now=10)
    assert not store.fan_out_webhook_event(event["id"], deliveries, event_type=event["type"], job_id="j1",
                                           worker_id=None, now=10)
    assert store.webhook_events_to_fan_out() == []
    listed, total = store.list_webhook_deliveries()
    assert total == 2 and {d["status"] for d in listed} == {"pending"} and "body" not in listed[0]


def test_a_claimed_delivery_is_sent_by_one_master_and_marked_delivered_once(store):
    add(store)
    store.cancel("j1")
    fan_out_all(store, now=10)
    first = store.claim_webhook_deliveries("m1", lease=5, limit=10, now=11)
    assert [d["attempts"] for d in first] == [1] and first[0]["body"] == "{}"
    assert store.claim_webhook_deliveries("m2", lease=5, limit=10, now=12) == []  # m1's claim holds
    delivery = first[0]["id"]
    assert not store.webhook_delivered(delivery, "m2", 1, 200, now=13)  # not m2's
    assert store.webhook_delivered(delivery, "m1", 1, 200, now=13)
    assert not store.webhook_delivered(delivery, "m1", 1, 200, now=14)  # never twice
    assert store.claim_webhook_deliveries("m2", lease=5, limit=10, now=100) == []
    assert store.webhook_delivery_counts() == {"pending": 0, "sending": 0, "delivered": 1, "failed": 0}


def test_a_claim_that_runs_out_is_taken_over_and_the_late_master_cannot_mark_it(store):
    add(store)
    store.cancel("j1")
    fan_out_all(store, now=10)
    delivery = store.claim_webhook_deliveries("m1", lease=5, limit=10, now=11)[0]["id"]
    again = store.claim_webhook_deliveries("m2", lease=5, limit=10, now=17)  # m1's claim ran out at 16
    assert [(d["id"], d["attempts"], d["claimed_by"]) for d in again] == [(delivery, 2, "m2")]
    assert not store.webhook_delivered(delivery, "m1", 1, 200, now=18)
    assert store.webhook_delivered(delivery, "m2", 2, 200, now=18)


def test_a_failed_attempt_waits_for_its_retry_then_ends_failed(store):
    add(store)
    store.cancel("j1")
    fan_out_all(store, now=10)
    delivery = store.claim_webhook_deliveries("m1", lease=5, limit=10, now=11)[0]["id"]
    assert store.webhook_attempt_failed(delivery, "m1", 1, error="HTTP 500", status_code=500, retry_at=20, now=12)
    assert store.claim_webhook_deliveries("m1", lease=5, limit=10, now=19) == []
    assert store.claim_webhook_deliveries("m1", lease=5, limit=10, now=20)[0]["attempts"] == 2
    assert store.webhook_attempt_failed(delivery, "m1", 2, error="refused", status_code=None, retry_at=None, now=21)
    listed, _ = store.list_webhook_deliveries(status="failed")
    assert [(d["id"], d["attempts"], d["last_error"]) for d in listed] == [(delivery, 2, "refused")]
    assert store.claim_webhook_deliveries("m1", lease=5, limit=10, now=1000) == []
    assert store.prune_webhooks(before=5) == 0 and store.prune_webhooks(before=11) == 1


def test_migration_6_is_applied_to_a_version_5_database(database):
    store = JobStore(database)
    for statement in ("DROP TRIGGER webhook_job_event" + (" ON jobs" if store.dialect == "postgres" else ""),
                      "DROP TABLE webhook_deliveries", "DROP TABLE webhook_events",
                      "DELETE FROM schema_migrations WHERE version = 6"):
        store._db.execute(statement)
    store.close()
    again = JobStore(database)
    try:
        assert again.schema_version >= 6  # and the later ones
        add(again)
        again.cancel("j1")
        assert events(again) == [("job.cancelled", "j1", None)]
    finally:
        again.close()


def test_two_masters_claiming_at_once_never_get_the_same_delivery(database):
    """Two stores (two masters' connections) claim in threads: each delivery is claimed by one of them."""
    import threading

    first, second = JobStore(database), JobStore(database)
    try:
        for n in range(40):
            add(first, f"j{n}")
            first.cancel(f"j{n}")
        fan_out_all(first, now=10)
        claimed = {"m1": [], "m2": []}

        def claim(store, name):
            while True:
                rows = store.claim_webhook_deliveries(name, lease=60, limit=3, now=11)
                if not rows:
                    return
                claimed[name] += [row["id"] for row in rows]

        pairs = ((first, "m1"), (second, "m2"))
        threads = [threading.Thread(target=claim, args=pair) for pair in pairs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        everything = claimed["m1"] + claimed["m2"]
        assert len(everything) == len(set(everything)) == 40
    finally:
        first.close()
        second.close()
