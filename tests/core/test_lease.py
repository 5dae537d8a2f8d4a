"""The model lease (skinadv.tracking_lease) on a real MLflow backend (SQLite in tmp), with a
short lease: two claimants at once train once; an owner that stops heartbeating (a dead
thread, a SIGSTOPped process: a dead node) is taken over after the lease and its run
KILLED; a FAILED owner is claimed again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from skinadv import tracking, tracking_lease

EXPERIMENT = "lease-test"
TTL = 1.5  # s: the heartbeat every 0.25 s
PAUSED_TTL = 6.0  # s: the paused process's lease, a beat a second (see its test)


@pytest.fixture(scope="module")
def mlflow_tmp(tmp_path_factory):
    """MLflow on a SQLite file in tmp (one for the module: each test has its own config
    hashes), the lease ``TTL`` through its environment variable."""
    import mlflow

    root = tmp_path_factory.mktemp("lease")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    mp.setenv(tracking_lease.LEASE_ENV, str(TTL))
    mlflow.MlflowClient().create_experiment(
        EXPERIMENT, artifact_location=(root / "artifacts").as_uri()
    )
    yield root
    mp.undo()


def _claim(h: str, name: str = "m", **kw) -> tracking_lease.Claim:
    return tracking_lease.claim(EXPERIMENT, h, name=name, kind="cell", **kw)


def _run(rid: str):
    return tracking.client().get_run(rid)


def _runs(h: str):
    exp = tracking.client().get_experiment_by_name(EXPERIMENT)
    return tracking.client().search_runs(
        [exp.experiment_id], filter_string=f"tags.`{tracking.TAG_HASH}` = '{h}'"
    )


def _one_complete_nothing_running(h: str) -> str:
    runs = _runs(h)
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    done = [
        r.info.run_id
        for r in runs
        if r.info.status == "FINISHED" and r.data.tags.get(tracking.TAG_COMPLETE) == "true"
    ]
    assert len(done) == 1, [(r.info.run_id, r.info.status) for r in runs]
    return done[0]


def test_two_claimants_at_once_train_once_and_the_other_reuses(mlflow_tmp):
    barrier = threading.Barrier(2)
    out: dict[str, tracking_lease.Claim] = {}
    trained: list[str] = []

    def claimant(who: str) -> None:
        barrier.wait()
        got = _claim("h2", name=who)
        out[who] = got
        if got.run_id is not None:
            with tracking_lease.held(got.run_id):
                time.sleep(1.0)  # "training", across several heartbeats
                trained.append(got.run_id)

    threads = [threading.Thread(target=claimant, args=(w,)) for w in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(trained) == 1
    winner = _one_complete_nothing_running("h2")
    assert trained == [winner]
    loser = next(c for c in out.values() if c.run_id is None)
    assert loser.reuse.info.run_id == winner and loser.waited_for == winner
    killed = [r for r in _runs("h2") if r.info.status == "KILLED"]
    assert len(killed) == 1  # the loser's own claim, ended at once
    assert killed[0].data.tags[tracking.TAG_ERROR] == f"lost the claim to run {winner}"
    # the heartbeat was renewed while it trained, not only set at the claim
    beat = float(_run(winner).data.tags[tracking_lease.TAG_HEARTBEAT])
    assert beat > _run(winner).info.start_time / 1000 + 0.5


def test_an_owner_that_stops_heartbeating_is_taken_over_after_the_lease(mlflow_tmp):
    dead = _claim("hd").run_id  # claimed, then "died": never trains, never beats
    t0 = time.monotonic()
    got = _claim("hd")
    waited = time.monotonic() - t0
    assert got.run_id is not None and got.run_id != dead and got.waited_for == dead
    assert TTL * 0.5 < waited < TTL + 10
    run = _run(dead)
    assert run.info.status == "KILLED"
    assert "lease expired" in run.data.tags[tracking.TAG_ERROR]
    with tracking_lease.held(got.run_id):
        pass
    assert _one_complete_nothing_running("hd") == got.run_id


def test_a_paused_process_is_taken_over_after_the_lease(mlflow_tmp):
    """A claimant in another process, SIGSTOPped while it holds the lease (a dead node: its
    process is still there, it just never beats again). Its lease (``PAUSED_TTL``, tagged on
    its run) is what the taker waits out."""
    ready = mlflow_tmp / "ready"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from skinadv import tracking_lease
        got = tracking_lease.claim({EXPERIMENT!r}, "hs", name="paused", kind="cell")
        with tracking_lease.held(got.run_id):
            Path({str(ready)!r} + ".tmp").write_text(got.run_id)
            Path({str(ready)!r} + ".tmp").rename({str(ready)!r})
            time.sleep(600)
        """
    )
    env = {**os.environ, tracking_lease.LEASE_ENV: str(PAUSED_TTL)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, "the claimant process died"
            assert time.monotonic() < deadline, "the claimant never held its lease"
            time.sleep(0.1)
        victim = ready.read_text()
        first = _beat(victim)
        while _beat(victim) == first:  # it beats while it runs
            assert time.monotonic() < deadline, "the claimant never renewed its lease"
            time.sleep(0.02)
        # pause it between two beats: SQLite (this test's MLflow, not a server's) would stay
        # locked by a process stopped inside a transaction
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        got = _claim("hs")
        assert got.run_id is not None and got.waited_for == victim
        assert time.monotonic() - t0 > PAUSED_TTL / 2  # its own lease, not the taker's
        run = _run(victim)
        assert run.info.status == "KILLED"
        assert "lease expired" in run.data.tags[tracking.TAG_ERROR]
        assert proc.poll() is None  # taken over by the lease, not by a PID check
        with tracking_lease.held(got.run_id):
            pass
        assert _one_complete_nothing_running("hs") == got.run_id
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _beat(run_id: str) -> float:
    return float(_run(run_id).data.tags[tracking_lease.TAG_HEARTBEAT])


def test_a_failed_owner_leads_to_a_new_claim(mlflow_tmp):
    first = _claim("hf")
    results: dict[str, tracking_lease.Claim] = {}
    waiter = threading.Thread(target=lambda: results.setdefault("b", _claim("hf", name="b")))
    with pytest.raises(RuntimeError, match="injected"), tracking_lease.held(first.run_id):
        waiter.start()
        time.sleep(0.6)  # the waiter has seen this owner and polls it
        raise RuntimeError("injected")
    waiter.join(timeout=60)
    second = results["b"]
    assert second.run_id is not None and second.run_id != first.run_id
    assert second.waited_for == first.run_id
    assert _run(first.run_id).info.status == "FAILED"
    with tracking_lease.held(second.run_id):
        pass
    assert _one_complete_nothing_running("hf") == second.run_id


def test_a_taken_over_owner_drops_its_result(mlflow_tmp):
    """An owner whose run was marked KILLED while it trained (its node paused past the
    lease, then resumed) ends with LeaseLost and leaves the run KILLED, not FINISHED."""
    got = _claim("ht")
    with pytest.raises(tracking_lease.LeaseLost), tracking_lease.held(got.run_id):
        tracking.fail_run(got.run_id, "attempt died: lease expired", status="KILLED")
    assert _run(got.run_id).info.status == "KILLED"


def test_an_earlier_claim_seen_late_makes_the_later_owner_step_down(mlflow_tmp):
    """A claim whose create request reached MLflow late (retried after an outage) with an
    earlier start_time than the owner's: the owner's heartbeat sees it, and the owner drops
    its result instead of finishing a second complete run."""
    got = _claim("hl")
    c = tracking.client()
    exp = c.get_experiment_by_name(EXPERIMENT).experiment_id
    lost = pytest.raises(tracking_lease.LeaseLost, match="lost the claim")
    with lost, tracking_lease.held(got.run_id):
        early = c.create_run(
            exp,
            start_time=_run(got.run_id).info.start_time - 1000,
            tags={
                tracking.TAG_HASH: "hl",
                tracking.TAG_WORKER: tracking.worker(),
                tracking_lease.TAG_HEARTBEAT: f"{time.time():.3f}",
            },
        ).info.run_id
        time.sleep(TTL / 2)  # a few heartbeats
    run = _run(got.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags[tracking.TAG_ERROR].startswith(f"lost the claim to run {early}")
    tracking.fail_run(early, "test over", status="KILLED")


def test_reuse_and_expire(mlflow_tmp):
    """A complete run is reused without a claim; ``expire`` kills only runs whose owner is
    gone: no heartbeat, or a stale one; a live one is left RUNNING."""
    done = _claim("hr")
    with tracking_lease.held(done.run_id):
        pass
    assert _claim("hr").reuse.info.run_id == done.run_id
    live = _claim("hr", reuse=False).run_id  # --force: a live owner beside a complete run
    legacy = tracking.start_run(EXPERIMENT, name="old", kind="cell", tags={tracking.TAG_HASH: "hr"})
    stale = tracking.start_run(
        EXPERIMENT,
        name="stale",
        kind="cell",
        tags={tracking.TAG_HASH: "hr", tracking_lease.TAG_HEARTBEAT: str(time.time() - 60)},
    )
    assert sorted(tracking_lease.expire(EXPERIMENT, "hr")) == sorted([legacy, stale])
    assert _run(live).info.status == "RUNNING"
    tracking.fail_run(live, "test over", status="KILLED")


def test_the_lease_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(tracking_lease.LEASE_ENV, "12")
    assert tracking_lease.lease_s() == 12.0
    monkeypatch.setenv(tracking_lease.LEASE_ENV, "-1")
    with pytest.raises(ValueError, match="SKINADV_LEASE_S"):
        tracking_lease.lease_s()
    monkeypatch.delenv(tracking_lease.LEASE_ENV)
    assert tracking_lease.lease_s() == tracking_lease.DEFAULT_LEASE_S
