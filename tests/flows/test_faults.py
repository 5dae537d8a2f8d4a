"""Faults during ``skinadv grid``, through the real CLI on a tiny real-data grid: the driver
interrupted (Ctrl-C, SIGTERM), the MLflow tracking server killed and restarted, services
that cannot start, a run folder that cannot be written. After each, the MLflow runs are
counted exactly: one FINISHED complete run per model, no duplicate, none RUNNING.

Each grid here starts its own services (MLflow, Prefect, Ray) in its run folder, as a user's
``skinadv grid`` does, in its own process group as a terminal's foreground job; the runs
are read back afterwards from the run folder's SQLite through the MLflow client.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from test_grid_integration import grid_command

from skinadv.stack.process import live_processes

pytestmark = pytest.mark.integration

STOP_BOUND_S = 30.0  # the bound: everything stopped this long after the signal
CELLS = ["pgd@0.8", "vanilla"]
GRID_ARGS = ("--methods", "pgd", "--fractions", "0.8", "--set", "train.epochs=8")


# the tests' own MLflow client gives up at once on a grid's MLflow that is gone
POLL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}


def _env(**extra: str) -> dict[str, str]:
    """This environment without service addresses (each grid starts its own stack) or the
    tests' own MLflow client settings."""
    drop = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RAY_ADDRESS", *POLL_ENV)
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


