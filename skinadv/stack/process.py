"""Processes of the started services: free ports, launch, health polling, stop, log tail.

Each service runs in its own session (``start_new_session=True``): its session id is its
pid and holds everything it spawns, so stopping it touches nothing else on the machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skinadv.stack.common import HOST, Env, Service, StackError
from skinadv.stack.redact import redact_args, redact_text

if TYPE_CHECKING:
    from rich.console import Console

logger = logging.getLogger(__name__)

# our own services are on loopback: never ask an HTTP proxy from the environment for them
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def script(name: str) -> str:
    """The console script ``name`` of this interpreter's environment."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name} is not installed in this environment (pip install skinadv)")
    return found


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_free(port: int) -> bool:
    """True when ``port`` can be bound on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as the servers bind: a port whose last connections linger in TIME_WAIT is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def healthy(url: str, timeout_s: float = 2.0) -> bool:
    """True when ``url`` answers 2xx (directly, never through a proxy)."""
    try:
        with _DIRECT.open(url, timeout=timeout_s) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def reachable(url: str, timeout_s: float) -> bool:
    """True when anything answers over HTTP (an auth error still proves it is up)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def tail(path: Path | None, lines: int = 20) -> str:
    """The last ``lines`` lines of a log, or ``(no log)`` / ``(empty log)``."""
    if path is None or not path.exists():
        return "(no log)"
    with open(path, errors="replace") as f:
        return "".join(deque(f, maxlen=lines)).rstrip() or "(empty log)"


def launch(svc: Service, cmd: list[str], env: Env, *, cwd: Path) -> None:
    """Start ``cmd`` for ``svc`` in its own session, its output appended to ``svc.log_path``.

    Sets ``svc.log_file`` (closed by ``Stack.stop``), ``svc.launched_at`` and
    ``svc.process``. The command line is logged with every URL redacted.

    Raises:
        StackError: the program could not be run.
    """
    assert svc.log_path is not None
    log = svc.log_file = open(svc.log_path, "ab")  # noqa: SIM115 (closed in stop())
    shown = " ".join(redact_args(cmd))  # no password in a log, ever
    log.write(f"\n$ {shown}\n".encode())
    log.flush()
    logger.info("starting %s: %s", svc.name, shown)
    svc.launched_at = time.monotonic()
    try:
        svc.process = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # own session: Ctrl-C in the terminal reaches us, not them, and stop()
            # can signal every process the service spawned (uvicorn, Ray workers)
            start_new_session=True,
        )
    except OSError as exc:
        raise StackError(f"could not run {cmd[0]}: {exc}") from exc


# what uvicorn (MLflow, Prefect) and Ray print when a port is taken
_PORT_TAKEN = re.compile(r"address already in use|errno 98|eaddrinuse|failed to bind", re.I)
_ERROR_LINE = re.compile(r"Error\b|Exception\b|error:", re.I)


def why_not_started(svc: Service) -> str:
    """One line on why a service did not come up: a port of its taken by another process,
    else the last line of its log."""
    text = tail(svc.log_path, 40).rsplit("\n$ ", 1)[-1]  # this launch's lines only
    if _PORT_TAKEN.search(text):
        ports = ", ".join(f"{HOST}:{p}" for p in svc.ports) or "its port"
        return f"a port it was given ({ports}) is already taken; rerun to pick free ones"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if _ERROR_LINE.search(ln)]  # rather than a traceback's tail
    if not lines:
        return "its log is empty"
    return f"its log says {redact_text((errors or lines)[-1])!r}"


def wait_healthy(services: list[Service], *, console: Console, timeout_s: float) -> None:
    """Poll every service's health URLs until all answer; set each one's ``startup_s``.

    Args:
        services: launched services (``launched_at`` and ``health_urls`` set).
        console: where the waiting line (a terminal) or a note every 15 s goes.
        timeout_s: seconds each service may take from its launch.

    Raises:
        StackError: a service exited or did not answer in time (one line: a port taken,
            else its log's last line).
    """
    pending = {s.name: s for s in services}
    status = None
    try:
        if console.is_terminal:
            status = console.status("starting services")
            status.start()
        last_note = 0.0
        while pending:
            for name, svc in list(pending.items()):
                elapsed = time.monotonic() - svc.launched_at
                if svc.process is not None and svc.process.poll() is not None:
                    raise StackError(
                        f"{name} exited with code {svc.process.returncode} while starting: "
                        f"{why_not_started(svc)} (log: {svc.log_path})"
                    )
                if all(healthy(u) for u in svc.health_urls):
                    svc.startup_s = round(elapsed, 1)
                    del pending[name]
                    console.print(f"[green]{name}[/] ready after {elapsed:.0f} s")
                elif elapsed > timeout_s:
                    raise StackError(
                        f"{name} did not answer {', '.join(svc.health_urls)} within "
                        f"{timeout_s:.0f} s: {why_not_started(svc)} (log: {svc.log_path})"
                    )
            if not pending:
                break
            waiting = ", ".join(
                f"{n} ({time.monotonic() - s.launched_at:.0f} s)" for n, s in pending.items()
            )
            if status is not None:
                status.update(f"waiting for {waiting} to answer its health check")
            elif time.monotonic() - last_note > 15:  # not a terminal: a line now and then
                console.print(f"waiting for {waiting}")
                last_note = time.monotonic()
            time.sleep(0.5)
    finally:
        if status is not None:
            status.stop()


