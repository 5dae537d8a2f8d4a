"""Real backing services for the end-to-end tests: PostgreSQL and an S3 endpoint (moto).

``postgres_server``: Debian's PostgreSQL (``/usr/lib/postgresql/<version>/bin``; the
``postgresql`` apt package) in a temporary folder, on 127.0.0.1 and a free port, trust
authentication, with the databases ``mlflow`` and ``prefect``. PostgreSQL refuses to run as
root: under root the server runs as the ``postgres`` system user (``runuser``).

``moto_server``: ``moto_server`` (``moto[server]``, the test extra) on 127.0.0.1 and a
free port with one bucket, for the session. ``moto_s3``: the same server plus, for the
requesting module, the variables boto3 and MLflow read: dummy credentials, region,
``AWS_ENDPOINT_URL`` and ``MLFLOW_S3_ENDPOINT_URL`` (restored when the module ends: other
modules compare environments exactly, e.g. ``Stack.ray_runtime_env()``).

Both stop what they started at the end of the session, by pid or data folder only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST = "127.0.0.1"
PG_GLOB = "/usr/lib/postgresql/*/bin/initdb"
PG_DATABASES = ("mlflow", "prefect")
PG_USER = "postgres"  # the superuser initdb creates (Prefect needs CREATE EXTENSION pg_trgm)
MOTO_BUCKET = "skinadv-e2e"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class PostgresServer:
    """A running PostgreSQL cluster: ``url("mlflow")`` -> ``postgresql://postgres@host:port/mlflow``."""

    host: str
    port: int
    user: str
    bin_dir: Path
    data_dir: Path
    log_path: Path
    version: str

    def url(self, database: str, driver: str = "postgresql", password: str | None = None) -> str:
        auth = f"{self.user}:{password}" if password else self.user
        return f"{driver}://{auth}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, dbname=database, connect_timeout=10
        )


def find_postgres_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb and pg_ctl."""
    found = [Path(p).parent for p in glob.glob(PG_GLOB)]
    found = [d for d in found if (d / "pg_ctl").is_file() and (d / "postgres").is_file()]
    if not found:
        pytest.fail(
            f"PostgreSQL server binaries not found ({PG_GLOB}): install Debian's server, "
            "e.g. `apt-get install -y postgresql` (initdb, pg_ctl, postgres)",
            pytrace=False,
        )

    def version(d: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", d.parent.name)) or (0,)

    return max(found, key=version)


def _as_postgres_user() -> list[str]:
    """Prefix that runs a command as the ``postgres`` system user when we are root."""
    if os.geteuid() != 0:
        return []
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(
            "running as root and there is no `postgres` system user to run PostgreSQL "
            "as (Debian's postgresql package creates it)",
            pytrace=False,
        )
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--"]
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


def _run(cmd: list[str], what: str, log_path: Path | None = None, timeout: float = 120) -> None:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
    )
    if proc.returncode != 0:
        extra = f"\nserver log:\n{_tail(log_path)}" if log_path else ""
        pytest.fail(
            f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}{extra}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL on 127.0.0.1 with databases ``mlflow`` and ``prefect``."""
    bin_dir = find_postgres_bin()
    prefix = _as_postgres_user()
    # not under pytest's tmp dir: that is 0700 root, and the postgres user must get in.
    # Short, for the unix socket path (107 bytes at most).
    root = Path(tempfile.mkdtemp(prefix="skinadv-pg-", dir="/tmp"))
    data_dir, log_path = root / "data", root / "postgres.log"
    if prefix:
        shutil.chown(root, user="postgres", group="postgres")
    started = False
    try:
        _run(
            [
                *prefix,
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                PG_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            "initdb",
        )
        for attempt in range(3):  # a free port may be taken between the check and the bind
            port = free_port()
            opts = (
                f"-c listen_addresses={HOST} -p {port} -k {root} "
                "-c fsync=off -c full_page_writes=off -c synchronous_commit=off "
                "-c max_connections=200"
            )
            proc = subprocess.run(
                [
                    *prefix,
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data_dir),
                    "-l",
                    str(log_path),
                    "-o",
                    opts,
                    "-w",
                    "-t",
                    "120",
                    "start",
                ],
                capture_output=True,
                text=True,
                timeout=180,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            if proc.returncode == 0:
                started = True
                break
            if (data_dir / "postmaster.pid").exists():  # up but slow: not a port clash
                pytest.fail(
                    f"pg_ctl start failed: {proc.stderr[-2000:]}\n{_tail(log_path)}", pytrace=False
                )
            if attempt == 2:
                pytest.fail(
                    f"pg_ctl start failed: {proc.stderr[-2000:]}\n{_tail(log_path)}", pytrace=False
                )
        server = PostgresServer(
            HOST, port, PG_USER, bin_dir, data_dir, log_path, version=bin_dir.parent.name
        )
        conn = server.connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                for db in PG_DATABASES:
                    cur.execute(f'CREATE DATABASE "{db}"')
        finally:
            conn.close()
        yield server
    finally:
        if started or (data_dir / "postmaster.pid").exists():  # ours: stop it by data dir
            subprocess.run(
                [
                    *prefix,
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data_dir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "60",
                    "stop",
                ],
                capture_output=True,
                timeout=90,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- moto S3


@dataclass
class MotoS3:
    """A running moto server: its endpoint, one bucket, and the (dummy) secret key in use."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    log_path: Path

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def keys(self, prefix: str = "") -> list[str]:
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _moto_command(port: int) -> list[str]:
    script = Path(sys.executable).parent / "moto_server"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    return [*head, "-H", HOST, "-p", str(port)]


def _wait_http(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float = 60) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if proc.poll() is not None:
            pytest.fail(
                f"moto_server exited ({proc.returncode}):\n{_tail(log_path)}", pytrace=False
            )
        try:
            with opener.open(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    pytest.fail(
        f"moto_server did not answer {url} within {timeout_s:.0f} s:\n{_tail(log_path)}",
        pytrace=False,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: only what it spawned
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory) -> Iterator[MotoS3]:
    """moto's S3 on 127.0.0.1 with one bucket, for the whole session (no env changes)."""
    root = tmp_path_factory.mktemp("moto")
    log_path = root / "moto.log"
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    # a recognisable secret, so tests can prove it never reaches a log or an output
    s3 = MotoS3(endpoint, MOTO_BUCKET, "testing", f"moto-secret-{secrets.token_hex(8)}", log_path)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            _moto_command(port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_http(f"{endpoint}/moto-api/", proc, log_path)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=s3.access_key,
            aws_secret_access_key=s3.secret_key,
        ).create_bucket(Bucket=MOTO_BUCKET)
        yield s3
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def moto_s3(moto_server: MotoS3, tmp_path_factory) -> Iterator[MotoS3]:
    """The moto S3 server, with the variables boto3 and MLflow read set for this module.

    Module-scoped (the server itself lives for the session): the AWS_* and
    MLFLOW_S3_ENDPOINT_URL variables are restored when the module ends, so tests in other
    modules (which compare environments exactly) never see them.
    """
    empty = tmp_path_factory.mktemp("no-aws")
    with pytest.MonkeyPatch.context() as mp:
        for key in (
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL_S3",
            "AWS_SECURITY_TOKEN",
        ):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", moto_server.access_key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", moto_server.secret_key)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", moto_server.endpoint)
        mp.setenv("MLFLOW_S3_ENDPOINT_URL", moto_server.endpoint)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups
        # never this machine's ~/.aws: the dummy keys above are the only credentials
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
        mp.setenv("AWS_CONFIG_FILE", str(empty / "config"))
        yield moto_server
