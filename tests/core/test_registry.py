"""Model Registry helpers on a real MLflow backend (SQLite file + local artifacts in tmp):
a run's ``weights/`` folder becomes a registered version, the champion alias follows the
newest registration, and re-registering the same run reuses its version."""

from __future__ import annotations

from pathlib import Path

import pytest

from skinadv import tracking

EXPERIMENT = "registry-test"
NAME = "skinadv-test-pgd-at"


@pytest.fixture
def mlflow_tmp(tmp_path: Path, monkeypatch):
    """MLflow on ``tmp_path/mlflow.db`` with artifacts under ``tmp_path/artifacts``.

    Only the environment variable is set (and undone by monkeypatch): ``mlflow.set_tracking_uri``
    would pin the URI for the whole pytest process, and later tests that point MLflow at
    their own server through the environment would silently talk to this one's default.
    ``tracking.client()`` builds a fresh ``MlflowClient`` per call, so the variable is enough.
    """
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # pre-create the experiment so its artifacts land in tmp_path, not ./mlruns
    mlflow.MlflowClient().create_experiment(
        EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri()
    )
    yield tmp_path


def _run_with_weights(tmp_path: Path, label: str) -> tuple[str, bytes]:
    """A finished run whose ``weights/`` holds a small fake state dict + config side file."""
    src = tmp_path / f"src-{label}"
    src.mkdir()
    payload = f"state dict of {label}".encode() * 8
    (src / "model.pt").write_bytes(payload)
    (src / "model.pt.json").write_text('{"arch": "paper_cnn"}')
    with tracking.owned_run(EXPERIMENT, name=label, kind="cell") as rid:
        tracking.log_artifact_files(
            rid, [src / "model.pt", src / "model.pt.json"], tracking.WEIGHTS_DIR
        )
    return rid, payload


def test_register_moves_alias_and_is_idempotent(mlflow_tmp: Path):
    import mlflow

    run_a, bytes_a = _run_with_weights(mlflow_tmp, "a")
    run_b, bytes_b = _run_with_weights(mlflow_tmp, "b")
    tags_a = {
        "method": "pgd-at",
        "train_eps": "2/255",
        "val_robust_2_255_balanced_accuracy": "0.41",
    }

    assert tracking.champion(NAME) is None  # nothing registered yet
    v1 = tracking.register_champion(NAME, run_a, description="card A", tags=tags_a)
    assert v1 == "1"
    assert tracking.champion(NAME) == ("1", run_a, tags_a)
    c = mlflow.MlflowClient()
    assert c.get_model_version(NAME, "1").description == "card A"
    model = c.get_registered_model(NAME)
    assert tracking.WEIGHTS_DIR in model.description
    assert "sqlite" not in model.description  # no tracking URI leaks into the card

    tags_b = {"method": "pgd-at", "train_eps": "4/255"}
    v2 = tracking.register_champion(NAME, run_b, description="card B", tags=tags_b)
    assert v2 == "2"
    assert tracking.champion(NAME) == ("2", run_b, tags_b)

    # same run again: version 2 reused and updated (stale tag dropped), no version 3
    tags_b2 = {"method": "pgd-at", "note": "rescored"}
    assert tracking.register_champion(NAME, run_b, description="card B2", tags=tags_b2) == "2"
    versions = sorted(int(v.version) for v in c.search_model_versions(f"name = '{NAME}'"))
    assert versions == [1, 2]
    assert tracking.champion(NAME) == ("2", run_b, tags_b2)
    assert c.get_model_version(NAME, "2").description == "card B2"

    # moving the alias back to run A reuses version 1 as well
    assert tracking.register_champion(NAME, run_a, description="card A", tags=tags_a) == "1"
    assert tracking.champion(NAME)[:2] == ("1", run_a)

    # the aliased version's files come back through the models:/ URI (no MLmodel needed)
    out = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{NAME}@{tracking.CHAMPION_ALIAS}", dst_path=str(mlflow_tmp / "dl")
        )
    )
    assert (out / "model.pt").read_bytes() == bytes_a
    assert (out / "model.pt.json").is_file()
    assert bytes_a != bytes_b


def test_champion_missing_model_or_alias(mlflow_tmp: Path):
    run_a, _ = _run_with_weights(mlflow_tmp, "a")
    assert tracking.champion("no-such-model") is None
    tracking.register_champion(NAME, run_a, alias="staging", description="d", tags={})
    assert tracking.champion(NAME) is None  # model exists, default alias does not
    assert tracking.champion(NAME, alias="staging") == ("1", run_a, {})
