"""Data layer: every source on real data, splits, oversampling and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinadv.config import DataConfig
from skinadv.data import (
    CLASSES,
    HMNIST_CLASSES,
    DataError,
    detect,
    load_dataset,
    oversample,
    split,
    stratified_subset,
    synthetic,
)
from skinadv.training import prepare_data

HAM_COUNTS = {
    "akiec": 327,
    "bcc": 514,
    "bkl": 1099,
    "df": 115,
    "mel": 1113,
    "nv": 6705,
    "vasc": 142,
}


@pytest.fixture(scope="module")
def npz_ds(real_npz):
    return load_dataset(real_npz)


@pytest.fixture(scope="module")
def small_ham(real_data_dir, tmp_path_factory) -> Path:
    """A HAM10000-layout folder with the first 40 real images, split over two sub-folders."""
    root = tmp_path_factory.mktemp("ham_small")
    meta = pd.read_csv(real_data_dir / "HAM10000_metadata.csv").iloc[:40]
    meta.to_csv(root / "HAM10000_metadata.csv", index=False)
    for i, image_id in enumerate(meta["image_id"]):
        part = root / ("part_1" if i % 2 else "part_2")
        part.mkdir(exist_ok=True)
        shutil.copy(real_data_dir / "images_200x150" / f"{image_id}.jpg", part)
    return root


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------- real sources


def test_real_ham10000_folder_matches_shared_npz(real_data_dir, npz_ds, tmp_path, monkeypatch):
    monkeypatch.setenv("SKINADV_CACHE_DIR", str(tmp_path / "cache"))
    t0 = time.perf_counter()
    ds = load_dataset(real_data_dir, size=28)
    cold = time.perf_counter() - t0
    assert ds.kind == "ham10000"
    assert len(ds) == 10015
    assert ds.class_counts() == HAM_COUNTS
    assert ds.num_lesions == 7470
    assert ds.images.shape == (10015, 28, 28, 3) and ds.images.dtype == np.uint8
    assert (ds.image_id == npz_ds.image_id).all() and (ds.labels == npz_ds.labels).all()
    mad = np.abs(ds.images.astype(np.int16) - npz_ds.images.astype(np.int16)).mean()
    assert mad < 1.0, f"mean absolute difference {mad:.3f} grey levels"
    # second load comes from the cache, same bytes
    assert len(list((tmp_path / "cache").glob("ham10000-28px-*.npz"))) == 1
    t0 = time.perf_counter()
    again = load_dataset(real_data_dir, size=28)
    warm = time.perf_counter() - t0
    assert again.fingerprint() == ds.fingerprint()
    print(f"HAM10000 load: cold {cold:.1f}s, cached {warm:.2f}s")


def test_canonical_npz(npz_ds):
    assert npz_ds.kind == "npz"
    assert npz_ds.class_counts() == HAM_COUNTS
    assert npz_ds.num_lesions == 7470


def test_hmnist_csv_written_from_real_arrays(npz_ds, tmp_path):
    sub = npz_ds.subset(np.arange(300))
    hm_labels = np.array([HMNIST_CLASSES.index(CLASSES[c]) for c in sub.labels])
    cols = [f"pixel{i:04d}" for i in range(28 * 28 * 3)]
    frame = pd.DataFrame(sub.images.reshape(len(sub), -1), columns=cols)
    frame["label"] = hm_labels
    path = tmp_path / "hmnist_28_28_RGB.csv"
    frame.to_csv(path, index=False)
    assert detect(str(path)) == "hmnist_csv"
    ds = load_dataset(path)
    assert ds.kind == "hmnist_csv"
    assert (ds.images == sub.images).all()
    assert (ds.labels == sub.labels).all(), "hmnist labels must be remapped to canonical order"


def test_dermamnist_npz_written_from_real_arrays(npz_ds, tmp_path):
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(npz_ds))[:1000]
    parts = {"train": idx[:700], "val": idx[700:800], "test": idx[800:]}
    arrays = {}
    for name, part in parts.items():
        arrays[f"{name}_images"] = npz_ds.images[part]
        arrays[f"{name}_labels"] = npz_ds.labels[part].reshape(-1, 1).astype(np.uint8)
    path = tmp_path / "dermamnist.npz"
    np.savez_compressed(path, **arrays)
    ds = load_dataset(path)
    assert ds.kind == "dermamnist"
    assert len(ds) == 1000
    assert {k: len(v) for k, v in ds.given_split.items()} == {"train": 700, "val": 100, "test": 200}
    test_side = ds.subset(ds.given_split["test"])
    assert (test_side.images == npz_ds.images[parts["test"]]).all()
    assert (test_side.labels == npz_ds.labels[parts["test"]]).all()


def test_ham10000_several_folders_and_resize(small_ham, real_data_dir):
    ds = load_dataset(f"{small_ham / 'part_1'},{small_ham / 'part_2'},{small_ham}", size=32)
    assert len(ds) == 40 and ds.images.shape == (40, 32, 32, 3)
    from_csv = load_dataset(small_ham / "HAM10000_metadata.csv", size=32)
    assert from_csv.fingerprint() == ds.fingerprint()


def test_synthetic_is_deterministic_and_proportional():
    a, b = synthetic(n=700, seed=3), synthetic(n=700, seed=3)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != synthetic(n=700, seed=4).fingerprint()
    counts = a.class_counts()
    assert counts["nv"] > counts["mel"] > counts["df"] >= 1
    assert sum(counts.values()) == 700
    ds = load_dataset("synthetic:200:1", size=16)
    assert ds.synthetic and ds.kind == "synthetic" and ds.images.shape == (200, 16, 16, 3)


# ----------------------------------------------------------------- splits


def test_stratified_split_sizes_match_paper(npz_ds):
    train, test = split(npz_ds, test_size=0.2, seed=0)
    assert (len(train), len(test)) == (8012, 2003)
    assert not set(train.image_id) & set(test.image_id)
    for c, n in test.class_counts().items():
        assert abs(n - 0.2 * HAM_COUNTS[c]) <= 1, c
    again_train, _ = split(npz_ds, test_size=0.2, seed=0)
    assert (again_train.image_id == train.image_id).all()
    other_train, _ = split(npz_ds, test_size=0.2, seed=1)
    assert not (other_train.image_id == train.image_id).all()


def test_lesion_grouped_split_shares_no_lesion(npz_ds):
    train, test = split(npz_ds, test_size=0.2, seed=0, group_by_lesion=True)
    assert len(train) + len(test) == 10015
    assert not set(train.lesion_id) & set(test.lesion_id)
    assert 0.15 < len(test) / 10015 < 0.25
    # the plain split does leak lesions: the grouped option is not a no-op
    plain_train, plain_test = split(npz_ds, test_size=0.2, seed=0)
    assert set(plain_train.lesion_id) & set(plain_test.lesion_id)


def test_grouped_split_needs_lesion_ids(npz_ds, tmp_path):
    np.savez(tmp_path / "x.npz", images=npz_ds.images[:50], labels=npz_ds.labels[:50])
    with pytest.raises(DataError, match="lesion ids"):
        split(load_dataset(tmp_path / "x.npz"), group_by_lesion=True)


def test_oversampling_balances_classes(npz_ds):
    train, _ = split(npz_ds, test_size=0.2, seed=0)
    balanced = oversample(train, seed=0)
    counts = balanced.class_counts()
    top = max(train.class_counts().values())
    assert set(counts.values()) == {top}
    assert len(balanced) == 7 * top
    # originals all kept
    assert set(train.image_id) <= set(balanced.image_id)
    x, y = balanced.to_float()
    assert x.dtype == np.float32 and x.shape[1:] == (3, 28, 28)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_stratified_subset(npz_ds):
    sub = stratified_subset(npz_ds, 1000, seed=0)
    assert len(sub) == 1000
    assert all(n > 0 for n in sub.class_counts().values())


# ----------------------------------------------------------------- bad input


def run_cli(*args: str, env_cache: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "SKINADV_CACHE_DIR": str(env_cache)}
    return subprocess.run(
        [sys.executable, "-m", "skinadv.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_truncated_jpeg(small_ham, tmp_path):
    bad = copy_tree(small_ham, tmp_path / "ham")
    victim = next((bad / "part_1").glob("ISIC_*.jpg"))
    victim.write_bytes(victim.read_bytes()[:600])
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=victim.name):
        load_dataset(bad, cache_dir=cache)
    assert not cache.exists() or not any(cache.iterdir()), "no partial cache file"
    out = tmp_path / "out.npz"
    proc = run_cli("data", "prepare", "--data", str(bad), "--out", str(out), env_cache=cache)
    assert proc.returncode == 2
    assert victim.name in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.npz*"))


def test_missing_image_names_row(small_ham, tmp_path):
    bad = copy_tree(small_ham, tmp_path / "ham")
    meta = pd.read_csv(bad / "HAM10000_metadata.csv")
    gone = meta["image_id"].iloc[5]
    next(bad.rglob(f"{gone}.jpg")).unlink()
    with pytest.raises(DataError, match=rf"row 7: image {gone}\.jpg not found"):
        load_dataset(bad)


def test_metadata_label_outside_class_set(small_ham, tmp_path):
    bad = copy_tree(small_ham, tmp_path / "ham")
    meta = pd.read_csv(bad / "HAM10000_metadata.csv")
    meta.loc[3, "dx"] = "scc"
    meta.to_csv(bad / "HAM10000_metadata.csv", index=False)
    with pytest.raises(DataError, match="row 5: dx 'scc' is outside the class set"):
        load_dataset(bad)


def _hmnist(tmp_path: Path, rows: list[list], n_cols: int = 2352) -> Path:
    path = tmp_path / "hmnist_28_28_RGB.csv"
    header = [f"pixel{i:04d}" for i in range(n_cols)] + ["label"]
    lines = [",".join(header)] + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_hmnist_wrong_column_count(tmp_path):
    with pytest.raises(DataError, match="3\\*S\\*S pixel columns"):
        load_dataset(_hmnist(tmp_path, [[0] * 2001 + [1]], n_cols=2000))
    good_row = [10] * 2352 + [1]
    path = _hmnist(tmp_path, [good_row, good_row[:-5] + [1]])
    with pytest.raises(DataError, match=r"row 3: 2349 columns, expected 2353"):
        load_dataset(path)


def test_hmnist_label_out_of_range_and_nan(tmp_path):
    with pytest.raises(DataError, match="row 2: label 9 is outside the class set"):
        load_dataset(_hmnist(tmp_path, [[10] * 2352 + [9]]))
    with pytest.raises(DataError, match="row 3: NaN"):
        load_dataset(
            _hmnist(tmp_path, [[10] * 2352 + [1], [10] * 100 + ["nan"] + [10] * 2251 + [1]])
        )


def test_empty_sets(tmp_path, small_ham):
    with pytest.raises(DataError, match="empty"):
        load_dataset(_hmnist(tmp_path, []))
    np.savez(
        tmp_path / "empty.npz",
        images=np.zeros((0, 28, 28, 3), np.uint8),
        labels=np.zeros((0,), np.int64),
    )
    with pytest.raises(DataError, match="empty"):
        load_dataset(tmp_path / "empty.npz")
    bad = copy_tree(small_ham, tmp_path / "ham")
    pd.read_csv(bad / "HAM10000_metadata.csv").iloc[:0].to_csv(
        bad / "HAM10000_metadata.csv", index=False
    )
    with pytest.raises(DataError, match="empty"):
        load_dataset(bad)


def test_npz_labels_and_nan(tmp_path):
    imgs = np.zeros((4, 28, 28, 3), np.uint8)
    np.savez(tmp_path / "a.npz", images=imgs, labels=np.array([0, 1, 7, 2]))
    with pytest.raises(DataError, match="label 7 at row 2 is outside the class set"):
        load_dataset(tmp_path / "a.npz")
    f = np.zeros((4, 28, 28, 3), np.float32)
    f[1, 2, 3, 0] = np.nan
    np.savez(tmp_path / "b.npz", images=f, labels=np.array([0, 1, 2, 2]))
    with pytest.raises(DataError, match="NaN"):
        load_dataset(tmp_path / "b.npz")


def test_unrecognised_spec_lists_accepted_forms(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for spec in (str(tmp_path / "notes.txt"), str(tmp_path / "nothing-here"), str(tmp_path)):
        with pytest.raises(DataError, match="accepted forms"):
            load_dataset(spec)
    proc = run_cli("data", "summary", "--data", str(tmp_path / "notes.txt"), env_cache=tmp_path)
    assert proc.returncode == 2 and "accepted forms" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------- CLI on real data


def test_cli_summary_and_prepare(real_npz, tmp_path):
    proc = run_cli("data", "summary", "--data", str(real_npz), "--json", env_cache=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["kind"] == "npz" and summary["n"] == 10015
    assert summary["class_counts"] == HAM_COUNTS and summary["lesions"] == 7470
    out = tmp_path / "prep" / "small.npz"
    proc = run_cli(
        "data",
        "prepare",
        "--data",
        str(real_npz),
        "--size",
        "16",
        "--out",
        str(out),
        env_cache=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    ds = load_dataset(out, size=16)
    assert ds.images.shape == (10015, 16, 16, 3) and ds.num_lesions == 7470
    assert ds.fingerprint() == load_dataset(real_npz, size=16).fingerprint()


def test_cli_synthetic_is_announced(tmp_path):
    proc = run_cli("data", "summary", "--data", "synthetic:100", env_cache=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "SYNTHETIC" in proc.stdout


def test_validation_split_is_held_out_from_the_training_side(npz_ds):
    """The validation split comes from the training side only (the test side is the one a
    split without validation gives), shares no lesion with either side when grouped, is
    never oversampled and never trained on."""
    cfg = DataConfig(subset=3000, val_size=0.1, group_by_lesion=True)
    prep = prepare_data(cfg, npz_ds)
    plain = prepare_data(cfg.model_copy(update={"val_size": 0.0}), npz_ds)
    assert plain.val is None and prep.val is not None
    assert list(prep.test.image_id) == list(plain.test.image_id)  # test side unchanged
    val, train, test = (set(d.image_id) for d in (prep.val, prep.train_raw, prep.test))
    assert val <= set(plain.train_raw.image_id) and val.isdisjoint(train | test)
    assert val | train == set(plain.train_raw.image_id)
    assert set(prep.val.lesion_id).isdisjoint(set(prep.train_raw.lesion_id))
    assert set(prep.train.image_id) == train  # oversampling draws from the training rows only
    assert len(prep.val) == len(set(prep.val.image_id))  # not oversampled
    assert 0.05 < len(prep.val) / len(plain.train_raw) < 0.15
    assert prep.summary()["n_val"] == len(prep.val)
