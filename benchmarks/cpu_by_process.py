"""Where a command's CPU time goes: run it, sample every process under it from ``/proc``
each second, and print CPU seconds per kind of process (Ray workers, raylet, the MLflow
and Prefect servers, the driver, ...) when it ends. Linux only.

    python benchmarks/cpu_by_process.py -- skinadv grid --preset quick --run-dir /tmp/q

A process's last sample is its total, so what a process does in its final second is missed.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

KINDS = (
    ("ray::", "Ray workers"),
    ("default_worker", "Ray workers"),
    ("raylet", "raylet"),
    ("gcs_server", "Ray GCS"),
    ("dashboard", "Ray dashboard and agents"),
    ("mlflow", "MLflow server"),
    ("prefect", "Prefect server"),
)


def snapshot() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds so far) for every process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(pid)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return out


def under(root: int, procs: dict[int, tuple[int, float]]) -> set[int]:
    children = collections.defaultdict(list)
    for pid, (ppid, _) in procs.items():
        children[ppid].append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children[pid])
    return found


def kind(pid: int, root: int) -> str:
    if pid == root:
        return "the command (driver)"
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        return "other"
    return next((k for key, k in KINDS if key in cmd), "other")


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: cpu_by_process.py -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    start = time.perf_counter()
    proc = subprocess.Popen(argv)
    totals: dict[int, tuple[str, float]] = {}
    while proc.poll() is None:
        procs = snapshot()
        for pid in under(proc.pid, procs) & procs.keys():
            name = totals[pid][0] if pid in totals else kind(pid, proc.pid)
            totals[pid] = (name, procs[pid][1])
        time.sleep(1)
    wall = time.perf_counter() - start
    by_kind: collections.Counter = collections.Counter()
    for name, cpu in totals.values():
        by_kind[name] += cpu
    total = sum(by_kind.values())
    cores = total / wall
    print(f"exit {proc.returncode}, wall {wall:.1f} s, CPU {total:.1f} s ({cores:.2f} cores)")
    for name, cpu in by_kind.most_common():
        print(f"{cpu:8.1f} s  {100 * cpu / max(total, 1e-9):5.1f} %  {name}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
