"""The grid flow's logic, fast: Prefect's test harness, a thread-pool runner, MLflow on a
local SQLite file and a tiny synthetic set. Reuse, --force, a failing cell, a dead attempt,
and that no run is ever left RUNNING. (tests/flows/test_grid_integration.py runs the same
flow on the real Prefect server, Ray and MLflow server with real data.)"""

from __future__ import annotations

import pytest

from skinadv import tracking

TINY = [
    "train.epochs=1",
    "model.width=4",
    "attack.pgd.steps=2",
    "attack.batch_size=128",
    "data.subset=null",
    "seeds=[0]",
]
METHODS = ["fgsm", "pgd"]
FRACTIONS = [0.5, 1.0]
CELLS = ["vanilla"] + [f"{m}@{f:g}" for m in METHODS for f in FRACTIONS]


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    root = tmp_path_factory.mktemp("flow")
    mp = pytest.MonkeyPatch()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("SKINADV_TORCH_THREADS", "1")  # MLflow reads the URI from the environment
    mp.setenv("SKINADV_NODE_DIR", str(root / "node"))  # the tasks' files (tasks.store)
    with prefect_test_harness(server_startup_timeout=180):
        yield root
    mp.undo()


def run(root, experiment: str, **kw):
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.grid import GridParams, grid_flow

    kw = {"methods": METHODS, "fractions": FRACTIONS, "overrides": TINY, **kw}
    params = GridParams(
        data="synthetic:240:3",
        experiment=experiment,
        workdir=str(root / experiment / "work"),
        **kw,
    )
    flow = grid_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
    return flow(params)


def runs(experiment: str):
    import mlflow

    c = mlflow.MlflowClient()
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], max_results=1000)


def children(experiment: str, parent: str):
    return [r for r in runs(experiment) if r.data.tags.get("mlflow.parentRunId") == parent]


def assert_nothing_running(experiment: str) -> None:
    running = [
        (r.info.run_name, r.info.run_id) for r in runs(experiment) if r.info.status == "RUNNING"
    ]
    assert running == []


def assert_one_complete_run_per_cell(experiment: str) -> dict[str, str]:
    complete = [
        r
        for r in runs(experiment)
        if r.info.status == "FINISHED"
        and r.data.tags.get("skinadv.complete") == "true"
        and r.data.tags.get("skinadv.kind") != "parent"
    ]
    cells = sorted(r.data.tags["skinadv.cell"] for r in complete)
    assert cells == sorted(CELLS)
    return {r.data.tags["skinadv.cell"]: r.info.run_id for r in complete}


def assert_mlflow_as_a_user_meets_it(experiment: str, out) -> None:
    """The experiment and parent run describe themselves, the parent carries the key figures
    and ``cells.json``, every model run has its datasets and an MLflow model that loads and
    gives its weights' logits, and every tag is true at the end."""
    import mlflow
    import numpy as np
    import torch

    from skinadv import tracking_ui
    from skinadv.models import load_model
    from skinadv.training import prepare_data
    from tasks import store

    c = mlflow.MlflowClient()
    note = c.get_experiment_by_name(experiment).tags[tracking_ui.NOTE]
    assert "one parent run per grid" in note.lower() and "skinadv.cell" in note
    parent = c.get_run(out.parent_run_id)
    desc = parent.data.tags[tracking_ui.NOTE]
    assert desc.startswith(f"**skinadv: the quick grid (experiment {experiment})**")
    assert "vanilla CNN reaches" in desc  # the report's headline
    m = parent.data.metrics
    assert m["n_models"] == len(CELLS) and m["n_seeds"] == 1
    v = next(r for r in out.results if r.is_vanilla)
    assert m["vanilla_clean_balanced_accuracy"] == pytest.approx(
        v.flat_metrics()["clean_balanced_accuracy"]
    )
    assert "skinadv.cells" not in parent.data.tags
    assert tracking_ui.logged_cells(parent) == {r.key: r.run_id for r in out.results}
    assert parent.data.tags["skinadv.stage"] == "done"
    cfg = run_params(experiment).config()
    fingerprint = prepare_data(cfg.data).fingerprint
    for r in out.results:
        run = c.get_run(r.run_id)
        assert run.data.tags["skinadv.stage"] == "done"
        assert run.data.tags["skinadv.complete"] == "true"
        inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
        assert sorted(inputs) == ["test", "train", "validation"]
        assert {d.digest for d in inputs.values()} == {fingerprint}
        assert len(run.outputs.model_outputs) == 1  # the runs table's Models column
    # a model loads as an MLflow model and gives the same logits as its weights
    x, _ = prepare_data(cfg.data).test.to_float()
    mine, _ = load_model(store.weights(v.run_id))
    with torch.no_grad():
        want = mine.eval()(torch.from_numpy(x)).numpy()
    logged = mlflow.pytorch.load_model(f"runs:/{v.run_id}/{tracking_ui.MODEL_NAME}")
    with torch.no_grad():
        np.testing.assert_allclose(logged(torch.from_numpy(x)).numpy(), want, atol=1e-4)
    served = mlflow.pyfunc.load_model(f"runs:/{v.run_id}/{tracking_ui.MODEL_NAME}")
    np.testing.assert_allclose(served.predict(x), want, atol=1e-4)
    assert served.metadata.metadata["cell"] == "vanilla"


