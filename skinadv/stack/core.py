"""``Stack``: the MLflow, Prefect and Ray services of a run, found or started, then stopped."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from skinadv.stack import mlflow_server, prefect_server, process, ray_head
from skinadv.stack.common import (
    ENV_VARS,
    SERVICES,
    Env,
    Service,
    StackError,
    setting,
    worker_env,
)
from skinadv.stack.redact import redact

if TYPE_CHECKING:
    from rich.console import Console

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 240.0  # mlflow 52 s, prefect 86 s measured on 2 busy cores
STOP_GRACE_S = 15.0
# one module per service, in start order; each has PORTS, found(), planned(), command()
_MODULES = {"mlflow": mlflow_server, "prefect": prefect_server, "ray": ray_head}


#: The ports this run folder's started services had, so that a restart can take them again.
PORTS_FILE = "ports.json"


def _read_ports(path: Path) -> dict[str, tuple[int, ...]]:
    """``ports.json`` as ``{service: ports}``; empty when missing or not what it should be."""
    import json

    try:
        raw = json.loads(path.read_text())
        return {
            str(k): tuple(int(p) for p in v)
            for k, v in raw.items()
            if k in _MODULES and isinstance(v, list) and all(isinstance(p, int) for p in v)
        }
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _write_ports(path: Path, ports: Mapping[str, tuple[int, ...]]) -> None:
    import json

    from skinadv.data.io import atomic_write_bytes

    with contextlib.suppress(OSError):  # a convenience: never fail a start over it
        atomic_write_bytes(path, json.dumps({k: list(v) for k, v in ports.items()}).encode())


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
        mlflow_auth: start MLflow with its basic-auth app, for shared use (default
            ``$SKINADV_MLFLOW_AUTH`` is 1/true/yes); see ``mlflow_server.auth_setup``. This
            process and a Ray head started here get the user and password.

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
        mlflow_auth: bool | None = None,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.mlflow_backend_uri = setting(mlflow_backend_uri, "mlflow_backend_uri")
        self.mlflow_artifacts = setting(mlflow_artifacts, "mlflow_artifacts")
        self.prefect_database_url = prefect_server.database_url(
            setting(prefect_database_url, "prefect_database_url")
        )
        self.wanted = {"mlflow": mlflow, "prefect": prefect, "ray": ray}
        if mlflow_auth is None:
            mlflow_auth = os.environ.get("SKINADV_MLFLOW_AUTH", "").lower() in ("1", "true", "yes")
        self.mlflow_auth = mlflow_auth
        self.ray_num_cpus = ray_num_cpus
        self.timeout_s = timeout_s
        self.check_existing = check_existing
        self._console = console
        self.services: dict[str, Service] = {}
        self._ray_tmp: Path | None = None  # a short /tmp dir this stack made for Ray
        self._saved_env: dict[str, str | None] = {}
        self._ray_auth: dict[str, str] = {}  # what ray.init needs to reach a head started here
        self._mlflow_auth: dict[str, str] = {}  # MLflow user and password, basic auth on
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
    def ray_auth_env(self) -> dict[str, str]:
        """``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN_PATH`` for a head started here (empty for a
        found one): what another process needs besides ``RAY_ADDRESS`` to reach it."""
        return dict(self._ray_auth)

    @property
    def startup_seconds(self) -> dict[str, float]:
        """Seconds each started service took to answer its health check."""
        return {n: s.startup_s for n, s in self.services.items() if s.startup_s is not None}

    def start(self) -> Stack:
        """Find or start every wanted service, wait until each is healthy, export addresses.

        Returns:
            self, for ``stack = Stack(run_dir).start()``.

        Raises:
            StackError: a service did not start (one line: why, and where its log is)
                or a service named by an environment variable does not answer.
        """
        if not self._stopped:
            return self
        self._stopped = False
        self.services = {}  # a stopped stack can be started again
        atexit.register(self.stop)
        self._old_sigterm = process.unwind_on_sigterm()
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
                process.wait_healthy(
                    [self.services[n] for n in to_start],
                    console=self.console,
                    timeout_s=self.timeout_s,
                )
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
        with process.no_interrupts():  # a second Ctrl-C must not leave half-stopped services
            process.stop_sessions([s.process for s in started], grace_s=STOP_GRACE_S)
        for s in self.services.values():
            if s.log_file is not None:
                s.log_file.close()
                s.log_file = None
        if self._ray_tmp is not None:
            ray_head.remove_temp_dir(self.run_dir, self._ray_tmp)
            self._ray_tmp = None
        self._ray_auth = {}
        self._mlflow_auth = {}
        self._restore_env()
        process.restore_sigterm(self._old_sigterm)
        self._old_sigterm = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if started:
            logger.info("stopped %s", ", ".join(s.name for s in started))

    def stop_service(self, name: str) -> None:
        """Stop one service this stack started, and everything it spawned, now (``stop``
        then leaves it); a found service or one not started is left alone."""
        svc = self.services.get(name)
        if svc is None or not svc.started or svc.process is None:
            return
        with process.no_interrupts():
            process.stop_sessions([svc.process], grace_s=STOP_GRACE_S)

    @property
    def owns_sigterm(self) -> bool:
        """Whether this started stack made SIGTERM unwind (``process.unwind_on_sigterm``):
        False when someone else handled SIGTERM already, or off the main thread."""
        return not self._stopped and self._old_sigterm is not None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ray_runtime_env(self) -> dict[str, Any]:
        """The ``runtime_env`` that points Ray workers at this stack's Prefect and MLflow.

        Returns:
            ``{"env_vars": {"PREFECT_API_URL": ..., "MLFLOW_TRACKING_URI": ..., ...}}``:
            ``worker_env()`` with this stack's addresses (credentials are never forwarded).
        """
        env = worker_env()
        if self.prefect_api_url:
            env["PREFECT_API_URL"] = self.prefect_api_url
        if self.mlflow_tracking_uri:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_tracking_uri
        return {"env_vars": env}

    def addresses(self) -> dict[str, str | None]:
        """Browser addresses ``{"mlflow": UI, "prefect": UI, "ray": dashboard}``, no credentials."""
        return {n: redact(s.ui_url) for n, s in self.services.items()}

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
                out[name] = (
                    f"{redact(self._mlflow_backend())}, "
                    f"artifacts {redact(self._mlflow_artifacts())}"
                )
            elif name == "prefect":
                out[name] = str(redact(self._prefect_database()))
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
            table.add_row(
                titles[name], redact(svc.ui_url) or "unknown", source, took, storage.get(name, "-")
            )
        console.print(table)

    def dead_services(self) -> list[str]:
        """Names of started services whose process has exited."""
        return [n for n, s in self.services.items() if s.started and not s.alive]

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines of a started service's log ('' when there is none)."""
        svc = self.services.get(name)
        if svc is None or svc.log_path is None:
            return ""
        return process.tail(svc.log_path, lines)

    # -- finding ----------------------------------------------------------------------

    def _address(self, name: str) -> str | None:
        svc = self.services.get(name)
        return svc.address if svc is not None else None

    def _find_existing(self) -> None:
        for name in SERVICES:
            value = os.environ.get(ENV_VARS[name], "").strip()
            if not self.wanted[name] or not value:
                continue
            svc = self.services[name] = _MODULES[name].found(value)
            if self.check_existing:
                for url in svc.health_urls:
                    if not process.reachable(url, timeout_s=10.0):
                        raise StackError(
                            f"${ENV_VARS[name]} points at {redact(value)}, which does not "
                            f"answer {redact(url)}; start it or unset ${ENV_VARS[name]} to "
                            f"let skinadv start a local {name}"
                        )
            logger.info("using %s at %s (from $%s)", name, redact(value), ENV_VARS[name])

    # -- starting ---------------------------------------------------------------------

    def _plan(self, names: list[str]) -> None:
        """Ports for the services to start: the ones this run folder's services had last
        time (``ports.json``) where they are all still free, so that links to the MLflow
        and Prefect UIs (in the Prefect artifact, the console, a bookmark) work again after
        ``skinadv up --run-dir`` restarts them; fresh free ports otherwise."""
        logs = self.run_dir / "logs"
        names = [n for n in SERVICES if n in names]  # ports handed out in a fixed order
        remembered = _read_ports(self.run_dir / PORTS_FILE)
        kept: dict[str, tuple[int, ...]] = {}
        for name in names:
            old = remembered.get(name, ())
            taken = {p for ports in kept.values() for p in ports}
            if len(old) == _MODULES[name].PORTS and not taken & set(old):
                if all(process.port_free(p) for p in old):
                    kept[name] = old
        need = sum(_MODULES[n].PORTS for n in names if n not in kept)
        reserved = {p for ports in kept.values() for p in ports}
        fresh = iter([p for p in process.free_ports(need + len(reserved)) if p not in reserved])
        chosen = {}
        for name in names:
            own = kept.get(name) or tuple(next(fresh) for _ in range(_MODULES[name].PORTS))
            chosen[name] = own
            self.services[name] = _MODULES[name].planned(own, logs)
        _write_ports(self.run_dir / PORTS_FILE, {**remembered, **chosen})

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
            env |= self._mlflow_auth  # its workers log to MLflow (the raylet's env, not
            cmd, env = self._ray_command(svc, env)  # a runtime_env the dashboard shows)
        process.launch(svc, cmd, env, cwd=self.run_dir)

    def _mlflow_backend(self) -> str:
        return mlflow_server.backend(self.run_dir, self.mlflow_backend_uri)

    def _mlflow_artifacts(self) -> str:
        return mlflow_server.artifacts(self.run_dir, self.mlflow_artifacts)

    def _prefect_database(self) -> str:
        return prefect_server.database(self.run_dir, self.prefect_database_url)

    def _check_artifact_store(self) -> None:
        mlflow_server.check_artifact_store(self._mlflow_artifacts())

    def _mlflow_command(self, svc: Service, env: Env) -> tuple[list[str], Env]:
        server_auth = None
        if self.mlflow_auth:
            server_auth, self._mlflow_auth = mlflow_server.auth_setup(self.run_dir)
        return mlflow_server.command(
            svc,
            env,
            backend_uri=self._mlflow_backend(),
            destination=self._mlflow_artifacts(),
            auth=server_auth,
        )

    def _prefect_command(self, svc: Service, env: Env) -> tuple[list[str], Env]:
        return prefect_server.command(
            svc,
            env,
            home=self.run_dir / "prefect",
            database_url=self._prefect_database(),
            given=self.prefect_database_url is not None,
        )

    def _ray_command(self, svc: Service, env: Env) -> tuple[list[str], Env]:
        temp_dir, self._ray_tmp = ray_head.make_temp_dir(self.run_dir)
        # the grid's tasks keep their files in their node's own folder (tasks/store.py)
        env.setdefault("SKINADV_NODE_DIR", str(self.run_dir / "node"))
        cmd, env = ray_head.command(svc, env, temp_dir=temp_dir, num_cpus=self.ray_num_cpus)
        self._ray_auth = {k: env[k] for k in ray_head.AUTH_ENV_VARS}
        return cmd, env

    # -- environment ------------------------------------------------------------------

    def _export_env(self) -> None:
        exported = {ENV_VARS[name]: svc.address for name, svc in self.services.items()}
        for key, value in {**exported, **self._ray_auth, **self._mlflow_auth}.items():
            if os.environ.get(key) != value:
                self._saved_env.setdefault(key, os.environ.get(key))
                os.environ[key] = value
        prefect_server.refresh_settings()
        ray_head.forget_cached_token()

    def _restore_env(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._saved_env:
            prefect_server.refresh_settings()
        self._saved_env.clear()
