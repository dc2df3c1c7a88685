"""SQLite job queue: state machine, persistence across reopen, recovery, duplicates."""

from __future__ import annotations

import stat

import pytest

from monai_app.node.jobqueue import (
    DELIVERED,
    FAILED,
    PENDING,
    PROCESSED,
    PROCESSING,
    InstanceRecord,
    JobQueue,
)


@pytest.fixture
def queue(tmp_path):
    q = JobQueue(tmp_path / "q.sqlite3")
    yield q
    q.close()


def _add(queue, job_id, sop="1.1", series="1.2"):
    return queue.add_job(job_id, series, "1.3", [InstanceRecord(sop, "1.2.840")], 1.0, 2.0)


def test_database_is_private(tmp_path, queue):
    assert stat.S_IMODE((tmp_path / "q.sqlite3").stat().st_mode) == 0o600


def test_lifecycle_pending_to_delivered(queue):
    job = _add(queue, "j1")
    assert job.state == PENDING and job.n_instances == 1 and job.received_last == 2.0
    claimed = queue.claim_for_processing()
    assert claimed.id == "j1" and claimed.state == PROCESSING and claimed.attempts == 1
    assert queue.claim_for_processing() is None
    queue.mark_processed("j1", [{"probability": 0.7}], 1.5, "demo 1.0")
    job = queue.get("j1")
    assert job.state == PROCESSED and job.result_entries == [{"probability": 0.7}]
    assert [j.id for j in queue.due_for_delivery()] == ["j1"]
    queue.record_delivery("j1", "sr.dcm", "9.9")
    queue.record_delivery("j1", "sr.dcm", "9.9")  # idempotent
    assert queue.delivered_files("j1") == {"sr.dcm"}
    queue.mark_delivered("j1")
    assert queue.get("j1").state == DELIVERED
    assert queue.counts() == {PENDING: 0, PROCESSING: 0, PROCESSED: 0, DELIVERED: 1, FAILED: 0}


def test_jobs_are_claimed_oldest_first_and_respect_not_before(queue):
    _add(queue, "a", sop="1")
    _add(queue, "b", sop="2")
    assert queue.claim_for_processing().id == "a"
    queue.retry_processing("a", "boom", delay_s=3600)
    assert queue.claim_for_processing().id == "b"
    assert queue.claim_for_processing() is None  # "a" is not due yet
    assert queue.get("a").reason == "boom" and queue.get("a").state == PENDING


def test_duplicates_are_found_unless_the_job_failed(queue):
    _add(queue, "a", sop="5.5")
    assert queue.duplicate_of("5.5") == "a"
    assert queue.duplicate_of("6.6") is None
    queue.fail("a", "bad volume")
    assert queue.duplicate_of("5.5") is None  # a failed volume may be sent again


def test_state_survives_reopen_and_interrupted_jobs_are_recovered(tmp_path):
    path = tmp_path / "q.sqlite3"
    q = JobQueue(path)
    _add(q, "a", sop="1")
    _add(q, "b", sop="2")
    q.claim_for_processing()  # a: processing, attempt 1
    q.close()  # as if the process died here
    q = JobQueue(path)
    requeued, failed = q.recover(max_attempts=2)
    assert requeued == ["a"] and failed == []
    assert q.get("a").state == PENDING and "interrupted" in q.get("a").reason
    q.claim_for_processing()  # a: attempt 2
    q.close()
    q = JobQueue(path)
    requeued, failed = q.recover(max_attempts=2)
    assert failed == ["a"] and q.get("a").state == FAILED  # no endless crash loop
    assert q.get("b").state == PENDING
    q.close()


def test_delivery_failures_back_off_then_fail(queue):
    _add(queue, "a")
    queue.claim_for_processing()
    queue.mark_processed("a", [], 0.1, None)
    assert queue.delivery_failed("a", "down", 100.0, max_attempts=2) == PROCESSED
    assert queue.due_for_delivery() == []  # waiting for the backoff
    assert queue.next_due(PROCESSED) > 0
    # Due in 100 s: idle loops sleep their longest; no pending job: likewise.
    assert queue.idle_wait(PROCESSED) == 1.0 and queue.idle_wait(PENDING, longest=2.5) == 2.5
    assert queue.delivery_failed("a", "still down", 0.0, max_attempts=2) == FAILED
    job = queue.get("a")
    assert job.state == FAILED and job.send_attempts == 2 and job.reason == "still down"
    _add(queue, "b")
    queue.claim_for_processing()
    queue.mark_processed("b", [], 0.1, None)
    queue.delivery_failed("b", "down", 0.3, max_attempts=2)
    assert 0.01 <= queue.idle_wait(PROCESSED) <= 0.3  # wakes when "b" falls due


def test_requeue_only_failed_jobs(queue):
    _add(queue, "a")
    queue.claim_for_processing()
    queue.fail("a", "x")
    queue.requeue("a", PROCESSED)
    job = queue.get("a")
    assert job.state == PROCESSED and job.attempts == 0 and job.reason is None
    queue.requeue("a", PENDING)  # not failed any more: no change
    assert queue.get("a").state == PROCESSED
    with pytest.raises(ValueError):
        queue.requeue("a", DELIVERED)


def test_reprocessing_forgets_what_the_old_results_delivered(queue):
    """A failed job requeued for processing gets new results under the same file names; none of
    them may be skipped as "already sent" because an old result was."""
    _add(queue, "a")
    queue.claim_for_processing()
    queue.record_delivery("a", "x/sr.dcm", "1.2.3")
    queue.fail("a", "half sent")
    queue.requeue("a", PROCESSED)  # resend the same results: keep the record
    assert queue.delivered_files("a") == {"x/sr.dcm"}
    queue.fail("a", "again")
    queue.requeue("a", PENDING)  # compute new results: forget it
    assert queue.delivered_files("a") == set()
