"""Shared fixtures: where the real HAM10000 data lives (CI always has it); one torch thread;
the tests that start services kept on one pytest-xdist worker (``make test`` runs 2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: test folders (and files) whose tests start services, Ray, subprocess grids or bind ports:
#: under pytest-xdist (``make test``: ``-n 2``) they run one after another on one worker, as
#: in a serial run, while the other worker takes the in-process tests beside them
SERVICES_GROUP = (
    "tests/flows/",
    "tests/integration/",
    "tests/e2e/",
    "tests/core/test_stack_ports.py",
)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: absent without xdist
def pytest_xdist_make_scheduler(config, log):
    """xdist's load scheduling with every ``SERVICES_GROUP`` test in one unit of work (one
    worker, collection order) and every other test a unit of its own. (``--dist loadgroup``
    with ``xdist_group`` marks would say the same, but xdist 3.8 cannot rename pytest 9.2's
    node ids, so its groups come apart.) The biggest unit goes out first."""
    from xdist.scheduler import LoadScopeScheduling

    class ServicesOnOneWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "services" if nodeid.startswith(SERVICES_GROUP) else nodeid

    return ServicesOnOneWorker(config, log)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """One torch thread for every test: the test machines have 2 cores, shared with other
    jobs (and, under xdist, with the other worker); 1 thread keeps timings sane. (It was the
    core tests' fixture; a serial run kept it for the flow tests after them, so every test
    gets it now, whichever worker runs it.)"""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def real_data_path() -> Path:
    """``$SKINADV_HAM10000`` or ``../shared/data/ham10000`` beside the repository."""
    return Path(os.environ.get("SKINADV_HAM10000") or REPO.parent / "shared" / "data" / "ham10000")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    path = real_data_path()
    if not (path / "HAM10000_metadata.csv").is_file():
        pytest.fail(
            f"real HAM10000 data not found at {path}: set SKINADV_HAM10000 to the folder "
            "holding HAM10000_metadata.csv and images_200x150/"
        )
    return path


@pytest.fixture(scope="session")
def real_npz(real_data_dir: Path) -> Path:
    return real_data_dir / "ham10000_28x28_rgb.npz"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session caches resized images in its own folder, never in ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "skinadv-cache"
    monkeypatch.setenv("SKINADV_CACHE_DIR", str(cache))


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files for people to look at (screenshots): ``$SKINADV_TEST_ARTIFACTS``
    or ``test-artifacts/`` in the repository."""
    path = Path(os.environ.get("SKINADV_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (no browser download)."""
    import shutil

    from playwright.sync_api import sync_playwright

    exe = os.environ.get("SKINADV_CHROMIUM") or shutil.which("chromium")
    if not exe:
        pytest.fail("chromium not found: `apt-get install chromium` (or set SKINADV_CHROMIUM)")
    flags = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=flags)
        yield b
        b.close()


def _prefect_api(method: str, url: str, json: dict | None = None):
    """One Prefect REST call, the JSON answer back. Retried on 503/429 as Prefect's own client
    does: its SQLite server answers 503 while another writer (a serving runner) holds the
    database, and clients are meant to retry."""
    import time

    import httpx

    for attempt in range(7):
        resp = httpx.request(method, url, json=json, timeout=60)
        if resp.status_code not in (429, 503) or attempt == 6:
            resp.raise_for_status()
            return resp.json()
        time.sleep(min(0.5 * 2**attempt, 8.0))
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def prefect_api():
    """``prefect_api(method, url, json=None)``: a Prefect REST call with the client's retries."""
    return _prefect_api
