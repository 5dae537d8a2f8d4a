"""Loaded by every Python process of a Ray node in the two-node grid test (the node starts
with this folder on ``PYTHONPATH``): any open, listing, rename or removal of a path under a
folder named in ``$SKINADV_TEST_FORBIDDEN`` (the other node's folder, the driver's run
folder, the servers' storage) raises PermissionError and is written to
``$SKINADV_NODE_DIR/forbidden.log``, so a task that still reaches for a shared path fails
the grid, and the test sees which path it was."""

from __future__ import annotations

import os
import sys

_FORBIDDEN = tuple(
    os.path.join(os.path.realpath(p), "")
    for p in os.environ.get("SKINADV_TEST_FORBIDDEN", "").split(os.pathsep)
    if p
)
_EVENTS = {"open", "os.listdir", "os.scandir", "os.rename", "os.remove", "os.mkdir"}


def _guard(event: str, args: tuple) -> None:
    if event not in _EVENTS:
        return
    for arg in args[:2]:
        if not isinstance(arg, str | bytes | os.PathLike):
            continue
        path = os.path.join(os.path.realpath(os.fsdecode(arg)), "")
        if path.startswith(_FORBIDDEN):
            mine = os.environ.get("SKINADV_NODE_DIR", ".")
            os.makedirs(mine, exist_ok=True)
            with open(os.path.join(mine, "forbidden.log"), "a") as fh:
                fh.write(f"{os.getpid()} {event} {path}\n")
            raise PermissionError(f"{event} {path}: another node's or the driver's folder")


if _FORBIDDEN:
    sys.addaudithook(_guard)
