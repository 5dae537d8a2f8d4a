"""Ray's error messages to the driver go to the grid's log file, not its console.

``ray.init`` starts a thread on the driver, ``ray_listen_error_messages``, that prints what
the cluster publishes for this job ("(raylet) A worker died or was killed while executing
a task by an unexpected system error ...", "Task _run_prefect_task failed. There are 3
retries remaining ...") to ``sys.stdout``, with colour codes, whatever ``log_to_driver``
and ``configure_logging`` say (``ray._private.worker.listen_error_messages``). While
``listener_to_log`` is active, that thread's writes become log records (colour codes
stripped); every other thread's go where they went before.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

LISTENER = "ray_listen_error_messages"  # the thread's name in ray._private.worker
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

log = logging.getLogger(__name__)


class _ListenerToLog(io.TextIOBase):
    """A stand-in for ``sys.stdout`` / ``sys.stderr``: lines written by Ray's error listener
    thread go to ``logger``, everything else to ``real``."""

    def __init__(self, real: TextIO, logger: logging.Logger) -> None:
        self.real = real
        self.logger = logger
        self._partial = ""

    def write(self, text: str) -> int:
        if threading.current_thread().name != LISTENER:
            return self.real.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            line = ANSI.sub("", line).rstrip()
            if line:
                self.logger.warning("%s", line)
        return len(text)

    def flush(self) -> None:
        if threading.current_thread().name != LISTENER:
            self.real.flush()

    def isatty(self) -> bool:
        return self.real.isatty()

    def fileno(self) -> int:
        return self.real.fileno()

    def __getattr__(self, name: str):  # encoding, errors, buffer, ...
        return getattr(self.real, name)


@contextmanager
def listener_to_log(logger: logging.Logger = log) -> Iterator[None]:
    """Route Ray's error listener's output on ``sys.stdout`` and ``sys.stderr`` to
    ``logger`` for the block; both streams are put back after it."""
    before = sys.stdout, sys.stderr
    sys.stdout = _ListenerToLog(sys.stdout, logger)
    sys.stderr = _ListenerToLog(sys.stderr, logger)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = before
