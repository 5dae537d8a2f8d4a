"""The grid's console stays quiet through a fault: a Ray worker SIGKILLed mid-training.

Ray's own lines about the dead worker (its error listener's "(raylet) A worker died ...",
the core worker's "Task ... failed. There are N retries remaining") go to RUN_DIR/logs/
grid.log; the console gets one line of ours naming the model and its retry."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration

TINY = [
    *("--set", "data.subset=400", "--set", "train.epochs=3"),
    *("--set", "model.width=8", "--set", "seeds=[0]"),
    *("--methods", "fgsm", "--fractions", "0.4"),
]
ANSI = re.compile(r"\x1b\[")


def _victim(client, experiment: str):
    """The vanilla model's run once it is training (the grid's first model: the earliest
    point to kill a worker), else None."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    found = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.`skinadv.cell` = 'vanilla' and attributes.status = 'RUNNING' "
        "and tags.`skinadv.stage` = 'training'",
    )
    return found[0] if found else None


def test_a_killed_worker_is_one_console_line(real_npz, tmp_path):
    import mlflow

    from skinadv.stack import Stack

    with Stack(tmp_path / "stack", ray_num_cpus=2) as stack:
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": stack.mlflow_tracking_uri,
            "PREFECT_API_URL": stack.prefect_api_url,
            "RAY_ADDRESS": stack.ray_address,
            "COLUMNS": "200",
        }
        run_dir = tmp_path / "grid"
        cmd = [sys.executable, "-m", "skinadv.cli", "grid", "--data", str(real_npz)]
        cmd += [*TINY, "--experiment", "console-fault", "--run-dir", str(run_dir)]
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        client = mlflow.MlflowClient(stack.mlflow_tracking_uri)
        victim, deadline = None, time.monotonic() + 300
        try:
            while victim is None:
                assert proc.poll() is None, (
                    "the grid ended before the vanilla model trained: " + proc.stderr.read()[-3000:]
                )
                assert time.monotonic() < deadline, "the vanilla model did not train in 5 min"
                victim = _victim(client, "console-fault")
                time.sleep(0.1)
            _, pid = victim.data.tags["skinadv.worker"].rsplit(":", 1)
            os.kill(int(pid), signal.SIGKILL)
            out, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    console = out + err
    print(console)
    log = (run_dir / "logs" / "grid.log").read_text()
    assert proc.returncode == 0, err[-4000:]
    assert "a worker died or was killed" not in console.lower(), console  # Ray's words
    assert "retries remaining" not in console, console
    assert not ANSI.search(console), console
    ours = [line for line in console.splitlines() if "its Ray worker died" in line]
    assert len(ours) == 1, console
    assert "vanilla s0" in ours[0] and "attempt 2 of 4" in ours[0], ours
    assert "a worker died or was killed" in log.lower() and "retries remaining" in log, log[-4000:]