def run_params(experiment: str):
    from flows.grid import GridParams

    return GridParams(
        data="synthetic:240:3",
        experiment=experiment,
        methods=METHODS,
        fractions=FRACTIONS,
        overrides=TINY,
    )


def test_first_run_trains_every_model_and_ends_every_run(harness):
    out = run(harness, "f-first")
    assert sorted(out.trained) == sorted(f"{c} s0" for c in CELLS) and out.reused == []
    assert len(children("f-first", out.parent_run_id)) == len(CELLS)
    ids = assert_one_complete_run_per_cell("f-first")
    assert {r.run_id for r in out.results} == set(ids.values())
    assert_nothing_running("f-first")
    import mlflow

    parent = mlflow.MlflowClient().get_run(out.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["skinadv.prefect_flow_run_id"]
    assert_mlflow_as_a_user_meets_it("f-first", out)
    # the vanilla model's transfer and white-box figures are the same attacks
    v = next(r for r in out.results if r.is_vanilla)
    assert v.transfer.metrics == v.whitebox.metrics
    assert {c.name for c in out.checks} >= {"whitebox <= transfer", "no label leaking"}


def test_rerun_reuses_everything_and_crafts_no_pool(harness):
    import mlflow

    from skinadv import tracking

    first = run(harness, "f-reuse")
    # an interrupted earlier grid left an attempt of a finished model RUNNING
    c = mlflow.MlflowClient()
    v = c.get_run(next(r.run_id for r in first.results if r.is_vanilla))
    stale = tracking.start_run(
        "f-reuse",
        name="vanilla-s0",
        kind="vanilla",
        tags={tracking.TAG_HASH: v.data.tags[tracking.TAG_HASH], tracking.TAG_CELL: "vanilla"},
    )
    second = run(harness, "f-reuse")
    assert c.get_run(stale).info.status == "KILLED"
    assert second.trained == [] and len(second.reused) == len(CELLS)
    assert {r.run_id for r in second.results} == {r.run_id for r in first.results}
    assert children("f-reuse", second.parent_run_id) == []
    assert_one_complete_run_per_cell("f-reuse")
    assert_nothing_running("f-reuse")


def test_force_retrains(harness):
    first = run(harness, "f-force")
    forced = run(harness, "f-force", force=True)
    assert len(forced.trained) == len(CELLS) and forced.reused == []
    assert not {r.run_id for r in forced.results} & {r.run_id for r in first.results}
    assert_nothing_running("f-force")


def test_a_failing_cell_fails_the_flow_naming_it_and_the_rest_finish(harness, monkeypatch):
    from flows.grid import GridFailed
    from skinadv import experiment as exp

    real = exp.train_model

    def flaky(cfg, train, *, seed, on_epoch=None, defence=None):
        n = len(train[1]) if isinstance(train, tuple) else len(train)
        if n == flaky.n_pgd_full:
            raise RuntimeError("injected failure")
        return real(cfg, train, seed=seed, on_epoch=on_epoch, defence=defence)

    # pgd@1 trains on the training set + a full pool: twice the training set
    from flows.grid import GridParams
    from skinadv.training import prepare_data

    cfg = GridParams(data="synthetic:240:3", overrides=TINY).config()
    flaky.n_pgd_full = 2 * len(prepare_data(cfg.data).train)
    monkeypatch.setattr(exp, "train_model", flaky)
    with pytest.raises(GridFailed, match=r"pgd@1 s0") as err:
        run(harness, "f-fail", methods=["pgd"], fractions=[0.5, 1.0])
    assert "fgsm" not in str(err.value)  # only the failing cells are named
    all_runs = runs("f-fail")
    by_cell = {
        r.data.tags.get("skinadv.cell"): r.info.status
        for r in all_runs
        if r.data.tags.get("skinadv.kind") != "parent"
    }
    assert by_cell["vanilla"] == "FINISHED" and by_cell["pgd@0.5"] == "FINISHED"
    assert by_cell["pgd@1"] == "FAILED"
    parent = next(r for r in all_runs if r.data.tags.get("skinadv.kind") == "parent")
    assert parent.info.status == "FAILED"
    assert_nothing_running("f-fail")
    # the rerun trains only the failed cell
    monkeypatch.setattr(exp, "train_model", real)
    again = run(harness, "f-fail", methods=["pgd"], fractions=[0.5, 1.0])
    assert again.trained == ["pgd@1 s0"] and len(again.reused) == 2


def test_a_dead_attempt_left_running_is_marked_killed(harness):
    """A worker SIGKILLed mid-cell leaves its run RUNNING; the retry (here: the next grid)
    marks it KILLED before it trains, so exactly one complete run per cell remains."""
    from flows.grid import GridParams
    from skinadv import experiment as exp
    from skinadv import tracking
    from skinadv.training import prepare_data

    cfg = GridParams(
        data="synthetic:240:3", methods=METHODS, fractions=FRACTIONS, overrides=TINY
    ).config()
    vh = exp.vanilla_hash(cfg, prepare_data(cfg.data).fingerprint, 0)
    ch = exp.cell_hash(vh, cfg, "pgd", 0.5, 0, 1.0)
    dead = [
        tracking.start_run(
            "f-dead", name=f"{c}-s0", kind="cell", tags={tracking.TAG_HASH: h, tracking.TAG_CELL: c}
        )
        for c, h in (("vanilla", vh), ("pgd@0.5", ch))
    ]
    out = run(harness, "f-dead")
    assert len(out.trained) == len(CELLS)
    import mlflow

    c = mlflow.MlflowClient()
    for rid in dead:
        run_ = c.get_run(rid)
        assert run_.info.status == "KILLED"
        assert "attempt died" in run_.data.tags["skinadv.error"]
    assert_one_complete_run_per_cell("f-dead")
    assert_nothing_running("f-dead")


def test_bad_parameters_fail_before_anything_runs():
    from pydantic import ValidationError

    from flows.grid import GridParams

    with pytest.raises(ValidationError, match="fraction"):
        GridParams(fractions=[1.5])
    with pytest.raises(ValidationError, match="methods"):
        GridParams(methods=["nope"])
    with pytest.raises(ValidationError, match="unknown preset"):
        GridParams(preset="nope")


def test_on_the_fly_defences_and_the_robust_curve(harness):
    """A PGD-AT model trains beside the static cells (no pool), every model gets the
    white-box robust curve (one MLflow metric per eps), and a rerun reuses the defence."""
    import mlflow

    extra = [
        "defences=[{method: pgd-at, eps: 8/255, steps: 2}]",
        "robust.eps=[2/255, 8/255]",
        "robust.pgd_steps=3",
    ]
    out = run(harness, "f-def", methods=["fgsm"], fractions=[1.0], overrides=TINY + extra)
    assert sorted(out.trained) == ["fgsm@1 s0", "pgd-at@8_255 s0", "vanilla s0"]
    d = next(r for r in out.results if r.method == "pgd-at")
    assert d.cell == "pgd-at@8_255" and d.fraction is None
    for r in out.results:
        assert [p.eps for p in r.curve] == [2 / 255, 8 / 255]
        assert r.curve[1].accuracy <= r.curve[0].accuracy <= r.transfer.accuracy()
    c = mlflow.MlflowClient()
    run_ = c.get_run(d.run_id)
    assert run_.data.tags["skinadv.kind"] == "defence"
    assert {"robust_2_255_accuracy", "robust_8_255_balanced_accuracy", "train_grad_evals"} <= set(
        run_.data.metrics
    )
    assert float(run_.data.params["train_eps"]) == pytest.approx(8 / 255)
    # per method, the model most robust on the validation split is the registry's champion
    for method in ("fgsm", "pgd-at"):
        _, run_id, tags = tracking.champion(f"skinadv-f-def-{method}")
        mine = [r for r in out.results if r.method == method]
        best = max(mine, key=lambda r: r.validation_metrics()["val_robust_2_255_balanced_accuracy"])
        assert run_id == best.run_id and tags["method"] == method and tags["cell"] == best.cell
        assert tags["train_eps"] == ("8/255" if method == "pgd-at" else "fgsm 0.2")
        # true at the end: every white-box budget it was scored at, the robust curve's too
        assert tags["tested_eps"] == "2/255, 8/255, 0.2, 0.3"
    assert_champion_by_uri_gives_the_logged_figures("skinadv-f-def-pgd-at", TINY + extra)
    assert_key_results_table(out)
    assert_run_graph_edges(out)
    assert_nothing_running("f-def")
    again = run(harness, "f-def", methods=["fgsm"], fractions=[1.0], overrides=TINY + extra)
    assert again.trained == [] and "pgd-at@8_255 s0" in again.reused
    # the rerun that trained nothing says so on its flow run, with what it checked
    from prefect.artifacts import Artifact

    note = Artifact.get("skinadv-grid-rerun")
    assert note is not None and str(note.flow_run_id) == again.flow_run_id
    assert "Nothing to do: all 3 models reused" in note.data and d.run_id not in note.data
    data_fp = mlflow.MlflowClient().get_run(d.run_id).data.params["data_fingerprint"]
    assert data_fp in note.data


def assert_run_graph_edges(out) -> None:
    """Prefect's run graph draws an edge where a task took another's result: data to
    vanilla, vanilla to its pool and to the defence, the pool (and vanilla) to the cell."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[out.flow_run_id]))
        )
    ids = {t.name: str(t.id) for t in tasks}
    upstream = {
        t.name: {str(i.id) for inputs in t.task_inputs.values() for i in inputs if hasattr(i, "id")}
        for t in tasks
    }
    assert ids["prepare data"] in upstream["vanilla s0"]
    assert ids["vanilla s0"] in upstream["pool fgsm s0"]
    assert {ids["pool fgsm s0"], ids["vanilla s0"]} <= upstream["fgsm@1 s0"]
    assert ids["vanilla s0"] in upstream["pgd-at@8_255 s0"]


def assert_key_results_table(out) -> None:
    """The flow run's table artifact holds the report's first table: vanilla, the best
    static cell and the best defence, with their figures as mean ± half-width."""
    import json

    from prefect.artifacts import Artifact

    table = Artifact.get("skinadv-grid-key-results")
    assert table is not None and table.type == "table"
    assert str(table.flow_run_id) == out.flow_run_id
    rows = json.loads(table.data)
    assert [r["Cell"] for r in rows] == ["vanilla", "fgsm@1", "pgd-at@8_255"], rows
    vanilla = next(r for r in out.results if r.cell == "vanilla")
    clean = next(v for k, v in rows[0].items() if k.startswith("Clean bal. acc."))
    assert clean.startswith(f"{100 * vanilla.transfer.metrics['clean']['balanced_accuracy']:.1f}")


def assert_champion_by_uri_gives_the_logged_figures(name: str, overrides: list[str]) -> None:
    """``skinadv evaluate --model models:/NAME@robust-champion`` (the registry's copy, read
    through MLflow as a user would) with the grid's settings gives the clean and white-box
    figures and the robust curve that the grid logged for that model's run."""
    import json

    import mlflow
    from typer.testing import CliRunner

    from skinadv.commands.experiment import app
    from skinadv.results import RobustPoint

    _, run_id, _ = tracking.champion(name)
    logged = mlflow.MlflowClient().get_run(run_id).data.metrics
    sets = [a for o in overrides for a in ("--set", o)]
    res = CliRunner().invoke(
        app,
        ["evaluate", "--model", f"models:/{name}@robust-champion", "--data", "synthetic:240:3",
         "--preset", "quick", *sets, "--protocol", "whitebox", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["config_hash"] == mlflow.MlflowClient().get_run(run_id).data.params["config_hash"]
    flat = {f"clean_{k}": v for k, v in got["results"]["whitebox"]["clean"].items()}
    flat |= {f"whitebox_pgd_{k}": v for k, v in got["results"]["whitebox"]["pgd"].items()}
    for p in got["curve"]:
        flat |= RobustPoint.from_dict(p).metrics()
    keys = ["clean_accuracy", "clean_balanced_accuracy", "whitebox_pgd_accuracy"]
    keys += ["robust_2_255_accuracy", "robust_8_255_balanced_accuracy"]
    for k in keys:
        assert flat[k] == pytest.approx(logged[k], abs=1e-9), k


def test_three_seeds_give_three_runs_per_cell_and_the_table_aggregates_them(harness):
    """``seeds=[0, 1, 2]``: exactly three complete runs per cell in MLflow, one per seed, and
    the report's row for the cell is the mean of exactly those runs' metrics, with the
    t-interval over them."""
    import mlflow
    import pandas as pd
    from scipy import stats as st

    overrides = [o for o in TINY if not o.startswith("seeds=")] + ["seeds=[0, 1, 2]"]
    out = run(harness, "f-seeds", methods=["fgsm"], fractions=[1.0], overrides=overrides)
    assert sorted(out.trained) == sorted(
        f"{c} s{s}" for c in ("vanilla", "fgsm@1") for s in range(3)
    )
    c = mlflow.MlflowClient()
    complete = [
        r
        for r in children("f-seeds", out.parent_run_id)
        if r.data.tags.get(tracking.TAG_COMPLETE) == "true"
    ]
    for cell in ("vanilla", "fgsm@1"):
        mine = [r for r in complete if r.data.tags[tracking.TAG_CELL] == cell]
        assert sorted(int(r.data.params["seed"]) for r in mine) == [0, 1, 2]
        x = [100 * c.get_run(r.info.run_id).data.metrics["clean_balanced_accuracy"] for r in mine]
        table = pd.read_csv(
            out.files["grid_all_cells.csv"]
            if cell != "vanilla"
            else out.files["table1_vanilla.csv"]
        )
        row = table.iloc[0]
        key = "clean_balanced_accuracy"
        assert row["seeds"] == 3 and row[key] == pytest.approx(sum(x) / 3)
        # seeds that agree exactly (a tiny model can settle on one class) have no spread
        sem = st.sem(x)
        low, high = st.t.interval(0.95, 2, loc=sum(x) / 3, scale=sem) if sem > 0 else x[:2]
        assert [row[key + "_ci_low"], row[key + "_ci_high"]] == pytest.approx([low, high])
    assert_nothing_running("f-seeds")
    # the sanity sweeps are crafted once, on the first seed's vanilla model: the report's
    # checks read one vanilla's sweeps
    swept = {
        r.seed: tracking.load_result(r.run_id)[1] is not None for r in out.results if r.is_vanilla
    }
    assert swept == {0: True, 1: False, 2: False}
    sweep_checks = {"more steps never help", "more restarts never help"}
    assert sweep_checks <= {c.name for c in out.checks}
    # a grid of other seeds reuses vanillas without sweeps: its gather crafts them itself
    again = run(
        harness,
        "f-seeds",
        methods=["fgsm"],
        fractions=[1.0],
        overrides=[o for o in overrides if not o.startswith("seeds=")] + ["seeds=[2, 1]"],
    )
    assert again.trained == [] and len(again.reused) == 4
    assert sweep_checks <= {c.name for c in again.checks}


def test_a_grid_at_another_image_size_keeps_that_size(harness):
    """``data.size=16``: the split reaches the tasks at 16 x 16 (the size it was prepared
    at), not resized to the loader's default 28: the transfer sets are 16 x 16 too, and the
    fgsm cell trains on its 16 x 16 pool stacked onto the training set (mixed sizes would
    fail it)."""
    from tasks import store

    overrides = TINY + ["data.size=16"]
    out = run(harness, "f-size", methods=["fgsm"], fractions=[1.0], overrides=overrides)
    vanilla = next(r for r in out.results if r.is_vanilla)
    sets = store.transfer_sets(vanilla.run_id)
    shapes = {k: v.shape[-2:] for k, v in sets.items() if v.ndim == 4}
    assert shapes and set(shapes.values()) == {(16, 16)}, shapes
    assert sorted(out.trained) == ["fgsm@1 s0", "vanilla s0"]


def test_the_mix_pool_is_composed_from_the_fgsm_and_pgd_pools(harness, monkeypatch):
    """With fgsm, pgd and mix in the grid, only the fgsm and pgd pools are crafted and the
    mix cells train on ``mix_pool`` of those two; a rerun where the fgsm and pgd cells are
    reused (their pools skipped) but a mix cell is not crafts the sources again and gives
    the mix cell the same pool, so the mix cells' config hash keeps its meaning."""
    import mlflow
    import numpy as np

    import tasks.grid as tg
    from skinadv.training import MIX_FROM_POOLS, mix_pool

    crafted: list[str] = []
    used: dict[str, list] = {}
    real_craft, real_augment = tg.adversarial_pool, tg.augment

    def craft(*args, method, **kw):
        crafted.append(method)
        return real_craft(*args, method=method, **kw)

    def augment(x, y, pool, fraction):
        used.setdefault(pool.method, []).append(pool)
        return real_augment(x, y, pool, fraction)

    monkeypatch.setattr(tg, "adversarial_pool", craft)
    monkeypatch.setattr(tg, "augment", augment)
    methods = ["fgsm", "pgd", "mix"]
    out = run(harness, "f-mix", methods=methods, fractions=[1.0])
    assert sorted(out.trained) == sorted(f"{c} s0" for c in ("vanilla", "fgsm@1", "pgd@1", "mix@1"))
    assert sorted(crafted) == ["fgsm", "pgd"]  # no mix pool crafted
    (fgsm,), (pgd,), (mix,) = used["fgsm"], used["pgd"], used["mix"]
    want = mix_pool(fgsm, pgd)
    assert np.array_equal(mix.index, want.index) and np.array_equal(mix.x_adv, want.x_adv)
    assert list(mix.kinds) == list(want.kinds) and mix.attack["source"] == MIX_FROM_POOLS
    c = mlflow.MlflowClient()
    by_cell = {r.cell: c.get_run(r.run_id) for r in out.results}
    assert by_cell["mix@1"].data.params["pool_recipe"] == MIX_FROM_POOLS
    assert by_cell["fgsm@1"].data.params["pool_recipe"] == "crafted"

    # the mix cell's run is incomplete (a failed attempt): only it is trained again, and the
    # fgsm and pgd pools it needs are crafted although their own cells are reused
    c.set_tag(by_cell["mix@1"].info.run_id, tracking.TAG_COMPLETE, "false")
    crafted.clear()
    used.clear()
    again = run(harness, "f-mix", methods=methods, fractions=[1.0])
    assert again.trained == ["mix@1 s0"] and len(again.reused) == 3
    assert sorted(crafted) == ["fgsm", "pgd"] and list(used) == ["mix"]
    assert np.array_equal(used["mix"][0].x_adv, mix.x_adv)
    assert_nothing_running("f-mix")
