"""Fixtures of the flow tests that start Ray themselves."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def ray_tmp(tmp_path, monkeypatch) -> Path:
    """A short temp folder for a Ray this test starts (``ray_head.make_temp_dir``: Unix
    socket paths), Ray's default temp dir pointed into it (so its "current cluster" file
    stays out of /tmp/ray, which other Rays on this machine use), and token authentication
    on, as ``skinadv up`` starts Ray: the test's nodes, its driver and a grid subprocess
    launched with this environment all use the token. Yields ``<folder>/ray``, the temp dir
    to give the Ray it starts."""
    from skinadv.stack import ray_head

    temp, made = ray_head.make_temp_dir(tmp_path / "ray-run")
    (temp / "ray").mkdir(exist_ok=True)
    monkeypatch.setenv("RAY_TMPDIR", str(temp))
    for k, v in ray_head.auth_env(temp).items():
        monkeypatch.setenv(k, v)
    ray_head.forget_cached_token()  # an earlier test's Ray may have cached its own token
    yield temp / "ray"
    monkeypatch.undo()
    ray_head.forget_cached_token()
    if made is not None:
        ray_head.remove_temp_dir(tmp_path / "ray-run", made)
