"""Cancelling a served flow run that waits on Ray.

Cancel in the Prefect UI (or ``set_state CANCELLING`` through the API) makes the runner that
serves the deployment send SIGTERM to the flow-run process; when its control channel
reaches the process first, the engine knows the intent ("cancel"), turns the SIGTERM into
``TerminationSignal`` and ends the run CANCELLED. But Ray's driver installs its own SIGTERM
handling: a flow blocked in ``ray.get`` gets ``SystemExit`` instead, which the engine would
record as a crash (CRASHED), and the runner then cannot set CANCELLED over a final state.

``cancellable`` catches that ``SystemExit`` after the flow's own context managers have
closed its MLflow runs as KILLED (as for Ctrl-C) and, when the run is being cancelled,
either hands the engine the signal it expects (the runner's intent reached it) or ends the
process at once with SIGTERM's exit status, so that the runner, which is waiting for it to
exit, records CANCELLED (no intent: the engine would have reported a crash first).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import runtime
from prefect.exceptions import TerminationSignal


def _intent() -> str | None:
    """The runner's control intent for this process (``cancel``), where this Prefect has
    the control channel; None otherwise."""
    try:
        from prefect._internal.control_listener import get_intent
    except ImportError:  # a Prefect without the control channel
        return None
    return get_intent()


def _cancelling_on_server() -> bool:
    """Whether the server says this flow run is CANCELLING (the UI's or API's request)."""
    run_id = runtime.flow_run.id
    if not run_id:
        return False
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run_id).state
    except Exception:  # noqa: BLE001 (the server is gone too: nothing says it was a cancel)
        return False
    return state is not None and state.is_cancelling()


@contextmanager
def cancellable() -> Iterator[None]:
    """Turn the ``SystemExit`` that Ray makes of the runner's SIGTERM into a cancellation
    when the run is being cancelled (see the module docstring); any other exit passes."""
    try:
        yield
    except SystemExit as exc:
        if _intent() == "cancel":
            raise TerminationSignal(signal.SIGTERM) from exc
        if _cancelling_on_server():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signal.SIGTERM)  # the runner records CANCELLED
        raise


__all__ = ["cancellable"]
