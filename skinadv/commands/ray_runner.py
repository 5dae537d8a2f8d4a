"""The grid's Ray task runner as the CLI uses it: SIGTERM unwinds the grid as Ctrl-C does.

Imported after the services are up (it imports Prefect). A module of its own, not a class
made in a function: Prefect sends the flow, its task runner included, to every Ray task,
and a class is pickled by reference only when it can be imported.
"""

from __future__ import annotations

from typing import Self

from prefect_ray import RayTaskRunner

from skinadv.stack.process import reclaim_sigterm


class SigtermUnwindsRunner(RayTaskRunner):
    """A ``RayTaskRunner`` that takes SIGTERM back once the flow run has entered it.

    The flow run installs Prefect's handler (its ``TerminationSignal`` is lost inside
    ``ray.get``, which turns it into a ``SystemError``: one task is recorded as crashed and
    the grid goes on) and ``ray.init`` installs Ray's (which aborts the driver, exit 134).
    Use it only where a ``Stack`` owns SIGTERM (``Stack.owns_sigterm``): in a deployment's
    run, Prefect's handler is how a cancellation from the UI reaches the flow.
    """

    def __enter__(self) -> Self:
        entered = super().__enter__()
        reclaim_sigterm()
        return entered
