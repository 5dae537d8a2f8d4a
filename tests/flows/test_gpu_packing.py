"""Issue 12: several cells per GPU through fractional Ray GPU requests, the share derived from
a cell's GPU memory (estimated from the config, or measured) and the GPU's. The GPU path is
tested here without a GPU: a Ray node that declares one logical GPU runs cell-shaped tasks
with the grid's own resource request (``tasks.resources.cell_resources``)."""

from __future__ import annotations

import pytest

from skinadv.config import grid_config
from skinadv.training import footprint

MIB, GIB = 2**20, 2**30


def quick(*overrides: str):
    return grid_config("quick", data="synthetic:240:3", overrides=list(overrides))


def test_the_estimate_counts_the_data_model_and_batches():
    cfg = quick()
    small = footprint.cell_memory(cfg, 1000)
    assert small.context == footprint.CUDA_CONTEXT_BYTES
    assert small.data == 1000 * (3 * 28 * 28 * 4 + 8)  # float32 images + int64 labels
    assert footprint.cell_memory(cfg, 2000).data == 2 * small.data
    wide = footprint.cell_memory(quick("model.width=64"), 1000)
    assert wide.model > small.model and wide.activations > small.activations
    big_batch = footprint.cell_memory(quick("attack.batch_size=4096"), 1000)
    assert big_batch.activations > small.activations
    assert small.total == small.context + small.model + small.data + small.activations


@pytest.mark.parametrize(
    ("cell_mib", "device_gib", "utilisation", "cells"),
    [
        (4000, 16, None, 3),  # 0.9 * 16 GiB / 4000 MiB = 3.7
        (600, 80, None, footprint.MAX_CELLS_PER_GPU),  # memory would allow 122
        (600, 80, 0.3, 4),  # a lone cell keeps the GPU 30 % busy: 4 saturate it
        (40_000, 16, None, 1),  # does not fit: one at a time, never zero
    ],
)
def test_cells_per_gpu(cell_mib, device_gib, utilisation, cells):
    got = footprint.cells_per_gpu(cell_mib * MIB, device_gib * GIB, utilisation=utilisation)
    assert got == cells
    share = footprint.gpu_share(got)
    assert got * share <= 1.0 and (got + 1) * share > 1.0  # exactly `got` fit, not one more


def test_bad_packing_settings_fail_clearly(monkeypatch):
    from tasks import resources

    with pytest.raises(ValueError, match="utilisation"):
        footprint.cells_per_gpu(GIB, 16 * GIB, utilisation=1.5)
    monkeypatch.setenv(resources.GPU_SHARE_ENV, "2")
    with pytest.raises(ValueError, match="SKINADV_GPU_PER_CELL=2"):
        resources.gpu_plan(quick(), 1000)
    monkeypatch.setenv(resources.GPU_SHARE_ENV, "a quarter")
    with pytest.raises(ValueError, match="expected a number"):
        resources.gpu_plan(quick(), 1000)


def test_the_plan_uses_a_fixed_share_a_measured_peak_or_the_estimate(monkeypatch):
    from tasks import resources

    cfg = quick()
    monkeypatch.setenv(resources.GPU_MEMORY_ENV, "16")
    est = resources.gpu_plan(cfg, 1000)
    largest = footprint.cell_memory(cfg, round(1000 * (1 + max(cfg.fractions))))
    assert (est.source, est.cell_bytes, est.device_bytes) == ("estimated", largest.total, 16 * GIB)
    assert est.cells == footprint.cells_per_gpu(largest.total, 16 * GIB)
    monkeypatch.setenv(resources.CELL_MEMORY_ENV, "4000")
    measured = resources.gpu_plan(cfg, 1000)
    assert (measured.source, measured.cells, measured.share) == ("measured", 3, 0.3333)
    assert "3 cell(s) of 4,000 MiB (measured) per 16 GiB GPU" in measured.describe()
    monkeypatch.setenv(resources.GPU_SHARE_ENV, "0.25")
    assert resources.gpu_plan(cfg, 1000).share == 0.25


@pytest.mark.integration
def test_cells_pack_onto_a_logical_gpu_and_fall_back_to_the_cpu(ray_tmp, monkeypatch):
    """A Ray node with 6 CPUs and 1 logical GPU (no CUDA here); cells measured at 4000 MiB
    on a 16 GiB GPU: 3 at once, never more (the CPUs would allow 6), each assigned 0.3333
    GPU with ``CUDA_VISIBLE_DEVICES=0``; each worker process warns once, in one line, that
    it trains on the CPU."""
    import ray

    from tasks import resources

    monkeypatch.setenv(resources.GPU_MEMORY_ENV, "16")
    monkeypatch.setenv(resources.CELL_MEMORY_ENV, "4000")
    ray.init(num_cpus=6, num_gpus=1, include_dashboard=False, _temp_dir=str(ray_tmp))
    try:
        options = resources.cell_resources(quick(), lambda: 1000)
        assert options == {"num_cpus": 1, "num_gpus": 0.3333}

        @ray.remote(num_cpus=0)
        class Gauge:
            """How many cells run at once, at most."""

            def __init__(self) -> None:
                self.now = self.peak = 0

            def enter(self) -> None:
                self.now += 1
                self.peak = max(self.peak, self.now)

            def leave(self) -> None:
                self.now -= 1

            def max_seen(self) -> int:
                return self.peak

        @ray.remote
        def cell(gauge) -> dict:
            import logging
            import os
            import time

            from tasks import resources

            lines: list[str] = []
            handler = logging.Handler()
            handler.emit = lambda rec: lines.append(rec.getMessage())
            logging.getLogger(resources.__name__).addHandler(handler)
            try:
                got = resources.assigned()
                devices = [resources.use_assigned_gpu(got) for _ in range(2)]
            finally:
                logging.getLogger(resources.__name__).removeHandler(handler)
            ray.get(gauge.enter.remote())
            # hold the share until 3 cells run at once (or 60 s: slow worker starts on a
            # busy machine), then a little longer: a 4th cell Ray let in would show
            deadline = time.monotonic() + 60
            while ray.get(gauge.max_seen.remote()) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)
            ray.get(gauge.leave.remote())
            return {
                "gpu": got.get("GPU"),
                "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "devices": devices,
                "warnings": lines,
                "pid": os.getpid(),
            }

        gauge = Gauge.remote()
        out = ray.get([cell.options(**options).remote(gauge) for _ in range(6)], timeout=180)
        assert ray.get(gauge.max_seen.remote()) == 3
    finally:
        ray.shutdown()
    assert {(o["gpu"], o["cuda_visible"]) for o in out} == {(0.3333, "0")}
    assert all(o["devices"] == ["cpu", "cpu"] for o in out)
    by_pid: dict[int, list[str]] = {}
    for o in out:
        by_pid.setdefault(o["pid"], []).extend(o["warnings"])
    for lines in by_pid.values():
        assert len(lines) == 1 and "\n" not in lines[0], lines
        assert "CUDA is not available" in lines[0] and "training on the CPU" in lines[0]
