"""What every part of the stack shares: names, environment variables, storage settings,
``Service`` and ``StackError``."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

Env = dict[str, str]

HOST = "127.0.0.1"
SERVICES = ("mlflow", "prefect", "ray")
ENV_VARS = {"mlflow": "MLFLOW_TRACKING_URI", "prefect": "PREFECT_API_URL", "ray": "RAY_ADDRESS"}
MLFLOW_RETRY_ENV_VARS = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)
# Non-secret settings forwarded to Ray workers when set here: the one list (the stack's
# runtime_env and the flows' task runner both use it). Credentials (AWS keys, API keys)
# are deliberately not forwarded: a runtime_env is shown in the Ray dashboard.
WORKER_ENV_VARS = (
    "PREFECT_API_URL",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "MLFLOW_EXPERIMENT_NAME",
    "SKINADV_HAM10000",
    "SKINADV_CACHE_DIR",
    "SKINADV_LEASE_S",  # the model lease (skinadv.tracking_lease): the workers keep it
    # MLflow's client retries (default: 7 retries, backoff factor 2, about 4 minutes):
    # a tracking server that restarts meanwhile loses nothing
    *MLFLOW_RETRY_ENV_VARS,
)
# Storage settings of the started servers: Stack argument -> environment variable.
STORAGE_ENV_VARS = {
    "mlflow_backend_uri": "SKINADV_MLFLOW_BACKEND_URI",
    "mlflow_artifacts": "SKINADV_MLFLOW_ARTIFACTS",
    "prefect_database_url": "SKINADV_PREFECT_DATABASE_URL",
}


class StackError(RuntimeError):
    """A service could not be found or started (the message says which and why)."""


def write_private(path: Path, text: str) -> Path:
    """Write a secret (a token, a password file) readable by its owner only: created 0600,
    never world-readable for a moment, and set back to 0600 when it was there already."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


def worker_env() -> Env:
    """The ``WORKER_ENV_VARS`` that are set (non-empty) in this process's environment.

    Returns:
        ``{name: value}`` to pass to Ray workers as ``runtime_env={"env_vars": ...}``;
        never a credential.
    """
    return {k: os.environ[k] for k in WORKER_ENV_VARS if os.environ.get(k)}


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


def setting(value: str | None, name: str) -> str | None:
    """A storage setting: the argument, else its SKINADV_* environment variable, else None.

    Args:
        value: the ``Stack`` argument (None: read the environment variable).
        name: a key of ``STORAGE_ENV_VARS``.

    Returns:
        The setting stripped (a local artifacts folder made absolute), or None if unset.

    Raises:
        StackError: a database setting that is not a URL (a password in it is hidden).
    """
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
