"""What logging a model as an MLflow model (pt2, ``skinadv.tracking_ui.log_model``) costs per
model, beside the state dict the grid logged before: seconds and bytes, on a SQLite MLflow
with local artifacts in a temporary folder (a server adds its upload on top).

    PYTHONPATH=. python benchmarks/mlflow_model_cost.py [--widths 16 32] [--models 5]
        [--threads 1]

The first model of a process pays torch.export's one-off start (imports, tracing machinery);
the rest is the steady cost, which is what a Ray worker that already logged one pays. Also
times the datasets (``log_datasets``: three splits' schema and profile, no images) and
loading the model back (``mlflow.pytorch.load_model``). Prints a Markdown table and the load
average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from skinadv.experiment import set_threads


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--models", type=int, default=5, help="models per width")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="mlflow-cost-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    import mlflow

    from skinadv import tracking, tracking_ui
    from skinadv.data import CLASSES, Dataset
    from skinadv.models import create_model, save_model

    mlflow.MlflowClient().create_experiment("cost", artifact_location=(tmp / "art").as_uri())
    rng = np.random.default_rng(0)

    def ds(n: int) -> Dataset:
        images = rng.integers(0, 256, size=(n, 28, 28, 3), dtype=np.uint8)
        return Dataset(images, rng.integers(0, len(CLASSES), size=n), "synthetic", "synthetic")

    splits = {"train": ds(8000), "validation": ds(900), "test": ds(2000)}
    example = splits["test"].subset(np.arange(2)).to_float()[0]
    load = os.getloadavg()
    rows = []
    for width in args.widths:
        for i in range(args.models):
            model = create_model("paper_cnn", width=width)
            rid = tracking.start_run("cost", name=f"w{width}-{i}", kind="cell")
            t0 = time.perf_counter()
            tracking_ui.log_datasets(rid, splits, fingerprint="0" * 16, spec="synthetic")
            t1 = time.perf_counter()
            uri = tracking_ui.log_model(rid, model, example)
            t2 = time.perf_counter()
            loaded = mlflow.pytorch.load_model(uri)
            t3 = time.perf_counter()
            with torch.no_grad():
                x = torch.from_numpy(example)
                assert torch.allclose(loaded(x), model.eval()(x), atol=1e-5)
            model_id = uri.rsplit("/", 1)[-1]
            size = _bytes(next((tmp / "art").rglob(model_id)))
            pt = save_model(model, tmp / "w" / f"{rid}.pt").stat().st_size
            rows.append((width, i, t1 - t0, t2 - t1, t3 - t2, size, pt))
            tracking.finish_run(rid)
    print(f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
          f"torch {torch.__version__}, mlflow {mlflow.__version__}, {args.threads} thread(s)\n")  # fmt: skip
    print(
        "| width | model | datasets s | log_model s | load s | MLflow model bytes | state dict bytes |"
    )
    print("|---|---|---|---|---|---|---|")
    for width, i, d, m, ld, size, pt in rows:
        print(f"| {width} | {i} | {d:.2f} | {m:.2f} | {ld:.2f} | {size:,} | {pt:,} |")
    steady = [r[3] for r in rows[1:]] or [rows[0][3]]
    print(f"\nfirst log_model {rows[0][3]:.2f} s; then median {statistics.median(steady):.2f} s")


if __name__ == "__main__":
    main()
