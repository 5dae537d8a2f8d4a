"""Find or start the services the grid runs on: MLflow tracking server, Prefect server, Ray.

For each service, an environment variable that is already set wins and nothing is started
for it (``MLFLOW_TRACKING_URI``, ``PREFECT_API_URL``, ``RAY_ADDRESS``: a team server, a
cluster). Otherwise a local one is started on 127.0.0.1, on a free port, with its state
and logs under a run folder::

    RUN/mlflow.db  RUN/mlartifacts/     MLflow (SQLite backend, proxied artifacts)
    RUN/prefect/prefect.db              Prefect (its own PREFECT_HOME)
    RUN/ray -> Ray's temp dir           Ray head (sockets, session logs)
    RUN/logs/{mlflow,prefect,ray}.log   what each process printed

Storage of the started servers (SQLite files and a local artifact folder unless told
otherwise). Each is a ``Stack`` argument, else read from its environment variable; they
only matter for a server this stack starts (a server found through ``MLFLOW_TRACKING_URI``
or ``PREFECT_API_URL`` keeps its own storage)::

    mlflow_backend_uri    $SKINADV_MLFLOW_BACKEND_URI    mlflow server --backend-store-uri
        e.g. postgresql://mlflow@db.example:5432/mlflow (SQLAlchemy 2.1 reads postgresql://
        with psycopg 3, 2.0 with psycopg2: both are dependencies)
    mlflow_artifacts      $SKINADV_MLFLOW_ARTIFACTS      mlflow server --artifacts-destination
        e.g. s3://bucket/prefix; the server proxies every artifact (--serve-artifacts), so
        only the server needs S3 access; ``MLFLOW_S3_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL``)
        selects an S3-compatible store (MinIO, moto)
    prefect_database_url  $SKINADV_PREFECT_DATABASE_URL  PREFECT_SERVER_DATABASE_CONNECTION_URL
        e.g. postgresql+asyncpg://prefect@db.example:5432/prefect (``postgresql://`` is
        rewritten to ``postgresql+asyncpg://``); Prefect needs the ``pg_trgm`` extension

Credentials never go on a command line or into a log: S3 keys come from boto3's standard
chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, an instance role) in
the server's environment; a database password is best given as ``PGPASSWORD`` or in
``~/.pgpass`` (libpq, psycopg2 and asyncpg all read them). A password written into a URL
still works: MLflow then gets the URI through ``MLFLOW_BACKEND_STORE_URI`` instead of its
argument list (visible to ``ps``), Prefect through its environment, and every address this
module prints or logs has its ``user:password@`` replaced by ``***@``.

Usage (the CLI starts the stack before it imports anything from Prefect)::

    with Stack(run_dir) as stack:          # or start_stack(run_dir)
        stack.print_addresses()
        from flows.grid import grid_flow   # imports prefect: after the start
        runner = RayTaskRunner(address=stack.ray_address,
                               init_kwargs={"runtime_env": stack.ray_runtime_env()})
        grid_flow.with_options(task_runner=runner)(...)

Prefect reads its settings when it is imported. ``Stack.start()`` exports the addresses
into ``os.environ`` and, when ``prefect`` is already imported in this process, refreshes
Prefect's global settings context so the new ``PREFECT_API_URL`` is used from then on.
Ray workers never see this process's environment: pass ``ray_runtime_env()`` to
``ray.init`` / ``RayTaskRunner`` so every worker reports to the same Prefect and MLflow
servers (a worker without ``PREFECT_API_URL`` starts its own temporary Prefect server).

This module and ``skinadv.tracking`` are the only ones that touch mlflow, prefect or ray;
they are imported lazily, so ``import skinadv.stack`` starts and imports nothing heavy.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

logger = logging.getLogger(__name__)
Env = dict[str, str]

HOST = "127.0.0.1"
SERVICES = ("mlflow", "prefect", "ray")
ENV_VARS = {"mlflow": "MLFLOW_TRACKING_URI", "prefect": "PREFECT_API_URL", "ray": "RAY_ADDRESS"}
# Non-secret settings forwarded to Ray workers when set here. Credentials (AWS keys, API
# keys) are deliberately not forwarded: a runtime_env is shown in the Ray dashboard.
WORKER_ENV_VARS = (
    "PREFECT_API_URL",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_EXPERIMENT_NAME",
)
# Storage settings of the started servers: Stack argument -> environment variable.
STORAGE_ENV_VARS = {
    "mlflow_backend_uri": "SKINADV_MLFLOW_BACKEND_URI",
    "mlflow_artifacts": "SKINADV_MLFLOW_ARTIFACTS",
    "prefect_database_url": "SKINADV_PREFECT_DATABASE_URL",
}
PREFECT_DRIVERS = ("postgresql+asyncpg://", "sqlite+aiosqlite://")
DEFAULT_TIMEOUT_S = 240.0  # mlflow 52 s, prefect 86 s measured on 2 busy cores
# Server-side MLflow settings that must not leak from the caller's environment into a
# server started here (its storage is what the Stack was given).
MLFLOW_SERVER_ENV_VARS = (
    "MLFLOW_BACKEND_STORE_URI",
    "MLFLOW_DEFAULT_ARTIFACT_ROOT",
    "MLFLOW_ARTIFACTS_DESTINATION",
    "MLFLOW_REGISTRY_STORE_URI",
    "MLFLOW_ARTIFACTS_ONLY",
)
STOP_GRACE_S = 15.0
# Unix socket paths are limited to 107 bytes; Ray puts about 70 more under its temp dir.
RAY_TEMP_DIR_MAX_LEN = 32


class StackError(RuntimeError):
    """A service could not be found or started (the message says which and why)."""


@dataclass
class Service:
    """One service of the stack, started here or found through its environment variable.

    Attributes:
        name: ``mlflow``, ``prefect`` or ``ray``.
        address: what clients are given: tracking URI, Prefect API URL, Ray GCS address.
        ui_url: the browser address (MLflow UI, Prefect UI, Ray dashboard), None if unknown.
        started: True when this stack started the process (and so will stop it).
        startup_s: seconds from launch until the health check answered (None if found).
        log_path: where the process's output goes (started services only).
    """

    name: str
    address: str
    ui_url: str | None
    started: bool
    health_urls: tuple[str, ...] = ()
    log_path: Path | None = None
    startup_s: float | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    log_file: IO[bytes] | None = field(default=None, repr=False)
    launched_at: float = field(default=0.0, repr=False)
    ports: tuple[int, ...] = ()

    @property
    def alive(self) -> bool:
        return self.process is None or self.process.poll() is None


class Stack:
    """MLflow tracking server + Prefect server + Ray head, found or started; a context manager.

    Args:
        run_dir: folder for the state and logs of the services this stack starts.
        mlflow, prefect, ray: set False to leave a service out (nothing found or started).
        ray_num_cpus: CPUs the local Ray head offers (None: Ray counts them).
        console: rich console for the waiting line and addresses (default: stderr).
        timeout_s: how long to wait for each started service's health check, in seconds.
        check_existing: ping services given by environment variables before using them.
        mlflow_backend_uri: SQLAlchemy URI of a started MLflow server's backend store
            (default ``$SKINADV_MLFLOW_BACKEND_URI``, else ``sqlite:///RUN/mlflow.db``).
        mlflow_artifacts: where a started MLflow server keeps artifacts: a folder or an
            ``s3://bucket/prefix`` URI (default ``$SKINADV_MLFLOW_ARTIFACTS``, else
            ``RUN/mlartifacts``). Clients always upload through the server.
        prefect_database_url: SQLAlchemy URL of a started Prefect server's database
            (default ``$SKINADV_PREFECT_DATABASE_URL``, else ``RUN/prefect/prefect.db``).

    Raises:
        StackError: a storage setting is malformed (checked here, before anything starts).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        mlflow: bool = True,
        prefect: bool = True,
        ray: bool = True,
        ray_num_cpus: int | None = None,
        console: Console | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        check_existing: bool = True,
        mlflow_backend_uri: str | None = None,
        mlflow_artifacts: str | None = None,
        prefect_database_url: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.mlflow_backend_uri = _setting(mlflow_backend_uri, "mlflow_backend_uri")
        self.mlflow_artifacts = _setting(mlflow_artifacts, "mlflow_artifacts")
        self.prefect_database_url = _prefect_url(
            _setting(prefect_database_url, "prefect_database_url")
        )
        self.wanted = {"mlflow": mlflow, "prefect": prefect, "ray": ray}
        self.ray_num_cpus = ray_num_cpus
        self.timeout_s = timeout_s
        self.check_existing = check_existing
        self._console = console
        self.services: dict[str, Service] = {}
        self._ray_tmp: Path | None = None  # a short /tmp dir this stack made for Ray
        self._saved_env: dict[str, str | None] = {}
        self._old_sigterm: Any = None
        self._stopped = True

    # -- public API -------------------------------------------------------------------

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console

    @property
    def mlflow_tracking_uri(self) -> str | None:
        return self._address("mlflow")

    @property
    def prefect_api_url(self) -> str | None:
        return self._address("prefect")

    @property
    def ray_address(self) -> str | None:
        return self._address("ray")

    @property
    def startup_seconds(self) -> dict[str, float]:
        """Seconds each started service took to answer its health check."""
        return {n: s.startup_s for n, s in self.services.items() if s.startup_s is not None}

    def start(self) -> Stack:
        """Find or start every wanted service, wait until each is healthy, export addresses.

        Returns:
            self, for ``stack = Stack(run_dir).start()``.

        Raises:
            StackError: a service did not start (its log's last lines are in the message)
                or a service named by an environment variable does not answer.
        """
        if not self._stopped:
            return self
        self._stopped = False
        self.services = {}  # a stopped stack can be started again
        atexit.register(self.stop)
        self._install_sigterm_handler()
        try:
            self._find_existing()
            to_start = [n for n in SERVICES if self.wanted[n] and n not in self.services]
            if to_start:
                (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
                if "mlflow" in to_start:
                    self._check_artifact_store()
                self._plan(to_start)  # ports and addresses first: Ray workers inherit them
                for name in to_start:  # launch all, then poll: they start side by side
                    self._launch(self.services[name])
                self._wait_healthy([self.services[n] for n in to_start])
            self._export_env()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the services this stack started (never the ones it found) and restore env."""
        if self._stopped:
            return
        self._stopped = True
        started = [s for s in self.services.values() if s.started and s.process is not None]
        with _no_interrupts():  # a second Ctrl-C must not leave half-stopped services
            _stop_sessions([s.process for s in started], grace_s=STOP_GRACE_S)
        for s in self.services.values():
            if s.log_file is not None:
                s.log_file.close()
                s.log_file = None
        self._cleanup_ray_tmp()
        self._restore_env()
        self._restore_sigterm_handler()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if started:
            logger.info("stopped %s", ", ".join(s.name for s in started))

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ray_runtime_env(self) -> dict[str, Any]:
        """The ``runtime_env`` that points Ray workers at this stack's Prefect and MLflow.

        Returns:
            ``{"env_vars": {"PREFECT_API_URL": ..., "MLFLOW_TRACKING_URI": ..., ...}}`` with
            the non-secret variables that are known (credentials are never forwarded).
        """
        env = {k: os.environ[k] for k in WORKER_ENV_VARS if os.environ.get(k)}
        if self.prefect_api_url:
            env["PREFECT_API_URL"] = self.prefect_api_url
        if self.mlflow_tracking_uri:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_tracking_uri
        return {"env_vars": env}

    def addresses(self) -> dict[str, str | None]:
        """Browser addresses ``{"mlflow": UI, "prefect": UI, "ray": dashboard}``, no credentials."""
        return {n: _redact(s.ui_url) for n, s in self.services.items()}

    def storage(self) -> dict[str, str]:
        """Where each started MLflow / Prefect server keeps its state, credentials redacted.

        Returns:
            ``{"mlflow": "<backend store>, artifacts <destination>", "prefect": "<database>"}``
            for the servers this stack started (found ones keep their own storage).
        """
        out = {}
        for name, svc in self.services.items():
            if not svc.started:
                continue
            if name == "mlflow":
                out[name] = (f"{_redact(self._mlflow_backend())}, "
                             f"artifacts {_redact(self._mlflow_artifacts())}")
            elif name == "prefect":
                out[name] = str(_redact(self._prefect_database()))
        return out

    def print_addresses(self, console: Console | None = None) -> None:
        """Print a table of the services: UI address, who started it, start-up time, storage."""
        from rich.table import Table

        console = console or self.console
        titles = {"mlflow": "MLflow UI", "prefect": "Prefect UI", "ray": "Ray dashboard"}
        storage = self.storage()
        table = Table(title="services", title_justify="left")
        for col in ("service", "address", "source", "start-up", "storage"):
            table.add_column(col)
        for name, svc in self.services.items():
            source = "started here" if svc.started else f"from ${ENV_VARS[name]}"
            took = f"{svc.startup_s:.1f} s" if svc.startup_s is not None else "-"
            table.add_row(titles[name], _redact(svc.ui_url) or "unknown", source, took,
                          storage.get(name, "-"))
        console.print(table)

    def dead_services(self) -> list[str]:
        """Names of started services whose process has exited."""
        return [n for n, s in self.services.items() if s.started and not s.alive]

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines of a started service's log ('' when there is none)."""
        svc = self.services.get(name)
        if svc is None or svc.log_path is None:
            return ""
        return _tail(svc.log_path, lines)

    # -- finding ----------------------------------------------------------------------

    def _address(self, name: str) -> str | None:
        svc = self.services.get(name)
        return svc.address if svc is not None else None

    def _find_existing(self) -> None:
        for name in SERVICES:
            value = os.environ.get(ENV_VARS[name], "").strip()
            if not self.wanted[name] or not value:
                continue
            if name == "mlflow":
                ui = value if value.startswith(("http://", "https://")) else None
                health = (value.rstrip("/") + "/health",) if ui else ()
            elif name == "prefect":
                ui = os.environ.get("PREFECT_UI_URL") or _strip_suffix(value.rstrip("/"), "/api")
                health = (value.rstrip("/") + "/health",)
            else:
                ui = os.environ.get("RAY_DASHBOARD_URL") or None
                health = ()  # ray.init() fails clearly enough on a wrong address
            svc = Service(name, value, ui, started=False, health_urls=health)
            self.services[name] = svc
            if self.check_existing:
                for url in health:
                    if not _reachable(url, timeout_s=10.0):
                        raise StackError(
                            f"${ENV_VARS[name]} points at {_redact(value)}, which does not "
                            f"answer {_redact(url)}; start it or unset ${ENV_VARS[name]} to "
                            f"let skinadv start a local {name}"
                        )
            logger.info("using %s at %s (from $%s)", name, _redact(value), ENV_VARS[name])

    # -- starting ---------------------------------------------------------------------

    def _plan(self, names: list[str]) -> None:
        logs = self.run_dir / "logs"
        # one port each for MLflow and Prefect, seven for Ray (GCS, dashboard, client
        # server, agent HTTP + gRPC, metrics, runtime-env agent)
        needed = {"mlflow": 1, "prefect": 1, "ray": 7}
        ports = iter(_free_ports(sum(needed[n] for n in names)))
        if "mlflow" in names:
            port = next(ports)
            url = f"http://{HOST}:{port}"
            self.services["mlflow"] = Service(
                "mlflow",
                url,
                url,
                started=True,
                health_urls=(url + "/health",),
                log_path=logs / "mlflow.log",
                ports=(port,),
            )
        if "prefect" in names:
            port = next(ports)
            url = f"http://{HOST}:{port}"
            self.services["prefect"] = Service(
                "prefect",
                url + "/api",
                url,
                started=True,
                health_urls=(url + "/api/health",),
                log_path=logs / "prefect.log",
                ports=(port,),
            )
        if "ray" in names:
            ray_ports = tuple(next(ports) for _ in range(7))
            gcs, dash, client, agent_http, agent_grpc, metrics, rtenv = ray_ports
            dash_url = f"http://{HOST}:{dash}"
            self.services["ray"] = Service(
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
                ports=ray_ports,
            )

    def _launch(self, svc: Service) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()}
        # The started services talk to each other only through these two.
        for other in ("mlflow", "prefect"):
            if other in self.services:
                env[ENV_VARS[other]] = self.services[other].address
        if svc.name == "mlflow":
            cmd, env = self._mlflow_command(svc, env)
        elif svc.name == "prefect":
            cmd, env = self._prefect_command(svc, env)
        else:
            cmd, env = self._ray_command(svc, env)
        assert svc.log_path is not None
        log = svc.log_file = open(svc.log_path, "ab")  # noqa: SIM115 (closed in stop())
        shown = " ".join(_redact_args(cmd))  # no password in a log, ever
        log.write(f"\n$ {shown}\n".encode())
        log.flush()
        logger.info("starting %s: %s", svc.name, shown)
        svc.launched_at = time.monotonic()
        try:
            svc.process = subprocess.Popen(
                cmd,
                env=env,
                cwd=self.run_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # own session: Ctrl-C in the terminal reaches us, not them, and stop()
                # can signal every process the service spawned (uvicorn, Ray workers)
                start_new_session=True,
            )
        except OSError as exc:
            raise StackError(f"could not run {cmd[0]}: {exc}") from exc

    def _mlflow_backend(self) -> str:
        return self.mlflow_backend_uri or f"sqlite:///{self.run_dir / 'mlflow.db'}"

    def _mlflow_artifacts(self) -> str:
        return self.mlflow_artifacts or str(self.run_dir / "mlartifacts")

    def _prefect_database(self) -> str:
        return self.prefect_database_url or (
            f"sqlite+aiosqlite:///{self.run_dir / 'prefect' / 'prefect.db'}"
        )

    def _mlflow_command(self, svc: Service, env: Env) -> tuple[list[str], Env]:
        for key in MLFLOW_SERVER_ENV_VARS:
            env.pop(key, None)  # this server's storage is the one given here, nothing else
        env |= {
            "MLFLOW_DISABLE_TELEMETRY": "true",
            # the job runner (huey) is for GenAI judges; not needed, saves a process
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        s3_endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if not env.get("MLFLOW_S3_ENDPOINT_URL") and s3_endpoint:
            env["MLFLOW_S3_ENDPOINT_URL"] = s3_endpoint  # MLflow's own name for it
        cmd = [
            _script("mlflow"),
            "server",
            "--host",
            HOST,
            "--port",
            str(svc.ports[0]),
            "--workers",
            "1",  # 2 cores: one uvicorn worker is plenty and saves memory
        ]
        backend = self._mlflow_backend()
        if _has_password(backend):
            env["MLFLOW_BACKEND_STORE_URI"] = backend  # not in argv, where ps shows it
        else:
            cmd += ["--backend-store-uri", backend]
        cmd += [
            # runs get mlflow-artifacts:/ URIs; the server writes the files to the
            # destination (a folder or s3://), so Ray workers upload over HTTP and never
            # need the folder or S3 credentials
            "--serve-artifacts",
            "--artifacts-destination",
            self._mlflow_artifacts(),
        ]
        return cmd, env

    def _check_artifact_store(self) -> None:
        """Fail fast, with a clear message, when the S3 artifact bucket cannot be used."""
        dest = self._mlflow_artifacts()
        if not dest.startswith("s3://"):
            return
        bucket = dest[len("s3://") :].split("/", 1)[0]
        if not bucket:
            raise StackError(f"MLflow artifacts destination {dest!r}: expected s3://bucket/prefix")
        import boto3
        import botocore.config
        import botocore.exceptions

        endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
        where = f" at {_redact(endpoint)}" if endpoint else ""
        config = botocore.config.Config(connect_timeout=5, read_timeout=10,
                                        retries={"max_attempts": 2})
        try:
            boto3.client("s3", endpoint_url=endpoint, config=config).head_bucket(Bucket=bucket)
        except botocore.exceptions.NoCredentialsError:
            raise StackError(
                f"no AWS credentials for the MLflow artifacts destination {dest}: set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials"
            ) from None
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "?"))
            if code in ("403", "AccessDenied", "Forbidden"):
                # may still write objects (s3:PutObject without s3:ListBucket): go on
                logger.warning("cannot check bucket %s%s (access denied); going on", bucket, where)
                return
            what = "does not exist" if code in ("404", "NoSuchBucket") else f"error {code}"
            raise StackError(
                f"MLflow artifacts destination {dest}: bucket {bucket!r}{where} {what}"
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StackError(
                f"MLflow artifacts destination {dest}: S3{where} not usable "
                f"({type(exc).__name__})"
            ) from None

    def _prefect_command(self, svc: Service, env: Env) -> tuple[list[str], Env]:
        home = self.run_dir / "prefect"
        home.mkdir(parents=True, exist_ok=True)
        for key in [k for k in env if k.startswith("PREFECT_") and "DATABASE" in k]:
            # never a database from the environment: SQLite in RUN/prefect, or the URL
            # given here (whose pool, timeout and TLS settings may come from the env)
            if self.prefect_database_url is None or "CONNECTION_URL" in key:
                del env[key]
        env |= {
            "PREFECT_HOME": str(home),
            "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": self._prefect_database(),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_URL": svc.address,  # the UI calls the API here
        }
        cmd = [_script("prefect"), "server", "start", "--host", HOST, "--port", str(svc.ports[0])]
        return cmd, env

    def _ray_command(self, svc: Service, env: Env) -> tuple[list[str], Env]:
        gcs, dash, client, agent_http, agent_grpc, metrics, rtenv = svc.ports
        temp_dir = self._ray_temp_dir()
        env |= {
            "RAY_USAGE_STATS_ENABLED": "0",
            # on SIGTERM, tear down now instead of draining the node for 30 s
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        }
        cmd = [
            _script("ray"),
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
        if self.ray_num_cpus is not None:
            cmd += ["--num-cpus", str(self.ray_num_cpus)]
        return cmd, env

    def _ray_temp_dir(self) -> Path:
        wanted = self.run_dir / "ray"
        if len(str(wanted)) <= RAY_TEMP_DIR_MAX_LEN:
            wanted.mkdir(parents=True, exist_ok=True)
            return wanted
        # run folder too deep for Ray's socket paths: a short folder in /tmp, linked from it
        self._ray_tmp = Path(tempfile.mkdtemp(prefix="skinadv-ray-", dir="/tmp"))
        with contextlib.suppress(OSError):
            if wanted.is_symlink():
                wanted.unlink()
            if not wanted.exists():
                wanted.symlink_to(self._ray_tmp, target_is_directory=True)
        return self._ray_tmp

    def _cleanup_ray_tmp(self) -> None:
        if self._ray_tmp is None:
            return
        # keep Ray's session logs in the run folder, drop the sockets and object spill
        keep = self.run_dir / "logs" / "ray"
        for logs in self._ray_tmp.glob("session_2*/logs"):
            with contextlib.suppress(OSError, shutil.Error):
                shutil.copytree(logs, keep / logs.parent.name, dirs_exist_ok=True)
        shutil.rmtree(self._ray_tmp, ignore_errors=True)
        link = self.run_dir / "ray"
        with contextlib.suppress(OSError):
            if link.is_symlink():
                link.unlink()
        self._ray_tmp = None

    def _wait_healthy(self, services: list[Service]) -> None:
        pending = {s.name: s for s in services}
        status = None
        try:
            if self.console.is_terminal:
                status = self.console.status("starting services")
                status.start()
            last_note = 0.0
            while pending:
                for name, svc in list(pending.items()):
                    elapsed = time.monotonic() - svc.launched_at
                    if svc.process is not None and svc.process.poll() is not None:
                        raise StackError(
                            f"{name} exited with code {svc.process.returncode} while starting "
                            f"(log: {svc.log_path}); its last lines:\n{_tail(svc.log_path)}"
                        )
                    if all(_healthy(u) for u in svc.health_urls):
                        svc.startup_s = round(elapsed, 1)
                        del pending[name]
                        self.console.print(f"[green]{name}[/] ready after {elapsed:.0f} s")
                    elif elapsed > self.timeout_s:
                        raise StackError(
                            f"{name} did not answer {', '.join(svc.health_urls)} within "
                            f"{self.timeout_s:.0f} s (log: {svc.log_path}); its last lines:\n"
                            f"{_tail(svc.log_path)}"
                        )
                if not pending:
                    break
                waiting = ", ".join(
                    f"{n} ({time.monotonic() - s.launched_at:.0f} s)" for n, s in pending.items()
                )
                if status is not None:
                    status.update(f"waiting for {waiting} to answer its health check")
                elif time.monotonic() - last_note > 15:  # not a terminal: a line now and then
                    self.console.print(f"waiting for {waiting}")
                    last_note = time.monotonic()
                time.sleep(0.5)
        finally:
            if status is not None:
                status.stop()

    # -- environment ------------------------------------------------------------------

    def _export_env(self) -> None:
        for name, svc in self.services.items():
            key = ENV_VARS[name]
            if os.environ.get(key) != svc.address:
                self._saved_env.setdefault(key, os.environ.get(key))
                os.environ[key] = svc.address
        _refresh_prefect_settings()

    def _restore_env(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._saved_env:
            _refresh_prefect_settings()
        self._saved_env.clear()

    def _install_sigterm_handler(self) -> None:
        # SIGTERM would end Python without unwinding; make it unwind like Ctrl-C so
        # __exit__ / finally blocks stop the services
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous is not signal.SIG_DFL:
            return  # someone else handles SIGTERM; leave it to them

        def _on_sigterm(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, _on_sigterm)
        self._old_sigterm = previous

    def _restore_sigterm_handler(self) -> None:
        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_sigterm)
        self._old_sigterm = None


def start_stack(
    run_dir: str | Path,
    *,
    mlflow: bool = True,
    prefect: bool = True,
    ray: bool = True,
    ray_num_cpus: int | None = None,
    console: Console | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    mlflow_backend_uri: str | None = None,
    mlflow_artifacts: str | None = None,
    prefect_database_url: str | None = None,
) -> Stack:
    """Find or start the services and return the running ``Stack`` (call ``.stop()``).

    Args:
        run_dir: folder for the state and logs of services started here.
        mlflow, prefect, ray: which services the caller needs.
        ray_num_cpus: CPUs for a local Ray head (None: all).
        console: rich console for progress and addresses.
        timeout_s: seconds to wait for each started service to become healthy.
        mlflow_backend_uri, mlflow_artifacts, prefect_database_url: storage of the started
            servers (see ``Stack``; default from the ``SKINADV_*`` environment variables).

    Returns:
        The started stack; also usable as a context manager.
    """
    return Stack(
        run_dir,
        mlflow=mlflow,
        prefect=prefect,
        ray=ray,
        ray_num_cpus=ray_num_cpus,
        console=console,
        timeout_s=timeout_s,
        mlflow_backend_uri=mlflow_backend_uri,
        mlflow_artifacts=mlflow_artifacts,
        prefect_database_url=prefect_database_url,
    ).start()


# -- helpers ----------------------------------------------------------------------------


def _refresh_prefect_settings() -> None:
    """Make an already imported Prefect read PREFECT_API_URL & co. from os.environ again."""
    if "prefect.context" not in sys.modules:
        return  # not imported yet: it will read the environment when it is
    from prefect import context

    refresh = getattr(context, "refresh_global_settings_context", None)
    if refresh is None:  # pragma: no cover - older Prefect
        logger.warning(
            "prefect was imported before the stack started and cannot be refreshed; "
            "start the stack before importing prefect"
        )
        return
    refresh()


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM for the duration (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in saved:
        signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _script(name: str) -> str:
    """The console script ``name`` of this interpreter's environment."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name} is not installed in this environment (pip install skinadv)")
    return found


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# our own services are on loopback: never ask an HTTP proxy from the environment for them
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with _DIRECT.open(url, timeout=timeout_s) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _reachable(url: str, timeout_s: float) -> bool:
    """True when anything answers over HTTP (an auth error still proves it is up)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):  # noqa: S310
            return True
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid``: a service and everything it spawned.

    Zombies are left out (they are dead; an orphan's may wait long for init to reap it).
    Reads /proc; elsewhere only the process group ``sid`` can be found (and is).
    """
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - not Linux
        try:
            os.killpg(sid, 0)
            return [sid]
        except OSError:
            return []
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(processes: list[subprocess.Popen], until: float) -> bool:
    """Wait until no process is left in the processes' sessions; False on timeout."""
    while True:
        for p in processes:
            p.poll()  # reap our direct children so they do not linger as zombies
        if not any(_session_pids(p.pid) for p in processes):
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(0.2)


def _stop_sessions(processes: list[subprocess.Popen], grace_s: float) -> None:
    """Stop each service and everything it spawned: SIGTERM, wait, then SIGKILL.

    Each service was started with ``start_new_session=True``, so its session id is its
    pid and holds what it spawned (uvicorn, Ray's GCS, raylet and workers), and nothing
    else on the machine is touched: unlike ``ray stop``, which ends every Ray process of
    the user, another stack's or another project's included.

    The leader is asked first (``ray start --block`` and ``mlflow server`` tear their own
    children down in order), then whatever is left gets SIGTERM, then SIGKILL.
    """
    if not processes:
        return
    start = time.monotonic()
    _signal([p.pid for p in processes if p.poll() is None], signal.SIGTERM)
    if _wait_gone(processes, start + grace_s / 2):
        return
    for p in processes:
        _signal(_session_pids(p.pid), signal.SIGTERM)
    if _wait_gone(processes, start + grace_s):
        return
    for p in processes:
        left = _session_pids(p.pid)
        if left:
            logger.warning("killing %d process(es) that outlived SIGTERM", len(left))
            _signal(left, signal.SIGKILL)
    _wait_gone(processes, time.monotonic() + 5)


def _tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not path.exists():
        return "(no log)"
    with open(path, errors="replace") as f:
        return "".join(deque(f, maxlen=lines)).rstrip() or "(empty log)"


def _strip_suffix(text: str, suffix: str) -> str:
    return text[: -len(suffix)] if text.endswith(suffix) else text


_SECRET_QUERY_KEYS = ("password", "sslpassword", "passfile", "secret", "token")


def _redact(url: str | None) -> str | None:
    """The URL without user:password or a password query parameter (safe to print)."""
    if not url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None and parts.username is None:
            netloc = parts.netloc
        else:
            netloc = parts.hostname or ""
            if parts.port:
                netloc += f":{parts.port}"
            netloc = f"***@{netloc}"
    except ValueError:  # a malformed port: hide everything before the host
        return url.split("://", 1)[0] + "://***" if "://" in url else "***"
    query = parts.query
    if query and any(k in query.lower() for k in _SECRET_QUERY_KEYS):
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{k}=***" if any(s in k.lower() for s in _SECRET_QUERY_KEYS) else f"{k}={v}"
            for k, v in pairs
        )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _redact_args(args: list[str]) -> list[str]:
    """A command line with every URL argument redacted (for logs)."""
    return [str(_redact(a)) if "://" in a else a for a in args]


def _has_password(uri: str) -> bool:
    """True when a URI carries a password (in its netloc or as a query parameter)."""
    try:
        parts = urllib.parse.urlsplit(uri)
        if parts.password is not None:
            return True
    except ValueError:
        return True  # unparsable: treat as secret
    keys = [k.lower() for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    return any(s in k for k in keys for s in _SECRET_QUERY_KEYS)


def _setting(value: str | None, name: str) -> str | None:
    """A storage setting: the argument, else its SKINADV_* environment variable, else None."""
    env_var = STORAGE_ENV_VARS[name]
    if value is None:
        value = os.environ.get(env_var)
    value = (value or "").strip() or None
    if value is None:
        return None
    if name == "mlflow_artifacts":
        if "://" not in value:  # a local folder: absolute, the server runs in RUN/
            return str(Path(value).expanduser().resolve())
        return value
    if "://" not in value:
        shown = "***@" + value.rsplit("@", 1)[1] if "@" in value else value  # may hold a password
        raise StackError(
            f"{name} (${env_var}) must be a database URL such as "
            f"postgresql://user@host:5432/db, got {shown!r}"
        )
    return value


def _prefect_url(url: str | None) -> str | None:
    """Prefect's database URL with its async driver (``postgresql://`` -> ``+asyncpg``)."""
    if url is None:
        return None
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            url = "postgresql+asyncpg://" + url[len(plain) :]
    if not url.startswith(PREFECT_DRIVERS):
        raise StackError(
            f"prefect_database_url ($SKINADV_PREFECT_DATABASE_URL) must start with "
            f"{' or '.join(PREFECT_DRIVERS)}, got {_redact(url)!r}"
        )
    return url
