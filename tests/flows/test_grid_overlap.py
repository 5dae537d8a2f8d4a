"""Two identical grids at once in one experiment (issue 23): each model is trained once in
all, the other grid waits for it and reuses it. Fast: Prefect's test harness, thread-pool
runners, MLflow on SQLite, a tiny synthetic set (as tests/flows/test_grid_flow.py; the
real-services version is tests/flows/test_load.py's overlap test)."""

from __future__ import annotations

import threading
import time

from test_grid_flow import (  # same folder (pytest prepends it)
    CELLS,
    assert_nothing_running,
    assert_one_complete_run_per_cell,
    harness,  # noqa: F401 - the module's own Prefect harness and SQLite MLflow
    run,
    runs,
)

from skinadv import tracking, tracking_lease


def _task_messages(flow_run_id: str) -> list[str]:
    """The final state messages of a flow run's task runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return [t.state.message or "" for t in tasks if t.state is not None]


def test_two_identical_grids_at_once_train_each_model_once(harness, monkeypatch):  # noqa: F811
    from skinadv import experiment as exp

    monkeypatch.setenv(tracking_lease.LEASE_ENV, "20")  # polls every ~3 s while waiting
    real = exp.train_model

    def slow(*args, **kw):
        time.sleep(2.0)  # both grids reach every model while its owner trains it
        return real(*args, **kw)

    monkeypatch.setattr(exp, "train_model", slow)
    start = threading.Barrier(2)
    outs: dict[int, object] = {}

    def grid(i: int) -> None:
        start.wait()
        outs[i] = run(harness, "f-overlap")

    threads = [threading.Thread(target=grid, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    assert sorted(outs) == [0, 1], "a grid failed (see its log above)"
    a, b = outs[0], outs[1]
    # each model trained exactly once in all; each grid reports every model
    assert sorted(a.trained + b.trained) == sorted(f"{c} s0" for c in CELLS)
    assert len(a.trained) + len(a.reused) == len(b.trained) + len(b.reused) == len(CELLS)
    ids = assert_one_complete_run_per_cell("f-overlap")
    assert {r.run_id for r in a.results} == {r.run_id for r in b.results} == set(ids.values())
    assert_nothing_running("f-overlap")
    all_runs = runs("f-overlap")
    parents = [r for r in all_runs if r.data.tags.get(tracking.TAG_KIND) == "parent"]
    assert sorted(r.info.status for r in parents) == ["FINISHED", "FINISHED"]
    # a grid that met the other's live run waited for it and said so; its own claim was
    # ended at once, KILLED, naming the owner
    said = [m for o in (a, b) for m in _task_messages(o.flow_run_id)]
    waited = [m for m in said if "waited for and reused MLflow run" in m]
    assert waited, said
    lost = [
        r
        for r in all_runs
        if r.info.status == "KILLED"
        and r.data.tags.get(tracking.TAG_ERROR, "").startswith("lost the claim to run ")
    ]
    assert len(lost) >= len(waited)
    assert {r.data.tags[tracking.TAG_ERROR].rsplit(" ", 1)[1] for r in lost} <= set(ids.values())
    killed = {r.info.run_id for r in all_runs if r.info.status == "KILLED"}
    assert killed == {r.info.run_id for r in lost}  # nobody killed a live owner
