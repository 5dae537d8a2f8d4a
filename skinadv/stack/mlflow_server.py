"""The MLflow tracking server: found through ``MLFLOW_TRACKING_URI``, or started here.

A started server keeps its runs in a backend store (SQLite in the run folder, or a
database) and proxies every artifact (``--serve-artifacts``) to a folder or ``s3://``, so
only the server needs the folder or S3 credentials; Ray workers upload over HTTP.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from skinadv.stack.common import HOST, Env, Service, StackError, write_private
from skinadv.stack.process import script
from skinadv.stack.redact import has_password, redact

logger = logging.getLogger(__name__)

PORTS = 1
# Server-side MLflow settings that must not leak from the caller's environment into a
# server started here (its storage is what the Stack was given).
MLFLOW_SERVER_ENV_VARS = (
    "MLFLOW_BACKEND_STORE_URI",
    "MLFLOW_DEFAULT_ARTIFACT_ROOT",
    "MLFLOW_ARTIFACTS_DESTINATION",
    "MLFLOW_REGISTRY_STORE_URI",
    "MLFLOW_ARTIFACTS_ONLY",
)


def found(address: str) -> Service:
    """The server at ``address`` ($MLFLOW_TRACKING_URI); only an HTTP one has a UI and health."""
    ui = address if address.startswith(("http://", "https://")) else None
    health = (address.rstrip("/") + "/health",) if ui else ()
    return Service("mlflow", address, ui, started=False, health_urls=health)


def planned(ports: tuple[int, ...], logs: Path) -> Service:
    """The server this stack will start on ``ports[0]``, its output in ``logs/mlflow.log``."""
    url = f"http://{HOST}:{ports[0]}"
    return Service(
        "mlflow",
        url,
        url,
        started=True,
        health_urls=(url + "/health",),
        log_path=logs / "mlflow.log",
        ports=ports,
    )


def backend(run_dir: Path, uri: str | None) -> str:
    """The backend store URI: ``uri``, else SQLite at ``RUN/mlflow.db``."""
    return uri or f"sqlite:///{run_dir / 'mlflow.db'}"


def artifacts(run_dir: Path, destination: str | None) -> str:
    """The artifacts destination: ``destination``, else the folder ``RUN/mlartifacts``."""
    return destination or str(run_dir / "mlartifacts")


#: what a client needs in its environment to reach a server started with basic auth
AUTH_ENV_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
AUTH_USER = "skinadv"


def auth_setup(run_dir: Path) -> tuple[Env, Env]:
    """MLflow's basic-auth app for a server about to start (``--app-name basic-auth``).

    The admin user ``skinadv`` gets a random password, kept with the auth settings in
    ``RUN/mlflow-auth.ini`` (mode 0600; reused by later starts, since MLflow keeps its users
    in ``RUN/mlflow-auth.db``). Returns ``(server env, client env)``: the server's reads the
    settings file; the client's is ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``.
    """
    import configparser
    import secrets

    ini = run_dir / "mlflow-auth.ini"
    config = configparser.ConfigParser(interpolation=None)
    if ini.is_file():
        config.read(ini)
    if not config.has_option("mlflow", "admin_password"):
        config["mlflow"] = {
            "default_permission": "READ",
            "database_uri": f"sqlite:///{run_dir / 'mlflow-auth.db'}",
            "admin_username": AUTH_USER,
            "admin_password": secrets.token_urlsafe(24),
            "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
            "secret_key": secrets.token_hex(32),
        }
        run_dir.mkdir(parents=True, exist_ok=True)
        text = io.StringIO()
        config.write(text)
        write_private(ini, text.getvalue())
    os.chmod(ini, 0o600)  # a file from an earlier start, too
    m = config["mlflow"]
    server = {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": m.get("secret_key", ""),
    }
    client = {
        "MLFLOW_TRACKING_USERNAME": m["admin_username"],
        "MLFLOW_TRACKING_PASSWORD": m["admin_password"],
    }
    return server, client


def command(
    svc: Service, env: Env, *, backend_uri: str, destination: str, auth: Env | None = None
) -> tuple[list[str], Env]:
    """``mlflow server`` for ``svc`` and its environment (``env`` is updated and returned).

    A backend URI with a password goes through ``MLFLOW_BACKEND_STORE_URI``, never argv
    (which ``ps`` shows). ``auth``: the server env of ``auth_setup``, to start MLflow's
    basic-auth app (every request needs a user and password).
    """
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
        script("mlflow"),
        "server",
        "--host",
        HOST,
        "--port",
        str(svc.ports[0]),
        "--workers",
        "1",  # 2 cores: one uvicorn worker is plenty and saves memory
    ]
    if has_password(backend_uri):
        env["MLFLOW_BACKEND_STORE_URI"] = backend_uri  # not in argv, where ps shows it
    else:
        cmd += ["--backend-store-uri", backend_uri]
    cmd += [
        # runs get mlflow-artifacts:/ URIs; the server writes the files to the
        # destination (a folder or s3://), so Ray workers upload over HTTP and never
        # need the folder or S3 credentials
        "--serve-artifacts",
        "--artifacts-destination",
        destination,
    ]
    if auth:
        env |= auth
        cmd += ["--app-name", "basic-auth"]
    return cmd, env


def check_artifact_store(dest: str) -> None:
    """Fail fast, with a clear message, when the S3 artifact bucket cannot be used.

    Args:
        dest: the artifacts destination; anything but ``s3://...`` is not checked.

    Raises:
        StackError: no bucket in the URI, no credentials, no such bucket, or S3 unusable.
            Access denied is only a warning (the server may still write objects).
    """
    if not dest.startswith("s3://"):
        return
    bucket = dest[len("s3://") :].split("/", 1)[0]
    if not bucket:
        raise StackError(f"MLflow artifacts destination {dest!r}: expected s3://bucket/prefix")
    import boto3
    import botocore.config
    import botocore.exceptions

    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    where = f" at {redact(endpoint)}" if endpoint else ""
    config = botocore.config.Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2})
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
            f"MLflow artifacts destination {dest}: S3{where} not usable ({type(exc).__name__})"
        ) from None
