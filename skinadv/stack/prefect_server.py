"""The Prefect server: found through ``PREFECT_API_URL``, or started here.

A started server has its own ``PREFECT_HOME`` in ``RUN/prefect`` and its database there
(SQLite) or at the URL given; the environment never picks its database.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from skinadv.stack.common import HOST, Env, Service, StackError
from skinadv.stack.process import script
from skinadv.stack.redact import redact

logger = logging.getLogger(__name__)

PORTS = 1
PREFECT_DRIVERS = ("postgresql+asyncpg://", "sqlite+aiosqlite://")


def database_url(url: str | None) -> str | None:
    """Prefect's database URL with its async driver (``postgresql://`` -> ``+asyncpg``).

    Raises:
        StackError: a URL of another database or driver (shown redacted).
    """
    if url is None:
        return None
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            url = "postgresql+asyncpg://" + url[len(plain) :]
    if not url.startswith(PREFECT_DRIVERS):
        raise StackError(
            f"prefect_database_url ($SKINADV_PREFECT_DATABASE_URL) must start with "
            f"{' or '.join(PREFECT_DRIVERS)}, got {redact(url)!r}"
        )
    return url


def database(run_dir: Path, url: str | None) -> str:
    """The database a started server uses: ``url``, else SQLite at ``RUN/prefect/prefect.db``."""
    return url or f"sqlite+aiosqlite:///{run_dir / 'prefect' / 'prefect.db'}"


def found(address: str) -> Service:
    """The server whose API is at ``address`` ($PREFECT_API_URL); UI from $PREFECT_UI_URL."""
    ui = os.environ.get("PREFECT_UI_URL") or address.rstrip("/").removesuffix("/api")
    health = (address.rstrip("/") + "/health",)
    return Service("prefect", address, ui, started=False, health_urls=health)


def planned(ports: tuple[int, ...], logs: Path) -> Service:
    """The server this stack will start on ``ports[0]``, its output in ``logs/prefect.log``."""
    url = f"http://{HOST}:{ports[0]}"
    return Service(
        "prefect",
        url + "/api",
        url,
        started=True,
        health_urls=(url + "/api/health",),
        log_path=logs / "prefect.log",
        ports=ports,
    )


def command(
    svc: Service, env: Env, *, home: Path, database_url: str, given: bool
) -> tuple[list[str], Env]:
    """``prefect server start`` for ``svc`` and its environment (``env`` is updated).

    Args:
        home: the server's ``PREFECT_HOME`` (made here).
        database_url: the database it uses.
        given: True when the database URL was given to the Stack: then the environment's
            other database settings (pool, timeout, TLS) are kept, else all are dropped.
    """
    home.mkdir(parents=True, exist_ok=True)
    for key in [k for k in env if k.startswith("PREFECT_") and "DATABASE" in k]:
        # never a database from the environment: SQLite in RUN/prefect, or the URL
        # given here (whose pool, timeout and TLS settings may come from the env)
        if not given or "CONNECTION_URL" in key:
            del env[key]
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": svc.address,  # the UI calls the API here
    }
    cmd = [script("prefect"), "server", "start", "--host", HOST, "--port", str(svc.ports[0])]
    return cmd, env


def refresh_settings() -> None:
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
