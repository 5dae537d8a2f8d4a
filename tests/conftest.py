"""Shared fixtures: where the real HAM10000 data lives (CI always has it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
