"""The grid's live progress table, read from the Prefect server (not from the flow).

A thread polls the task runs of one flow run (found by its unique name) and shows one row
per model: its stage, elapsed time and, when it is done, the key figure its task put in
its final state's message. On a terminal the table redraws in place; in a log (CI, a
pipe) one line is printed as each model finishes, so the output stays short.

A model task that Ray runs again (its worker died: Ray reruns a task whose worker dies,
up to its ``max_retries``, under the same Prefect task run) gets one line of its own, on a
terminal too: Prefect's own retries enter Running under the name "Retrying", Ray's rerun
under the name "Running" again (or Pending first), with a new state.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from rich.console import Console
from rich.live import Live
from rich.table import Table

STYLE = {
    "queued": "dim",
    "crafting pool": "cyan",
    "running": "cyan",
    "retrying": "yellow",
    "done": "green",
    "reused": "blue",
    "failed": "bold red",
}
FINAL = ("done", "reused", "failed")


@dataclass
class Row:
    stage: str = "queued"
    seconds: float | None = None
    figure: str = ""
    running_state: object = None  # the id of the Running state last seen
    reruns: int = 0  # times Ray ran the task again after its worker died


def ray_attempts() -> int:
    """How many times Ray runs a task whose worker dies: 1 + its ``max_retries`` (3 unless
    ``RAY_TASK_MAX_RETRIES`` says otherwise; the grid's tasks set none)."""
    # Ray's DEFAULT_TASK_MAX_RETRIES, not imported: this runs in the polling thread, and an
    # import of ray there races the main thread's import of it (a half-imported ray package)
    return 1 + int(os.environ.get("RAY_TASK_MAX_RETRIES", "3"))


def rerun_by_ray(row: Row, state) -> bool:
    """Whether ``state`` (a task run's current state) shows Ray running the task again
    since ``row`` last saw it Running; records the Running state it sees in ``row``."""
    if state is None or row.running_state is None:
        if state is not None and state.type.value == "RUNNING":
            row.running_state = state.id
        return False
    kind = state.type.value
    if kind == "PENDING":  # the rerun's task run starts over: Pending, then Running
        row.running_state = None
        return True
    if kind == "SCHEDULED":  # AwaitingRetry: Prefect's retry, not Ray's
        row.running_state = None
        return False
    if kind != "RUNNING" or state.id == row.running_state:
        return False
    row.running_state = state.id
    return state.name != "Retrying"


def _stage(state) -> str:
    if state is None:
        return "queued"
    if state.type.value in ("FAILED", "CRASHED", "CANCELLED"):
        return "failed"
    if state.type.value == "COMPLETED":
        return "reused" if state.name == "Reused" else "done"
    if state.type.value == "RUNNING":
        return "retrying" if state.name == "Retrying" else "running"
    return "retrying" if state.name == "AwaitingRetry" else "queued"


class GridProgress:
    """Poll ``flow_run_name``'s task runs and show a row per model in ``labels``.

    Args:
        labels: the model rows, e.g. ``["vanilla s0", "fgsm@0.2 s0", ...]``, which are the
            model tasks' run names; a pool task ``pool pgd s0`` marks its cells
            ``crafting pool`` while it runs.
        flow_run_name: the unique name the CLI gave the flow run.
        console: where to draw.
        interval: seconds between polls.
    """

    def __init__(
        self, labels: list[str], flow_run_name: str, console: Console, interval: float = 2.0
    ) -> None:
        self.rows = {label: Row() for label in labels}
        self.flow_run_name = flow_run_name
        self.console = console
        self.interval = interval
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grid-progress", daemon=True)
        self._live: Live | None = None
        self.attempts = ray_attempts()

    def __enter__(self) -> GridProgress:
        if self.console.is_terminal:
            self._live = Live(self.table(), console=self.console, auto_refresh=False)
            self._live.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            self.poll()  # the final states
        except Exception:  # the server may be gone after an interrupt
            pass
        if self._live is not None:
            self._live.update(self.table(), refresh=True)
            self._live.stop()

    def table(self) -> Table:
        done = sum(r.stage in FINAL for r in self.rows.values())
        t = Table(title=f"models: {done} of {len(self.rows)} finished", title_justify="left")
        t.add_column("model", no_wrap=True)
        t.add_column("stage", no_wrap=True)
        t.add_column("time", justify="right")
        t.add_column("result")
        for label, r in self.rows.items():
            secs = "" if r.seconds is None else f"{r.seconds:.0f} s"
            t.add_row(label, f"[{STYLE[r.stage]}]{r.stage}[/]", secs, r.figure)
        return t

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # the server is busy or restarting: try again next time
                continue

    def poll(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[self.flow_run_name]))
            )
        now = datetime.now(timezone.utc)
        crafting = {
            tr.name.removeprefix("pool ")
            for tr in runs
            if tr.name.startswith("pool ") and _stage(tr.state) == "running"
        }
        for tr in runs:
            row = self.rows.get(tr.name)
            if row is None or row.stage in FINAL:
                continue
            stage = _stage(tr.state)
            if rerun_by_ray(row, tr.state):
                row.reruns += 1
                self._print_rerun(tr.name, row)
            if stage == "queued" and row.reruns and row.running_state is None:
                stage = "retrying"  # Ray's rerun, not yet running again
            if stage == "queued" and _pool_of(tr.name) in crafting:
                stage = "crafting pool"
            start = tr.start_time
            if start is not None:
                end = tr.end_time if stage in FINAL and tr.end_time else now
                row.seconds = (end - start).total_seconds()
            if stage in FINAL:
                row.figure = (tr.state.message or "") if tr.state else ""
            if stage != row.stage:
                row.stage = stage
                if stage in FINAL and self._live is None:
                    self._print_line(tr.name, row)
        if self._live is not None:
            self._live.update(self.table(), refresh=True)

    def _print_rerun(self, label: str, row: Row) -> None:
        self.console.print(
            f"[dim]{time.monotonic() - self.started:5.0f}s[/] [yellow]"
            f"{rerun_line(label, row.reruns, self.attempts)}[/]",
            highlight=False,
            soft_wrap=True,
        )

    def _print_line(self, label: str, row: Row) -> None:
        done = sum(r.stage in FINAL for r in self.rows.values())
        self.console.print(
            f"[dim]{time.monotonic() - self.started:5.0f}s[/] {label:<14} "
            f"[{STYLE[row.stage]}]{row.stage:<7}[/] {row.figure} "
            f"[dim]({done}/{len(self.rows)})[/]",
            highlight=False,
            soft_wrap=True,
        )


def rerun_line(label: str, reruns: int, attempts: int) -> str:
    """``pgd@0.4 s0: its Ray worker died; Ray runs it again (attempt 2 of 4)``."""
    return f"{label}: its Ray worker died; Ray runs it again (attempt {reruns + 1} of {attempts})"


def _pool_of(label: str) -> str:
    """``pgd@0.8 s0`` -> ``pgd s0`` (the pool its cell waits for)."""
    name, _, seed = label.partition(" ")
    return f"{name.split('@')[0]} {seed}"
