"""One live owner per model, across hosts: a lease kept in MLflow tags, with a heartbeat.

Two grids of the same settings meet (a cron rerun while a manual run of the preset is still
going, two people pressing "Run"): each model (config hash) must be trained once. A task
that needs a model it cannot reuse ``claim``s it:

1. a FINISHED complete run with the hash exists: reuse it (as before leases);
2. else create its own RUNNING run tagged ``skinadv.heartbeat`` (``time.time()``), wait a
   moment (``settle_s``: a run another host created just before is visible by then), then
   list the RUNNING runs with the hash. A run whose owner is provably gone (its heartbeat
   is older than the lease, or its process on this host has exited) is marked KILLED,
   "lease expired". Of the live ones, the earliest ``start_time`` (ties: run id) owns the
   model: everyone listing the same runs picks the same owner, with no compare-and-set;
3. the owner trains inside ``held``, whose daemon thread renews the heartbeat every
   ``lease / 6`` s; a loser ends its own run KILLED ("lost the claim to run X") and polls
   the owner's run: FINISHED complete -> reuse it; FAILED / KILLED -> claim again; heartbeat
   stale -> mark it KILLED ("lease expired") and claim again.

Why a lease in MLflow tags rather than Prefect 3's transactions (``SERIALIZABLE`` isolation
with a lock manager keyed by the config hash) or its global concurrency limits: the lease
lives where the runs live, so "who owns this model" and "is it done" are read in one place,
by anyone who can read the experiment; it holds for separate drivers (and separate Prefect
servers) against one MLflow, since nothing is held in one process's memory or one Prefect
server; and it needs no extra service: Prefect's cross-process lock manager is a Redis one
(``prefect-redis``), and a concurrency slot held by a dead node is freed only by a lease
expiry we would have to tune anyway, while its holder is not an MLflow run a reader can see.

Assumptions: host clocks agree to well within ``settle_s`` and the lease (NTP); a run
created with an earlier ``start_time`` but seen only later (a create request retried after
a server outage) is caught by the owner's heartbeat, which then drops its own result
(``LeaseLost``) rather than finish a second complete run. Runs without a heartbeat tag
(made before leases existed) never own a model. ``SKINADV_LEASE_S`` sets the lease
(default 90 s); the owner's own lease is tagged on its run (``skinadv.lease_s``), so a
waiter configured otherwise still judges it by the owner's promise.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from skinadv import tracking

log = logging.getLogger(__name__)

TAG_HEARTBEAT = "skinadv.heartbeat"  # time.time() of the owner's last beat, seconds
TAG_LEASE = "skinadv.lease_s"  # the lease its owner keeps, seconds
LEASE_ENV = "SKINADV_LEASE_S"
DEFAULT_LEASE_S = 90.0
BEATS_PER_LEASE = 6


def lease_s() -> float:
    """The lease in seconds: ``$SKINADV_LEASE_S``, else 90."""
    raw = os.environ.get(LEASE_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_LEASE_S
    except ValueError as exc:
        raise ValueError(f"{LEASE_ENV}={raw!r} is not a number of seconds") from exc
    if value <= 0:
        raise ValueError(f"{LEASE_ENV}={raw!r} must be > 0")
    return value


@dataclass(frozen=True)
class Claim:
    """What ``claim`` found: a run this process now owns, or one to reuse.

    Args:
        run_id: the RUNNING run this process owns (train inside ``held(run_id)``), or None.
        reuse: a FINISHED complete MLflow run with the hash to reuse instead, or None.
        waited_for: the run whose owner this process waited for (None: it never waited).
    """

    run_id: str | None = None
    reuse: Any = None
    waited_for: str | None = None


class LeaseLost(RuntimeError):
    """The run was taken over (or found to be a second owner) while its body ran: its
    result is dropped; a retry reuses or waits for the owner's."""


