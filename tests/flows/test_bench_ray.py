"""``skinadv bench --ray`` on a tiny setting (2 cells, a width-4 CNN, 256 images, a bare
local Ray, MLflow on a SQLite file): the JSON's shape, figures consistent with each other
(cells/min from the wall time, efficiency from the two runs, no more cells at once than
workers), the MLflow runs really logged, the Markdown sections; bad input gives one line and
exit code 2 before anything starts. No timed assertions: speed is reported, never asserted."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from skinadv.bench import tiny as tiny_bench
from skinadv.cli import app
from skinadv.commands import bench_ray

runner = CliRunner()


def bench(*args):
    return runner.invoke(app, ["bench", *map(str, args)])


def test_max_concurrent():
    assert bench_ray.max_concurrent([(0, 2), (1, 3), (2, 4)]) == 2  # an end frees its slot
    assert bench_ray.max_concurrent([(0, 1), (1, 2), (2, 3)]) == 1
    assert bench_ray.max_concurrent([(0, 5), (1, 2), (1.5, 3)]) == 3


def check_runs(part: dict, settings: bench_ray.RaySettings) -> None:
    """A part's 1- and 2-worker runs: counts, times consistent with each other, the in-flight
    limit held, efficiency and contention computed from the runs' own figures."""
    runs = {r["workers"]: r for r in part["runs"]}
    assert sorted(runs) == [1, 2]
    for k, r in runs.items():
        assert r["cells"] == settings.cells == r["task_compute_s"]["n"]
        assert r["wall_s"] > 0
        assert r["cells_per_min"] == pytest.approx(60 * r["cells"] / r["wall_s"])
        c = r["task_compute_s"]
        assert 0 < c["min"] <= c["median"] <= c["max"] <= r["wall_s"]  # inside the run
        assert r["task_cpu_s"]["min"] > 0
        assert 1 <= r["max_concurrent"] <= k  # the in-flight limit held
        assert 0 < r["busy_share"] <= 1
        assert r["busy_share"] == pytest.approx(c["mean"] * c["n"] / (k * r["wall_s"]))
        cpu = r["task_cpu_s"]
        assert r["cores_used"] == pytest.approx(cpu["mean"] * cpu["n"] / r["wall_s"])
    one, two = runs[1], runs[2]
    assert part["efficiency"] == pytest.approx(two["cells_per_min"] / (2 * one["cells_per_min"]))
    assert part["efficiency"] == pytest.approx(one["wall_s"] / (2 * two["wall_s"]))  # same cells
    ratio = two["task_compute_s"]["median"] / one["task_compute_s"]["median"]
    assert part["contention"] == pytest.approx(ratio)
    cpu_ratio = two["task_cpu_s"]["median"] / one["task_cpu_s"]["median"]
    assert part["cpu_contention"] == pytest.approx(cpu_ratio)


def test_cli_ray_part(real_npz, ray_tmp, tmp_path, monkeypatch):
    import ray

    # the attack and training part as small as it goes (tests/core/test_bench.py checks it):
    # this test is about the Ray part
    smallest = {"n_images": 24, "train_images": 96, "batch_sizes": (24,), "fit_images": 64}
    monkeypatch.setattr(
        "skinadv.bench.quick", lambda data, device: tiny_bench(data, device=device, **smallest)
    )
    monkeypatch.setattr(bench_ray, "default_settings", lambda cells=None: bench_ray.tiny())
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    res = bench(
        "--quick", "--data", real_npz, "--libraries", "skinadv", "--no-bf16", "--ray",
        "--json", out, "--markdown", md,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert not ray.is_initialized()  # shut down again
    payload = json.loads(out.read_text())
    rs, orch = payload["ray_scaling"], payload["orchestration"]
    settings = bench_ray.tiny()

    assert rs["settings"]["head_cpus"] == 2 and rs["images"] == settings.images
    check_runs(rs, settings)
    check_runs(rs["processes"], settings)  # the same cells without Ray
    assert min(r["nice"] for r in rs["processes"]["runs"]) >= bench_ray.WORKER_NICE

    assert orch["services"] == {"started": False} and "prefect" not in orch
    assert orch["ray_init_s"] > 0 and orch["ray"]["worker_warmup_s"] > 0
    assert orch["ray"]["warm_workers"] >= 1 and orch["ray"]["data_mb"] > 0
    d = orch["ray"]["dispatch_ms"]
    assert d["n"] == settings.dispatch_rounds and 0 < d["min"] <= d["median"] <= d["max"]
    m = orch["mlflow"]
    assert m["target"].startswith("sqlite:") and m["first_ms"] > 0
    assert m["run_ms"]["n"] == settings.mlflow_rounds and m["run_ms"]["median"] > 0
    assert m["runs_finished"] == settings.mlflow_rounds + 1  # read back from the store

    text = md.read_text()
    assert "## Ray scaling" in text and "Processes (no Ray): parallel efficiency" in text
    assert f"{rs['efficiency']:.2f}" in text and "Ray task dispatch" in text
    assert "not run (pass --ray)" not in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ray", "--ray-cells", "0"], "--ray-cells must be an even number >= 2"),
        (["--ray", "--ray-cells", "3"], "--ray-cells must be an even number >= 2"),
        (["--ray", "--ray-cells", "-4"], "--ray-cells must be an even number >= 2"),
        (["--ray-cells", "4"], "--ray-cells needs --ray"),
    ],
)
def test_cli_ray_bad_input(args, message, real_npz, tmp_path):
    res = bench("--quick", "--data", real_npz, "--json", tmp_path / "b.json", *args)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert res.output.count("error:") == 1
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing written
