"""The job store's guarantees, without a server: order, leases, attempts, exactly-once completion."""

import time

import pytest

from lightdiff.server.store import Store


def submit(store, prompt="x", **kw):
    job, created = store.submit({"prompt": prompt}, workflow="txt2img", model="tiny-sd15", request_hash=prompt,
                                max_attempts=kw.pop("max_attempts", 3), **kw)
    return job


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "jobs.db")


def test_jobs_are_claimed_in_submission_order(store):
    ids = [submit(store, f"p{i}")["id"] for i in range(3)]
    claimed = [store.claim("w1", 30)["id"] for _ in range(3)]
    assert claimed == ids
    assert store.claim("w1", 30) is None


def test_expired_lease_is_claimed_again_and_attempts_counted(store):
    job = submit(store)
    first = store.claim("w1", lease_s=0.05)
    assert first["attempts"] == 1
    assert store.claim("w2", 30) is None  # the lease is still valid
    time.sleep(0.1)
    second = store.claim("w2", 30)
    assert second["id"] == job["id"] and second["attempts"] == 2 and second["claimed_by"] == "w2"


def test_complete_needs_the_current_claim(store):
    submit(store)
    first = store.claim("w1", lease_s=0.01)
    time.sleep(0.05)
    second = store.claim("w2", 30)
    assert not store.complete(first["id"], first["claim_token"], {"images": []})  # the dead claim cannot finish it
    assert store.complete(second["id"], second["claim_token"], {"images": []})
    assert not store.complete(second["id"], second["claim_token"], {"images": []})  # nor complete it twice
    done = [e for e in store.events(second["id"]) if e["type"] == "done"]
    assert len(done) == 1 and store.get(second["id"])["status"] == "done"


def test_job_fails_with_reason_after_max_attempts(store):
    job = submit(store, max_attempts=2)
    for _ in range(2):
        assert store.claim("w", lease_s=0.01)["id"] == job["id"]
        time.sleep(0.03)
    assert store.claim("w", 30) is None
    failed = store.get(job["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "worker_lost" and failed["attempts"] == 2


def test_released_worker_job_is_reclaimed_at_once(store):
    job = submit(store)
    store.claim("dead", lease_s=3600)
    assert store.claim("new", 30) is None
    assert store.release_worker("dead") == 1
    again = store.claim("new", 30)
    assert again["id"] == job["id"] and again["attempts"] == 2


def test_cancel_queued_job_leaves_the_others(store):
    a, b, c = (submit(store, p) for p in "abc")
    store.cancel(b["id"])
    assert [store.get(j["id"])["status"] for j in (a, b, c)] == ["queued", "cancelled", "queued"]
    assert [store.claim("w", 30)["id"] for _ in range(2)] == [a["id"], c["id"]]


def test_cancel_running_job_sets_the_flag_the_worker_reads(store):
    job = submit(store)
    claimed = store.claim("w", 30)
    store.cancel(job["id"])
    assert store.renew(job["id"], claimed["claim_token"], 30) == (True, True)
    assert store.progress(job["id"], claimed["claim_token"], 1, 2) == (True, True)
    assert store.confirm_cancelled(job["id"], claimed["claim_token"])
    assert store.get(job["id"])["status"] == "cancelled"


def test_idempotency_key_returns_the_first_job(store):
    first, created1 = store.submit({"prompt": "x"}, workflow="txt2img", model="m", request_hash="h",
                                   max_attempts=3, idempotency_key="k1")
    again, created2 = store.submit({"prompt": "x"}, workflow="txt2img", model="m", request_hash="h",
                                   max_attempts=3, idempotency_key="k1")
    assert created1 and not created2 and again["id"] == first["id"]
    assert store.counts()["queued"] == 1


def test_graceful_release_does_not_count_an_attempt(store):
    job = submit(store)
    claimed = store.claim("w", 30)
    assert store.release(job["id"], claimed["claim_token"], "stopping")
    back = store.get(job["id"])
    assert back["status"] == "queued" and back["attempts"] == 0