def _runs_with(experiment: str, config_hash: str, *, status: str = "RUNNING") -> list:
    exp = tracking.client().get_experiment_by_name(experiment)
    if exp is None:
        return []
    return tracking.client().search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{tracking.TAG_HASH}` = '{config_hash}' "
        f"and attributes.status = '{status}'",
        max_results=1000,
    )


def _order(run) -> tuple[int, str]:
    return run.info.start_time or 0, run.info.run_id


def gone(run, *, ttl: float | None = None, now: float | None = None) -> str | None:
    """Why ``run``'s owner is provably gone (a KILLED run's ``skinadv.error``), or None
    while it holds its lease.

    Args:
        run: a RUNNING MLflow run.
        ttl: the lease, s, for a run that does not say its own (default ``lease_s()``).
        now: ``time.time()``, s.
    """
    tags = run.data.tags
    beat = tags.get(TAG_HEARTBEAT)
    if beat is None:
        return "attempt died: lease expired (it never had a heartbeat)"
    ttl = float(tags.get(TAG_LEASE) or ttl or lease_s())
    age = (time.time() if now is None else now) - float(beat)
    if age > ttl:
        return f"attempt died: lease expired (no heartbeat for {age:.0f} s, lease {ttl:g} s)"
    # the same host can tell at once: the owning process has exited (a SIGKILLed worker)
    owner_host, pid = tracking._owner(run)
    if owner_host == socket.gethostname() and not tracking._alive(pid):
        return f"attempt died: its process {owner_host}:{pid} is gone"
    return None


def _sort_out(experiment: str, config_hash: str, ttl: float | None) -> tuple[list, list[str]]:
    """(the RUNNING runs of the hash that hold their lease, the ids of those whose owner is
    gone, which are marked KILLED here with the reason)."""
    live, dead = [], []
    for run in _runs_with(experiment, config_hash):
        why = gone(run, ttl=ttl)
        if why is None:
            live.append(run)
            continue
        tracking.fail_run(run.info.run_id, why, status="KILLED")
        log.info("marked run %s (%s) KILLED: %s", run.info.run_id, run.info.run_name, why)
        dead.append(run.info.run_id)
    return live, dead


def expire(experiment: str, config_hash: str, *, ttl: float | None = None) -> list[str]:
    """Mark KILLED the RUNNING runs with this hash whose owner is provably gone (``gone``);
    live owners, wherever they run, are left alone. Returns the ids marked."""
    return _sort_out(experiment, config_hash, ttl)[1]


def owner(experiment: str, config_hash: str, *, ttl: float | None = None):
    """The live owner of the hash: of the RUNNING runs with it that hold their lease, the
    earliest started (ties: run id); None when there is none. Runs whose owner is gone
    are marked KILLED on the way."""
    live, _ = _sort_out(experiment, config_hash, ttl)
    return min(live, key=_order) if live else None


def claim(
    experiment: str,
    config_hash: str,
    *,
    reuse: bool = True,
    ttl: float | None = None,
    poll_s: float | None = None,
    settle_s: float | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    **run: Any,
) -> Claim:
    """Own the model with ``config_hash``, or find it done (waiting for a live owner).

    Args:
        experiment: the MLflow experiment name.
        config_hash: the model's hash (``skinadv.config_hash`` tag).
        reuse: reuse a complete run that exists already (False: ``--force``; a run that
            finishes while this process waits for it is still reused).
        ttl: the lease, s (default ``lease_s()``); the heartbeat is every ``ttl / 6``.
        poll_s: seconds between looks at the owner while waiting (default ``min(5, ttl/6)``).
        settle_s: seconds between creating the run and listing the claimants (default
            ``min(0.5, ttl / 30)``): longer than a create request takes to be visible.
        logger: where to say that it waits and why (default this module's).
        run: ``tracking.start_run``'s keywords (name, kind, params, tags, parent_run_id).

    Returns:
        ``Claim(run_id=...)``, a RUNNING run to train in ``held``; or ``Claim(reuse=run)``.
    """
    ttl = ttl or lease_s()
    poll_s = poll_s if poll_s is not None else min(5.0, ttl / BEATS_PER_LEASE)
    settle_s = settle_s if settle_s is not None else min(0.5, ttl / 30)
    logger = logger or log
    c = tracking.client()
    base_tags = {**(run.pop("tags", None) or {}), tracking.TAG_HASH: config_hash}
    waited_for = None
    while True:
        if reuse or waited_for:
            done = tracking.find_complete(experiment, config_hash)
            if done is not None:
                return Claim(reuse=done, waited_for=waited_for)
        lease = {TAG_HEARTBEAT: f"{time.time():.3f}", TAG_LEASE: f"{ttl:g}"}
        mine = tracking.start_run(experiment, tags={**base_tags, **lease}, **run)
        time.sleep(settle_s)
        first = owner(experiment, config_hash, ttl=ttl)
        if first is None or first.info.run_id == mine:
            return Claim(run_id=mine, waited_for=waited_for)
        theirs = first.info.run_id
        tracking.fail_run(mine, f"lost the claim to run {theirs}", status="KILLED")
        logger.info(
            "%s: run %s (%s) is training this model: waiting for it",
            run.get("name", config_hash),
            theirs,
            first.data.tags.get(tracking.TAG_WORKER, "?"),
        )
        waited_for = theirs
        while True:  # poll the owner until it ends or its lease expires
            time.sleep(poll_s)
            r = c.get_run(theirs)
            if r.info.status == "FINISHED" and r.data.tags.get(tracking.TAG_COMPLETE) == "true":
                return Claim(reuse=r, waited_for=theirs)
            if r.info.status != "RUNNING" or r.info.lifecycle_stage == "deleted":
                logger.info("run %s ended %s: claiming the model again", theirs, r.info.status)
                break
            why = gone(r, ttl=ttl)
            if why is not None:
                tracking.fail_run(theirs, why, status="KILLED")
                logger.warning("run %s: %s; marked KILLED, claiming the model", theirs, why)
                break


class Heartbeat:
    """A daemon thread that renews a run's heartbeat tag every ``ttl / 6`` s and notices
    when the run is no longer this process's (``lost``: why). A failed beat is logged and
    retried at the next one: it never stops the training."""

    def __init__(self, run_id: str, *, ttl: float | None = None) -> None:
        self.run_id = run_id
        self.ttl = ttl or lease_s()
        self.lost: str | None = None
        self._where: tuple[str, str] | None = None  # (experiment, config hash)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"skinadv-heartbeat-{run_id[:8]}", daemon=True
        )

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        # a beat stuck in MLflow's retries must not hold the run's end up
        self._thread.join(timeout=self.ttl / BEATS_PER_LEASE)

    def _loop(self) -> None:
        while True:
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - a server that blinks: beat again later
                log.warning("heartbeat of run %s failed (training goes on): %s", self.run_id, exc)
            if self.lost or self._stop.wait(self.ttl / BEATS_PER_LEASE):
                return

    def beat(self) -> None:
        """Renew the lease, unless the run was taken over; then check that no live run of
        the hash started before this one (a claim seen late), which would own it."""
        c = tracking.client()
        run = c.get_run(self.run_id)
        if run.info.status != "RUNNING":
            self.lost = f"marked {run.info.status}: {run.data.tags.get(tracking.TAG_ERROR, '')}"
            log.warning("run %s was taken over while it trained (%s)", self.run_id, self.lost)
            return
        c.set_tag(self.run_id, TAG_HEARTBEAT, f"{time.time():.3f}")
        if self._where is None:
            self._where = (
                c.get_experiment(run.info.experiment_id).name,
                run.data.tags[tracking.TAG_HASH],
            )
        first = owner(*self._where, ttl=self.ttl)
        if first is not None and _order(first) < _order(run):
            self.lost = f"lost the claim to run {first.info.run_id} (seen while training)"
            log.warning("run %s: %s", self.run_id, self.lost)


@contextmanager
def held(run_id: str, *, ttl: float | None = None) -> Iterator[str]:
    """Own a claimed run from here to its end, with a heartbeat: FINISHED + complete when
    the body returns, FAILED when it raises, KILLED on KeyboardInterrupt / SystemExit (as
    ``tracking.owned_run``). A run taken over meanwhile stays as its taker marked it and
    ``LeaseLost`` is raised, so no second complete run of the hash appears."""
    beat = Heartbeat(run_id, ttl=ttl).start()
    try:
        yield run_id
    except (KeyboardInterrupt, SystemExit) as exc:
        beat.stop()
        if _still_mine(run_id, beat):
            tracking.fail_run(run_id, f"interrupted ({type(exc).__name__})", status="KILLED")
        raise
    except BaseException as exc:
        beat.stop()
        if _still_mine(run_id, beat):
            tracking.fail_run(run_id, f"{type(exc).__name__}: {exc}")
        raise
    beat.stop()
    if not _still_mine(run_id, beat):
        raise LeaseLost(f"run {run_id} lost its lease while it trained ({beat.lost})")
    tracking.finish_run(run_id)


def _still_mine(run_id: str, beat: Heartbeat) -> bool:
    """Whether ``run_id`` is still this process's to end: RUNNING, and not found to be a
    second owner; a second owner's run is ended KILLED here, with the reason."""
    status = tracking.client().get_run(run_id).info.status
    if status != "RUNNING":
        beat.lost = beat.lost or f"marked {status}"
        return False
    if beat.lost:
        tracking.fail_run(run_id, beat.lost, status="KILLED")
        return False
    return True
