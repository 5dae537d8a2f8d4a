"""The grid's progress table tells Ray's reruns (a dead worker) from Prefect's retries, and
Ray's error listener's lines go to the log, not the console; no services."""

from __future__ import annotations

import io
import logging
import sys
import threading
from types import SimpleNamespace
from uuid import uuid4

import pytest
from rich.console import Console
from rich.live import Live

from skinadv.commands import progress
from skinadv.commands.progress import GridProgress, Row, rerun_by_ray, rerun_line
from skinadv.commands.ray_errors import LISTENER, listener_to_log


def state(kind: str, name: str | None = None):
    return SimpleNamespace(
        id=uuid4(), type=SimpleNamespace(value=kind), name=name or kind.title(), message=""
    )


def test_a_new_running_state_after_running_is_a_ray_rerun():
    row = Row()
    first = state("RUNNING")
    assert not rerun_by_ray(row, state("PENDING"))  # the first attempt starting
    assert not rerun_by_ray(row, first)
    assert not rerun_by_ray(row, first)  # the same state, polled again
    assert rerun_by_ray(row, state("RUNNING"))  # Pending missed between two polls


def test_pending_after_running_is_one_rerun_not_two():
    row = Row()
    rerun_by_ray(row, state("RUNNING"))
    assert rerun_by_ray(row, state("PENDING"))
    assert not rerun_by_ray(row, state("RUNNING"))


def test_prefect_retries_are_not_ray_reruns():
    row = Row()
    rerun_by_ray(row, state("RUNNING"))
    assert not rerun_by_ray(row, state("RUNNING", "Retrying"))  # AwaitingRetry missed
    assert not rerun_by_ray(row, state("SCHEDULED", "AwaitingRetry"))
    assert not rerun_by_ray(row, state("RUNNING", "Retrying"))
    assert not rerun_by_ray(row, state("COMPLETED"))


def test_ray_attempts_follow_ray_task_max_retries(monkeypatch):
    monkeypatch.delenv("RAY_TASK_MAX_RETRIES", raising=False)
    assert progress.ray_attempts() == 4
    monkeypatch.setenv("RAY_TASK_MAX_RETRIES", "1")
    assert progress.ray_attempts() == 2


@pytest.mark.parametrize("terminal", [False, True])
def test_one_line_per_rerun_on_a_pipe_and_a_terminal(monkeypatch, terminal):
    """Polls that see vanilla run, die, go Pending and run again print one line naming it
    and its attempt; the other rows print none."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=200, color_system=None)
    gp = GridProgress(["vanilla s0", "fgsm@0.4 s0"], "flow", console)
    first, again = state("RUNNING"), state("RUNNING")
    polls = [[first], [first], [state("PENDING")], [again], [again]]

    def read(*_a, **_k):
        return [SimpleNamespace(name="vanilla s0", state=s, start_time=None) for s in polls[0]]

    class Client:
        def __enter__(self):
            return SimpleNamespace(read_task_runs=read)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr("prefect.client.orchestration.get_client", lambda **_k: Client())
    monkeypatch.setattr(gp, "attempts", 4)
    stages = []
    if terminal:  # the live table, as __enter__ starts it on a terminal
        gp._live = Live(gp.table(), console=console, auto_refresh=False)
        gp._live.start()
    while polls:
        gp.poll()
        stages.append(gp.rows["vanilla s0"].stage)
        polls.pop(0)
    if terminal:
        gp._live.stop()
    lines = [ln for ln in out.getvalue().splitlines() if "worker died" in ln]
    assert len(lines) == 1 and lines[0].endswith(rerun_line("vanilla s0", 1, 4)), out.getvalue()
    assert "attempt 2 of 4" in lines[0]
    assert stages == ["running", "running", "retrying", "running", "running"]


def test_listener_lines_go_to_the_log_others_to_the_console(caplog):
    """What Ray's error listener thread prints (colour codes and all) becomes log records;
    the main thread's writes still reach the stream, which is put back afterwards."""
    real = sys.stdout
    caplog.set_level(logging.INFO)
    seen = io.StringIO()
    sys.stdout = seen
    try:
        with listener_to_log():

            def ray_listener():
                print("\x1b[36m(raylet)\x1b[0m A worker died or was killed", end="\n")
                print("Task _run_prefect_task failed. There are 3 retries remaining")

            t = threading.Thread(target=ray_listener, name=LISTENER)
            t.start()
            t.join()
            print("ours")
        assert sys.stdout is seen
    finally:
        sys.stdout = real
    assert seen.getvalue() == "ours\n"
    logged = [r.getMessage() for r in caplog.records]
    assert logged == [
        "(raylet) A worker died or was killed",
        "Task _run_prefect_task failed. There are 3 retries remaining",
    ]
