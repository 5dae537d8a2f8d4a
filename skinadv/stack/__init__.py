"""Find or start the services the grid runs on: MLflow tracking server, Prefect server, Ray.

For each service, an environment variable that is already set wins and nothing is started
for it (``MLFLOW_TRACKING_URI``, ``PREFECT_API_URL``, ``RAY_ADDRESS``: a team server, a
cluster). Otherwise a local one is started on 127.0.0.1, on a free port, with its state
and logs under a run folder::

    RUN/mlflow.db  RUN/mlartifacts/     MLflow (SQLite backend, proxied artifacts)
    RUN/prefect/prefect.db              Prefect (its own PREFECT_HOME)
    RUN/ray -> Ray's temp dir           Ray head (sockets, session logs)
    RUN/node/                           the head's tasks' own files ($SKINADV_NODE_DIR)
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
package prints or logs has its ``user:password@`` replaced by ``***@``.

Usage (the CLI starts the stack before it imports anything from Prefect)::

    with Stack(run_dir) as stack:          # or stack = Stack(run_dir).start(); stack.stop()
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
``worker_env()`` is the same forwarded environment (``WORKER_ENV_VARS``, never a
credential) without a stack.

Modules: ``core`` (``Stack``), one per service (``mlflow_server``, ``prefect_server``,
``ray_head``), ``process`` (ports, launch, health polling, stopping a session), ``redact``
(credentials out of what is shown) and ``common`` (names, ``Service``, ``StackError``).
This package and ``skinadv.tracking`` are the only ones that touch mlflow, prefect or
ray; they are imported lazily, so ``import skinadv.stack`` starts and imports nothing heavy.
"""

from skinadv.stack.common import (
    ENV_VARS,
    HOST,
    SERVICES,
    STORAGE_ENV_VARS,
    WORKER_ENV_VARS,
    Service,
    StackError,
    worker_env,
)
from skinadv.stack.core import DEFAULT_TIMEOUT_S, Stack

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ENV_VARS",
    "HOST",
    "SERVICES",
    "STORAGE_ENV_VARS",
    "WORKER_ENV_VARS",
    "Service",
    "Stack",
    "StackError",
    "worker_env",
]
