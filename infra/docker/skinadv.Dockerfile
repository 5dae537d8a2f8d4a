# skinadv on Ray's GPU image: Ray head, Ray GPU workers and the grid driver (skinadv CLI).
# Ray and Python must match between the driver and every node: Ray 2.60, Python 3.11.
# Build context: the repository root (compose.yaml does this; see the .dockerignore beside).
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-gpu

# the driver's run folders: a named volume mounted here takes this owner on first use
USER root
RUN mkdir -p /runs /home/ray/skinadv && chown ray:users /runs /home/ray/skinadv
USER ray

COPY --chown=ray:users pyproject.toml README.md /home/ray/skinadv/
COPY --chown=ray:users skinadv /home/ray/skinadv/skinadv
COPY --chown=ray:users tasks /home/ray/skinadv/tasks
COPY --chown=ray:users flows /home/ray/skinadv/flows
# torch first (PyPI's CUDA build), then skinadv with its pinned Prefect and MLflow
RUN pip install --no-cache-dir torch==2.13.0 \
 && pip install --no-cache-dir /home/ray/skinadv