# -- stopping ---------------------------------------------------------------------------


def session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid``: a service and everything it spawned.

    Zombies are left out (they are dead; an orphan's may wait long for init to reap it).
    Reads /proc; elsewhere only the process group ``sid`` can be found (and is).
    """
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - not Linux
        try:
            os.killpg(sid, 0)
            return [sid]
        except OSError:
            return []
    return [pid for pid, fields in live_processes() if len(fields) > 3 and int(fields[3]) == sid]


def live_processes() -> Iterator[tuple[int, list[str]]]:
    """``(pid, fields)`` of every process but zombies, from /proc (Linux): ``fields`` are
    those of ``/proc/PID/stat`` after the name, ``state ppid pgrp session ...``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields and fields[0] != "Z":
            yield int(entry.name), fields


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(processes: list[subprocess.Popen], until: float) -> bool:
    """Wait until no process is left in the processes' sessions; False on timeout."""
    while True:
        for p in processes:
            p.poll()  # reap our direct children so they do not linger as zombies
        if not any(session_pids(p.pid) for p in processes):
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(0.2)


def stop_sessions(processes: list[subprocess.Popen], grace_s: float) -> None:
    """Stop each service and everything it spawned: SIGTERM, wait, then SIGKILL.

    Each service was started with ``start_new_session=True``, so its session id is its
    pid and holds what it spawned (uvicorn, Ray's GCS, raylet and workers), and nothing
    else on the machine is touched: unlike ``ray stop``, which ends every Ray process of
    the user, another stack's or another project's included.

    The leader is asked first (``ray start --block`` and ``mlflow server`` tear their own
    children down in order), then whatever is left gets SIGTERM, then SIGKILL.
    """
    if not processes:
        return
    start = time.monotonic()
    _signal([p.pid for p in processes if p.poll() is None], signal.SIGTERM)
    if _wait_gone(processes, start + grace_s / 2):
        return
    for p in processes:
        _signal(session_pids(p.pid), signal.SIGTERM)
    if _wait_gone(processes, start + grace_s):
        return
    for p in processes:
        left = session_pids(p.pid)
        if left:
            logger.warning("killing %d process(es) that outlived SIGTERM", len(left))
            _signal(left, signal.SIGKILL)
    _wait_gone(processes, time.monotonic() + 5)


# -- signals of this process ------------------------------------------------------------


@contextlib.contextmanager
def no_interrupts() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM for the duration (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in saved:
        signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises ``KeyboardInterrupt`` (a subclass, so every
    ``except KeyboardInterrupt`` and ``finally`` runs alike); a command exits 143 on it,
    130 on Ctrl-C, as a shell reports 128 + the signal's number."""

    exit_code = 128 + signal.SIGTERM


# set by the handler: Ray's ray.get turns any KeyboardInterrupt into a plain one
_sigterm_received = threading.Event()


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    """143 for SIGTERM (``Terminated``, or any interrupt after SIGTERM was received), 130
    for Ctrl-C (SIGINT)."""
    if isinstance(exc, Terminated) or _sigterm_received.is_set():
        return Terminated.exit_code
    return 128 + signal.SIGINT


def _on_sigterm(signum: int, frame: object) -> None:
    _sigterm_received.set()
    raise Terminated(f"signal {signum}")


def unwind_on_sigterm() -> Any:
    """Make SIGTERM raise ``Terminated`` (a ``KeyboardInterrupt``), so ``finally`` blocks run.

    Returns:
        The handler replaced (for ``restore_sigterm``), or None when nothing was changed:
        not the main thread, or someone else already handles SIGTERM.
    """
    # SIGTERM would end Python without unwinding; make it unwind like Ctrl-C so
    # __exit__ / finally blocks stop the services
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        return None  # someone else handles SIGTERM; leave it to them
    _sigterm_received.clear()
    signal.signal(signal.SIGTERM, _on_sigterm)
    return previous


def reclaim_sigterm() -> None:
    """Put ``unwind_on_sigterm``'s handler back after a library replaced it (main thread).

    ``ray.init`` installs its own SIGTERM handlers: a Python one (``sys.exit``) and, in its
    core worker, a C++ one that prints a stack trace and aborts (exit 134, no ``finally``).
    A Prefect flow run installs one raising ``TerminationSignal``, which ``ray.get`` turns
    into a ``SystemError`` that Prefect records as a crashed task: the flow goes on.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def restore_sigterm(previous: Any) -> None:
    """Put back the handler ``unwind_on_sigterm`` replaced (None: nothing to do)."""
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)
