"""A run folder's services come back on the ports they had (``ports.json``), so links to
the MLflow and Prefect UIs keep working after ``skinadv up --run-dir`` restarts them; a
port taken meanwhile is replaced by a fresh one for that service only."""

from __future__ import annotations

import json
import socket

from skinadv.stack import Stack
from skinadv.stack.core import PORTS_FILE


def _planned(run_dir) -> dict[str, tuple[int, ...]]:
    stack = Stack(run_dir)
    stack._plan(["mlflow", "prefect", "ray"])
    return {name: svc.ports for name, svc in stack.services.items()}


def test_a_run_folder_keeps_its_ports_unless_taken(tmp_path):
    first = _planned(tmp_path)
    ports = [p for v in first.values() for p in v]
    assert len(set(ports)) == len(ports) == 9  # mlflow 1, prefect 1, ray 7: all distinct
    saved = json.loads((tmp_path / PORTS_FILE).read_text())
    assert {k: tuple(v) for k, v in saved.items()} == first
    assert _planned(tmp_path) == first  # the restart takes the same ports

    with socket.socket() as taken:  # someone else now listens on MLflow's port
        taken.bind(("127.0.0.1", first["mlflow"][0]))
        taken.listen()
        again = _planned(tmp_path)
    assert again["mlflow"] != first["mlflow"]
    assert again["prefect"] == first["prefect"] and again["ray"] == first["ray"]
    ports = [p for v in again.values() for p in v]
    assert len(set(ports)) == len(ports)


def test_a_damaged_ports_file_is_ignored(tmp_path):
    (tmp_path / PORTS_FILE).write_text('{"mlflow": "not a list", "ray": [1, 2]')
    planned = _planned(tmp_path)
    assert len(planned["mlflow"]) == 1 and len(planned["ray"]) == 7
    (tmp_path / PORTS_FILE).write_text('{"mlflow": [1, 2], "prefect": ["x"], "bogus": [5]}')
    planned = _planned(tmp_path)
    assert planned["mlflow"] != (1,) and len(planned["mlflow"]) == 1


def test_the_grid_ends_with_deep_links(monkeypatch, tmp_path):
    """The runs table in MLflow's "Model training" view, the parent run, the Prefect flow
    run, and how to bring the services back."""
    from types import SimpleNamespace

    from skinadv import tracking
    from skinadv.commands.grid import _links

    monkeypatch.setattr(tracking, "tracking_uri", lambda: "http://127.0.0.1:5123")
    run = SimpleNamespace(info=SimpleNamespace(experiment_id="7", run_id="abc"))
    fake = SimpleNamespace(get_run=lambda run_id: run)
    monkeypatch.setattr(tracking, "client", lambda: fake)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    outcome = SimpleNamespace(parent_run_id="abc", flow_run_id="f-1")
    lines = _links(outcome, tmp_path / "run", started=True)
    assert lines == [
        "MLflow runs: http://127.0.0.1:5123/#/experiments/7/runs?workflowType=machine_learning",
        "MLflow parent run: http://127.0.0.1:5123/#/experiments/7/runs/abc",
        "Prefect flow run: http://127.0.0.1:4200/runs/flow-run/f-1",
        f"browse again: skinadv up --run-dir {tmp_path / 'run'}",
    ]
    assert _links(outcome, tmp_path, started=False)[-1].startswith("Prefect flow run")


def test_report_links_each_cell_to_its_first_seeds_run(monkeypatch):
    """One lookup of the grid's experiment, then each cell's lowest seed's run page."""
    from types import SimpleNamespace

    from skinadv import tracking
    from tasks.report import _cell_links

    looked_up = []

    def get_run(run_id):
        looked_up.append(run_id)
        return SimpleNamespace(info=SimpleNamespace(experiment_id="7", run_id=run_id))

    monkeypatch.setattr(tracking, "tracking_uri", lambda: "http://127.0.0.1:5123")
    monkeypatch.setattr(tracking, "client", lambda: SimpleNamespace(get_run=get_run))
    results = [
        SimpleNamespace(cell=c, seed=s, run_id=f"{c}-{s}")
        for c in ("vanilla", "pgd@0.8")
        for s in (2, 0, 1)
    ]
    links = _cell_links(results, "parent")
    base = "http://127.0.0.1:5123/#/experiments/7/runs/"
    assert links == {"vanilla": base + "vanilla-0", "pgd@0.8": base + "pgd@0.8-0"}
    assert looked_up == ["parent"]
    monkeypatch.setattr(tracking, "tracking_uri", lambda: "sqlite:///x.db")
    assert _cell_links(results, "parent") == {}