@pytest.fixture(autouse=True)
def _poll_quickly(monkeypatch):
    for k, v in POLL_ENV.items():
        monkeypatch.setenv(k, v)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Grid:
    """``skinadv grid`` running in its own session (a terminal's foreground job), its
    stderr read line by line as it comes."""

    def __init__(self, run_dir: Path, data: Path, experiment: str, *extra: str, env=None):
        self.cmd = grid_command(run_dir, data, experiment, *GRID_ARGS, *extra)
        self.run_dir = run_dir
        self.proc = subprocess.Popen(
            self.cmd,
            env=env or _env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            # Ctrl-C reaches it as a terminal's foreground job: a suite started in the
            # background (`cmd &` in a script) would hand SIGINT down ignored
            preexec_fn=_default_sigint,
        )
        self.err: list[str] = []
        self.out: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)
            self._lines.put(line)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def mlflow_uri(self, timeout_s: float = 300) -> str:
        """The tracking server's address, from the services table the CLI prints."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(r"MLflow UI\s*│\s*(http://[\d.:]+)", self.stderr)
            if found:
                return found.group(1)
            assert self.proc.poll() is None, (
                f"the grid ended before its services were up:\n{self.stderr}"
            )
            time.sleep(0.2)
        raise AssertionError(f"no MLflow address within {timeout_s} s:\n{self.stderr}")

    def training_cell(self, experiment: str, timeout_s: float = 400, known=frozenset()):
        """The first run found RUNNING in its training stage (polling the grid's MLflow),
        other than the ``known`` run ids (an earlier grid's)."""
        import mlflow

        client = mlflow.MlflowClient(self.mlflow_uri())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (
                f"the grid ended before a model trained:\n{self.stderr}"
            )
            exp = client.get_experiment_by_name(experiment)
            if exp is not None:
                found = client.search_runs(
                    [exp.experiment_id],
                    filter_string="attributes.status = 'RUNNING' "
                    "and tags.`skinadv.stage` = 'training'",
                )
                found = [r for r in found if r.info.run_id not in known]
                if found:
                    return found[0]
            time.sleep(0.1)
        raise AssertionError(f"no model started training in {timeout_s} s:\n{self.stderr}")

    def wait(self, timeout_s: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)  # its services stop with it
                self.proc.wait(timeout=60)
        for t in self._readers:
            t.join(timeout=10)
        return code

    def result(self) -> dict:
        return json.loads(self.out[-1])


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (services, Ray's GCS, raylet, workers)."""
    children: dict[int, list[int]] = {}
    for child, fields in live_processes():
        children.setdefault(int(fields[1]), []).append(child)
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pids: set[int]) -> set[int]:
    return {pid for pid, _ in live_processes()} & pids


def runs(run_dir: Path, experiment: str):
    """Every run of the experiment, read from the run folder's SQLite (no server)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def complete(all_runs) -> dict[str, str]:
    """{cell: run id} of the FINISHED complete model runs; a duplicate fails."""
    out: dict[str, str] = {}
    for r in all_runs:
        tags = r.data.tags
        if tags.get("skinadv.kind") == "parent" or r.info.status != "FINISHED":
            continue
        if tags.get("skinadv.complete") == "true":
            assert tags["skinadv.cell"] not in out, f"two complete runs of {tags['skinadv.cell']}"
            out[tags["skinadv.cell"]] = r.info.run_id
    return out


def running(all_runs) -> list[str]:
    return [
        f"{r.data.tags.get('skinadv.cell', 'parent')} {r.info.run_id}"
        for r in all_runs
        if r.info.status == "RUNNING"
    ]


def interrupt(grid: Grid, experiment: str, sig: int) -> tuple[object, float]:
    """Signal the grid while a model trains: SIGINT to its process group (Ctrl-C), SIGTERM
    to the driver alone (``kill``, a service manager). Returns (the run that was training,
    seconds from the signal to the driver's exit) once it exited and left nothing."""
    victim = grid.training_cell(experiment)
    started = descendants(grid.proc.pid)
    assert started, "the grid started no services?"
    t0 = time.monotonic()
    if sig == signal.SIGINT:
        os.killpg(grid.proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole group
    else:
        grid.proc.send_signal(sig)
    code = grid.wait(timeout_s=120)
    took = time.monotonic() - t0
    expected = 128 + sig
    assert code == expected, f"exit {code}, expected {expected}:\n{grid.stderr}"
    assert took < STOP_BOUND_S, f"took {took:.1f} s to stop:\n{grid.stderr}"
    assert alive(started) == set(), f"left running: {alive(started)}"
    assert "Traceback" not in grid.stderr and "logging.cc" not in grid.stderr, grid.stderr
    last = grid.err[-1].strip()
    assert re.fullmatch(
        r"(interrupted|terminated \(SIGTERM\)): services stopped, unfinished runs marked "
        r"KILLED; rerun the same command to resume \(finished models are reused\)",
        last,
    ), grid.stderr
    return victim, took


def test_interrupted_grid_stops_everything_and_a_rerun_resumes(real_npz, tmp_path):
    """Ctrl-C mid-cell, then SIGTERM mid-cell of the rerun, then a rerun to the end: each
    interrupted grid exits 130 / 143 within 30 s with one line saying how to resume, its
    services and Ray workers gone and no run left RUNNING (the one training is KILLED); the
    last rerun reuses every finished model (same run ids) and trains the rest."""
    run_dir, name = tmp_path / "run", "faults-interrupt"
    timings = {}

    # 1. Ctrl-C while the first model (vanilla) trains
    grid = Grid(run_dir, real_npz, name)
    victim, timings["SIGINT"] = interrupt(grid, name, signal.SIGINT)
    after = runs(run_dir, name)
    assert running(after) == []
    assert {r.info.run_id: r.info.status for r in after}[victim.info.run_id] == "KILLED"
    assert [r.info.status for r in after if r.data.tags["skinadv.kind"] == "parent"] == ["KILLED"]
    first_done = complete(after)

    # 2. the same command again; SIGTERM while a model trains (the cell, or vanilla if
    # Ctrl-C came before it finished)
    grid = Grid(run_dir, real_npz, name)
    victim2, timings["SIGTERM"] = interrupt(grid, name, signal.SIGTERM)
    after = runs(run_dir, name)
    assert running(after) == []
    assert {r.info.run_id: r.info.status for r in after}[victim2.info.run_id] == "KILLED"
    second_done = complete(after)
    assert second_done.items() >= first_done.items()  # finished models were not redone

    # 3. the same command, to the end
    grid = Grid(run_dir, real_npz, name)
    assert grid.wait(timeout_s=900) == 0, grid.stderr[-4000:]
    result = grid.result()
    final = runs(run_dir, name)
    assert running(final) == []
    done = complete(final)
    assert sorted(done) == CELLS
    assert done.items() >= second_done.items()  # reused: the same run ids
    assert {r["run_id"] for r in result["records"]} == set(done.values())
    assert sorted(result["reused"]) == sorted(f"{c} s0" for c in second_done)
    assert sorted(result["trained"]) == sorted(f"{c} s0" for c in CELLS if c not in second_done)
    # every model run that is not the complete one was an interrupted attempt, KILLED
    for r in final:
        if r.data.tags.get("skinadv.kind") != "parent" and r.info.run_id not in done.values():
            assert r.info.status == "KILLED", (r.data.tags.get("skinadv.cell"), r.info.status)
    print(f"\nstop after signal: {timings}")


def server_of(grid: Grid, port: int) -> int:
    """The pid of the ``mlflow server`` the grid started on ``port`` (a child of the CLI)."""
    for pid, fields in live_processes():
        if int(fields[1]) != grid.proc.pid:
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"server" in argv and str(port).encode() in argv:
            return pid
    raise AssertionError(f"no mlflow server on port {port} under the grid")


def kill_mlflow(grid: Grid) -> tuple[str, dict]:
    """SIGKILL the grid's MLflow server and everything it spawned, once it no longer
    answers; returns its address and how to start it again (argv, environment, folder)."""
    from skinadv.stack.process import healthy, session_pids

    uri = grid.mlflow_uri()
    pid = server_of(grid, int(uri.rsplit(":", 1)[1]))
    proc = Path(f"/proc/{pid}")
    again = {
        "args": [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a],
        "env": dict(
            kv.decode().split("=", 1)
            for kv in (proc / "environ").read_bytes().split(b"\0")
            if b"=" in kv
        ),
        "cwd": os.readlink(proc / "cwd"),
    }
    for p in session_pids(pid):
        os.kill(p, signal.SIGKILL)
    t0 = time.monotonic()
    while healthy(f"{uri}/health", timeout_s=1):
        assert time.monotonic() - t0 < 30, "the killed MLflow still answers"
        time.sleep(0.2)
    return uri, again


def test_mlflow_killed_mid_grid_then_killed_and_restarted(real_npz, tmp_path):
    """1. The grid's MLflow server SIGKILLed while a model trains, and left down, with few
    client retries: the grid stops with one line naming the tracking server (exit 1).
    2. The same command again (MLflow's default retries); its MLflow SIGKILLed while a model
    trains and restarted 5 s later with the same command, port and SQLite file: the MLflow
    clients of the driver and the Ray workers retry with backoff, the grid completes, the
    model that was training keeps its one run, FINISHED and complete, and the runs the first
    grid could not end are KILLED: none is left RUNNING."""
    from skinadv.stack.process import healthy, session_pids

    run_dir, name = tmp_path / "run", "faults-mlflow"
    few_retries = _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
    grid = Grid(run_dir, real_npz, name, env=few_retries)
    grid.training_cell(name)
    uri, _ = kill_mlflow(grid)
    t_kill = time.monotonic()
    assert grid.wait(timeout_s=600) == 1, grid.stderr[-4000:]
    t_stopped = time.monotonic()
    assert "Traceback" not in grid.stderr, grid.stderr
    errors = [ln for ln in grid.err if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0] == grid.err[-1], grid.stderr
    assert f"the MLflow tracking server at {uri} stopped answering" in errors[0], errors[0]
    assert "rerun the same command to resume" in errors[0], errors[0]
    first = runs(run_dir, name)
    first_done = complete(first)

    grid = Grid(run_dir, real_npz, name)
    restarted = None
    try:
        victim = grid.training_cell(name, known={r.info.run_id for r in first})
        uri, again = kill_mlflow(grid)
        t_kill2 = time.monotonic()
        time.sleep(5)  # down for a while: clients meet refused connections
        assert grid.proc.poll() is None, grid.stderr
        with open(tmp_path / "mlflow-restarted.log", "ab") as log:
            restarted = subprocess.Popen(
                **again, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        t_restart = time.monotonic()
        while not healthy(f"{uri}/health", timeout_s=1):
            assert restarted.poll() is None, (tmp_path / "mlflow-restarted.log").read_text()
            assert time.monotonic() - t_restart < 240, "the restarted MLflow did not answer"
            time.sleep(0.2)
        t_up = time.monotonic()
        code = grid.wait(timeout_s=900)
        t_done = time.monotonic()
    finally:
        if restarted is not None:
            for p in session_pids(restarted.pid):
                os.kill(p, signal.SIGKILL)
            restarted.wait(timeout=30)
    assert code == 0, grid.stderr[-4000:]
    assert "Traceback" not in grid.stderr, grid.stderr
    result = grid.result()
    final = runs(run_dir, name)
    assert running(final) == []
    done = complete(final)
    assert sorted(done) == CELLS
    assert done.items() >= first_done.items()  # a model finished before the outage: reused
    assert sorted(result["reused"]) == sorted(f"{c} s0" for c in first_done)
    assert {r["run_id"] for r in result["records"]} == set(done.values())
    # the model that was training through the restart kept its run: no retry, no duplicate
    assert victim.info.run_id in done.values()
    assert {r.info.run_id: r.info.status for r in final}[result["parent_run_id"]] == "FINISHED"
    for r in final:  # the rest: the first grid's runs, which it could not end
        if r.info.run_id not in (*done.values(), result["parent_run_id"]):
            assert r.info.status == "KILLED", (r.data.tags.get("skinadv.cell"), r.info.status)
    print(
        f"\nMLflow left down: the grid stopped {t_stopped - t_kill:.1f} s after the kill; "
        f"restarted: down {t_restart - t_kill2:.1f} s, answering {t_up - t_restart:.1f} s "
        f"after the restart, grid done {t_done - t_up:.1f} s after it answered"
    )


# -- services or folders that cannot be used: one line, exit 1, nothing half-written ---------


def fails_in_one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The one ``error:`` line of a failed grid (exit 1, no traceback), holding ``needles``."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def run_grid(run_dir: Path, data: Path, env=None) -> subprocess.CompletedProcess:
    cmd = grid_command(run_dir, data, "faults-start", *GRID_ARGS)
    return subprocess.run(
        cmd, env=env or _env(), capture_output=True, text=True, timeout=600,
        start_new_session=True,
    )  # fmt: skip


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(options)``: a fresh tmpfs mounted under tmp_path (needs root, as CI runs)."""
    mounts: list[Path] = []

    def mount(options: str) -> Path:
        target = tmp_path / f"tmpfs{len(mounts)}"
        target.mkdir()
        cmd = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs for this fault ({done.stderr.strip()})")
        mounts.append(target)
        return target

    yield mount
    for target in mounts:
        subprocess.run(["umount", "-l", str(target)], check=False)


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_prefect_unreachable_at_start(real_npz, tmp_path):
    from skinadv.stack.process import free_ports

    (port,) = free_ports(1)
    run_dir = tmp_path / "run"
    env = _env(PREFECT_API_URL=f"http://127.0.0.1:{port}/api")
    proc = run_grid(run_dir, real_npz, env)
    fails_in_one_line(proc, "$PREFECT_API_URL", f"127.0.0.1:{port}", "does not answer")
    assert files_under(run_dir) == []  # nothing was started, nothing written


def test_unwritable_run_folder(real_npz, tmpfs):
    mnt = tmpfs("ro,size=1m")
    proc = run_grid(mnt / "run", real_npz)
    fails_in_one_line(proc, "cannot write to the run folder", str(mnt / "run"), "Read-only")
    assert list(mnt.iterdir()) == []


def test_full_disk_for_the_run_folder(real_npz, tmpfs):
    mnt = tmpfs("size=8m")
    proc = run_grid(mnt / "run", real_npz)
    fails_in_one_line(proc, "MB free for the run folder", str(mnt / "run"), "SKINADV_MIN_FREE_MB")
    assert list(mnt.iterdir()) == []  # the run folder it made is gone again


def test_a_port_taken_before_a_service_binds_it(tmp_path, monkeypatch):
    """Ports are picked free, then bound by the service a moment later: another process can
    take one between the two. The service then fails with one line naming the port."""
    import socket

    from skinadv.stack import Stack, StackError, process

    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(process, "free_ports", lambda n: [port] * n)
        stack = Stack(tmp_path, prefect=False, ray=False)
        with pytest.raises(StackError) as err:
            stack.start()
    message = str(err.value)
    assert "\n" not in message
    assert f"127.0.0.1:{port}" in message and "already taken" in message, message
    assert process.session_pids(stack.services["mlflow"].process.pid) == []


def test_disk_full_mid_grid(real_npz, tmpfs, tmp_path):
    """The folder where this machine's Ray node keeps its tasks' files (SKINADV_NODE_DIR:
    weights, transfer sets) on a 1 MB tmpfs: the services start, the first model's files
    fill it up. The grid stops with one line saying that disk is full (exit 1); no run is
    left RUNNING, no temporary file is left behind and every file written is whole."""
    import numpy as np

    from skinadv.models import load_model

    node = tmpfs("size=1m") / "node"
    env = _env(SKINADV_NODE_DIR=str(node), MLFLOW_HTTP_REQUEST_MAX_RETRIES="1")
    proc = run_grid(tmp_path / "run", real_npz, env)
    fails_in_one_line(proc, f"the disk of the Ray node folder {node} is full", "rerun")
    assert running(runs(tmp_path / "run", "faults-start")) == []
    assert [p for p in files_under(node) if p.name.endswith(".tmp")] == []
    for p in files_under(node):
        if p.suffix == ".npz":
            with np.load(p) as z:
                assert all(z[k].size for k in z.files), p
        elif p.suffix == ".pt":
            load_model(p)
