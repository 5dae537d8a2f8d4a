"""The Ray head: found through ``RAY_ADDRESS``, or started here (``ray start --head --block``).

A started head gets every port fixed (another Ray on this machine keeps its defaults) and
its temp dir in ``RUN/ray``, or in a short folder under /tmp linked from there when the
run folder is too deep for Ray's Unix socket paths.

A started head requires Ray's token authentication (``RAY_AUTH_MODE=token``, Ray >=
2.52): Ray's GCS, raylet and client server listen beyond 127.0.0.1 whatever the options
say, and without a token anyone who reaches them can run code here. The token is fresh
for each head, in a 0600 file under its temp dir; the head, its workers (they inherit the
raylet's environment) and the driver (``ray.init``) read it through ``RAY_AUTH_TOKEN_PATH``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from skinadv.stack.common import HOST, Env, Service, write_private
from skinadv.stack.process import script

# in this order: GCS, dashboard, client server, agent HTTP + gRPC, metrics, runtime-env agent
PORTS = 7
# Unix socket paths are limited to 107 bytes; Ray puts about 70 more under its temp dir.
RAY_TEMP_DIR_MAX_LEN = 32


def found(address: str) -> Service:
    """The head at ``address`` ($RAY_ADDRESS); dashboard from $RAY_DASHBOARD_URL if set."""
    ui = os.environ.get("RAY_DASHBOARD_URL") or None
    # no health URL: ray.init() fails clearly enough on a wrong address
    return Service("ray", address, ui, started=False, health_urls=())


def planned(ports: tuple[int, ...], logs: Path) -> Service:
    """The head this stack will start on ``ports`` (7), its output in ``logs/ray.log``."""
    gcs, dash, agent_http = ports[0], ports[1], ports[3]  # in PORTS order
    dash_url = f"http://{HOST}:{dash}"
    return Service(
        "ray",
        f"{HOST}:{gcs}",
        dash_url,
        started=True,
        # dashboard (GCS up) and the node's agent (raylet up, runtime envs served)
        health_urls=(
            dash_url + "/api/gcs_healthz",
            f"http://{HOST}:{agent_http}/api/healthz",
        ),
        log_path=logs / "ray.log",
        ports=ports,
    )


#: what a driver or worker needs in its environment to talk to a head started here
AUTH_ENV_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")


def auth_env(temp_dir: Path) -> Env:
    """Token authentication for a head about to start: a fresh random token written to
    ``temp_dir/auth_token`` (mode 0600), and the environment that makes Ray use it."""
    path = write_private(temp_dir / "auth_token", secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


def forget_cached_token() -> None:
    """Make this process read Ray's authentication settings afresh: Ray caches the mode
    (in its config) and the token it first read, once per process, so a driver that meets
    a second head (another stack, a test's cluster) after ``RAY_AUTH_*`` changed would
    still send the first head's token, or none, and be refused. A no-op while Ray is not
    imported or is connected (its config must not change under a running worker)."""
    ray = sys.modules.get("ray")
    if ray is None or ray.is_initialized():
        return
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token authentication
        return
    Config.initialize("")  # the config first: the loader reads the mode from it
    AuthenticationTokenLoader.instance().reset_cache()


def command(
    svc: Service, env: Env, *, temp_dir: Path, num_cpus: int | None
) -> tuple[list[str], Env]:
    """``ray start --head --block`` for ``svc`` and its environment (``env`` is updated,
    token authentication included: see ``auth_env``)."""
    gcs, dash, client, agent_http, agent_grpc, metrics, rtenv = svc.ports
    env |= auth_env(temp_dir)
    env |= {
        "RAY_USAGE_STATS_ENABLED": "0",
        # on SIGTERM, tear down now instead of draining the node for 30 s
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        # keep a worker beyond the CPU count idle for 10 min instead of 1 s: the grid's
        # next task reuses it instead of starting a process that imports torch, Prefect
        # and MLflow again (one-seed quick grid: 8 worker starts -> 5, 133 s -> 127 s);
        # a job's workers still end with the job
        "RAY_idle_worker_killing_time_threshold_ms": "600000",
    }
    cmd = [
        script("ray"),
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        # no --node-ip-address: Ray turns 127.0.0.1 into the machine's address anyway
        "--port",
        str(gcs),
        "--include-dashboard",
        "true",
        "--dashboard-host",
        HOST,
        "--dashboard-port",
        str(dash),
        # every port fixed: another Ray on this machine keeps its defaults (10001, 52365)
        "--ray-client-server-port",
        str(client),
        "--dashboard-agent-listen-port",
        str(agent_http),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--metrics-export-port",
        str(metrics),
        "--runtime-env-agent-port",
        str(rtenv),
        "--temp-dir",
        str(temp_dir),
    ]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    return cmd, env


def make_temp_dir(run_dir: Path) -> tuple[Path, Path | None]:
    """Ray's temp dir: ``RUN/ray`` if short enough, else a new /tmp folder linked from it.

    Returns:
        ``(temp_dir, made)``: ``made`` is the /tmp folder to remove with ``remove_temp_dir``,
        or None when ``RUN/ray`` itself is used.
    """
    wanted = run_dir / "ray"
    if len(str(wanted)) <= RAY_TEMP_DIR_MAX_LEN:
        wanted.mkdir(parents=True, exist_ok=True)
        return wanted, None
    # run folder too deep for Ray's socket paths: a short folder in /tmp, linked from it
    made = Path(tempfile.mkdtemp(prefix="skinadv-ray-", dir="/tmp"))
    with contextlib.suppress(OSError):
        if wanted.is_symlink():
            wanted.unlink()
        if not wanted.exists():
            wanted.symlink_to(made, target_is_directory=True)
    return made, made


def remove_temp_dir(run_dir: Path, made: Path) -> None:
    """Remove a /tmp folder from ``make_temp_dir``, keeping Ray's session logs in RUN/logs/ray."""
    # keep Ray's session logs in the run folder, drop the sockets and object spill
    keep = run_dir / "logs" / "ray"
    for logs in made.glob("session_2*/logs"):
        with contextlib.suppress(OSError, shutil.Error):
            shutil.copytree(logs, keep / logs.parent.name, dirs_exist_ok=True)
    shutil.rmtree(made, ignore_errors=True)
    link = run_dir / "ray"
    with contextlib.suppress(OSError):
        if link.is_symlink():
            link.unlink()
