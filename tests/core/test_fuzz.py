"""Hostile input, fuzzed with hypothesis.

Random bytes, truncated and corrupted files, wrong shapes and dtypes, NaN and infinite values
and absurd sizes, for every data source, the checkpoint loader and config overrides: each
either loads (and then the result is sound) or raises the project's own error (``DataError``
for data, ``ValueError`` for checkpoints and configs, pydantic's ``ValidationError`` being
one), never another exception. Through the CLI: one ``error:`` line on stderr, exit code 2,
no traceback, no output file.

Valid seed files are cut from the real data (``real_ds``); examples are kept few
(``max_examples`` 25-60) so that the file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from typer.testing import CliRunner

from skinadv.cli import app
from skinadv.config import ExperimentConfig, config_hash, describe_error, load_preset
from skinadv.data import CLASSES, HMNIST_TO_CANONICAL, NUM_CLASSES, DataError, Dataset, load_dataset
from skinadv.data.sources import MAX_SIZE
from skinadv.models import create_model, load_model, save_model
from skinadv.models.cnn import MAX_PARAMS

REPO = Path(__file__).resolve().parents[2]
pytestmark = [  # what hostile files make torch, numpy and zipfile say on the way to a refusal
    pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning"),
    pytest.mark.filterwarnings("ignore:Casting complex values:UserWarning"),
    pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning"),
]
#: hypothesis examples share the test's tmp_path (each writes its files afresh)
_SHARED_TMP = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def fuzz(n: int):
    return settings(max_examples=n, deadline=None, suppress_health_check=_SHARED_TMP)


# --------------------------------------------------------------------------- helpers


def load_or_refuse(spec, size: int = 28, **kw) -> Dataset | None:
    """``load_dataset(spec)``, its result checked; None when it raised DataError.

    Any other exception propagates and fails the test: that is the point."""
    try:
        ds = load_dataset(spec, size=size, **kw)
    except DataError as exc:
        assert str(exc).strip(), "a DataError must say what is wrong"
        return None
    n = len(ds)
    assert n > 0
    assert ds.images.dtype == np.uint8 and ds.images.shape == (n, size, size, 3)
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (n,)
    assert 0 <= ds.labels.min() and ds.labels.max() < NUM_CLASSES
    for ids in (ds.image_id, ds.lesion_id):
        assert ids is None or ids.shape == (n,)
    for idx in (ds.given_split or {}).values():
        assert idx.size and 0 <= idx.min() and idx.max() < n
    assert sum(ds.class_counts().values()) == n and len(ds.fingerprint()) == 16
    return ds


def fresh_dir(root: Path) -> Path:
    """A new empty folder under ``root`` (hypothesis examples share the test's tmp_path)."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=root))


def cut(blob: bytes, where: float) -> bytes:
    return blob[: int(where * len(blob))]


def flip(blob: bytes, flips: list[tuple[float, int]]) -> bytes:
    out = bytearray(blob)
    for where, value in flips:
        if out:
            out[int(where * len(out))] = value
    return bytes(out)


def hmnist_text(images: np.ndarray, labels: np.ndarray) -> str:
    side = images.shape[1]
    header = [f"pixel{i:04d}" for i in range(3 * side * side)] + ["label"]
    hm = np.argsort(HMNIST_TO_CANONICAL)[labels]  # canonical -> hmnist label
    rows = [",".join(map(str, [*img.reshape(-1), lab])) for img, lab in zip(images, hm)]
    return "\n".join([",".join(header), *rows]) + "\n"


class Blobs(dict):
    """File contents by format; a short repr keeps hypothesis' failure reports readable."""

    def __repr__(self) -> str:
        return f"Blobs({', '.join(f'{k}: {len(v)} bytes' for k, v in self.items())})"


@pytest.fixture(scope="module")
def seeds(real_ds: Dataset) -> Blobs:
    """Small valid files of every format, from 12 real images (6 at 7x7 for the CSV)."""
    small = real_ds.subset(np.arange(12))
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        images=small.images,
        labels=small.labels,
        class_names=np.array(CLASSES),
        image_id=small.image_id,
        lesion_id=small.lesion_id,
    )
    canonical = buf.getvalue()
    buf = io.BytesIO()
    np.savez(buf, images=small.images, labels=small.labels)  # stored: flips hit the pixels
    raw = buf.getvalue()
    buf = io.BytesIO()
    y = small.labels[:, None].astype(np.uint8)  # MedMNIST's (N, 1) labels
    np.savez_compressed(
        buf,
        **{f"{p}_images": small.images[s] for p, s in _PARTS.items()},
        **{f"{p}_labels": y[s] for p, s in _PARTS.items()},
    )
    derma = buf.getvalue()
    tiny = np.stack([np.asarray(img[::4, ::4]) for img in small.images[:6]])  # 7x7
    csv = hmnist_text(tiny, small.labels[:6]).encode()
    return Blobs(npz=canonical, npz_raw=raw, dermamnist=derma, hmnist=csv)


_PARTS = {"train": slice(0, 8), "val": slice(8, 10), "test": slice(10, 12)}
_SEED_NAMES = {
    "npz": "seed.npz",
    "npz_raw": "seed.npz",
    "dermamnist": "dermamnist.npz",
    "hmnist": "hmnist_7_7_RGB.csv",
}


def test_seed_files_load(seeds, tmp_path):
    """The valid seeds the fuzzing corrupts do load (else the fuzz tests test nothing)."""
    for fmt, blob in seeds.items():
        path = fresh_dir(tmp_path) / _SEED_NAMES[fmt]
        path.write_bytes(blob)
        ds = load_or_refuse(path)
        assert ds is not None and len(ds) in (6, 12), fmt


# --------------------------------------------------------------------------- data: bytes


@fuzz(60)
@given(
    blob=st.one_of(
        st.binary(max_size=2048),
        st.binary(max_size=2048).map(lambda b: b"PK\x03\x04" + b),  # into the zip reader
        st.binary(max_size=512).map(lambda b: b"\x93NUMPY\x01\x00" + b),  # a bare .npy
        st.text(max_size=400).map(str.encode),
        st.text(max_size=400).map(lambda t: ("pixel0000,label\n" + t).encode()),
    ),
    name=st.sampled_from(
        ["x.npz", "X.NPZ", "hmnist_28_28_RGB.csv", "HAM10000_metadata.csv", "x.bin", "x"]
    ),
)
def test_random_bytes_load_or_raise_data_error(tmp_path, blob, name):
    path = fresh_dir(tmp_path) / name
    path.write_bytes(blob)
    load_or_refuse(path)


@fuzz(60)
@given(
    fmt=st.sampled_from(sorted(_SEED_NAMES)),
    where=st.floats(0, 1, exclude_max=True),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6),
)
def test_truncated_and_corrupted_files(seeds, tmp_path, fmt, where, flips):
    blob = seeds[fmt]
    path = fresh_dir(tmp_path) / _SEED_NAMES[fmt]
    path.write_bytes(flip(cut(blob, where), flips) if where else flip(blob, flips))
    ds = load_or_refuse(path)
    if fmt.startswith("npz") and where:  # a cut zip has lost its central directory
        assert ds is None


# --------------------------------------------------------------------------- data: arrays

NAN_INF = st.sampled_from([math.nan, math.inf, -math.inf])
DTYPES = [
    "uint8",
    "int8",
    "int16",
    "int64",
    "uint64",
    "float16",
    "float32",
    "float64",
    "bool",
    "complex64",
    "<U3",
    "S3",
    "datetime64[s]",
]


def any_array(max_dims: int = 5, max_side: int = 5) -> st.SearchStrategy[np.ndarray]:
    shapes = hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=max_side)
    return st.sampled_from(DTYPES).flatmap(lambda dt: hnp.arrays(np.dtype(dt), shapes))


@st.composite
def poke(draw, arr: np.ndarray) -> np.ndarray:
    """Maybe set one element of a float array to NaN or +-inf."""
    if arr.size and arr.dtype.kind == "f" and draw(st.booleans()):
        arr = arr.copy()
        arr.flat[draw(st.integers(0, arr.size - 1))] = draw(NAN_INF)
    return arr


@st.composite
def images_for(draw, n: int) -> np.ndarray:
    side = draw(st.integers(0, 8))
    shape = (n, side, side, 3)
    kind = draw(st.sampled_from(["uint8", "unit", "int", "grey", "any"]))
    if kind == "uint8":
        return draw(hnp.arrays(np.uint8, shape))
    if kind == "unit":  # floats in [0, 1], MedMNIST-style, maybe with a NaN or inf
        arr = draw(hnp.arrays(np.float32, shape, elements=st.floats(0, 1, width=32)))
        return draw(poke(arr))
    if kind == "int":
        return draw(hnp.arrays(np.int64, shape, elements=st.integers(-300, 600)))
    if kind == "grey":
        return draw(hnp.arrays(np.uint8, (n, side, side)))
    return draw(any_array())


@st.composite
def labels_for(draw, n: int) -> np.ndarray:
    kind = draw(st.sampled_from(["valid", "column", "float", "any"]))
    if kind == "valid":
        return draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, NUM_CLASSES - 1)))
    if kind == "column":  # MedMNIST's (N, 1), out-of-range values possible
        return draw(hnp.arrays(np.uint8, (n, 1), elements=st.integers(0, 9)))
    if kind == "float":
        values = st.one_of(st.integers(-2, 9).map(float), st.floats(-10, 10), NAN_INF)
        return draw(hnp.arrays(np.float64, (n,), elements=values))
    return draw(any_array(max_dims=3, max_side=6))


def ids_for(n: int) -> st.SearchStrategy[np.ndarray | None]:
    return st.one_of(
        st.none(),
        hnp.arrays(np.dtype("<U6"), (n,)),
        hnp.arrays(np.dtype("S4"), (n,)),  # bytes ids, maybe not ASCII
        hnp.arrays(np.int32, (n,)),
        any_array(max_dims=2, max_side=6),
    )


PICKLED = np.array([{"a": 1}, None], dtype=object)  # np.load(allow_pickle=False) refuses


@st.composite
def canonical_npz(draw) -> dict[str, np.ndarray]:
    n = draw(st.integers(0, 5))
    arrays = {"images": draw(images_for(n)), "labels": draw(labels_for(n))}
    for key in ("image_id", "lesion_id"):
        ids = draw(ids_for(n))
        if ids is not None:
            arrays[key] = ids
    if draw(st.integers(0, 9)) == 0:
        arrays[draw(st.sampled_from(sorted(arrays)))] = PICKLED
    if draw(st.integers(0, 9)) == 0:
        del arrays[draw(st.sampled_from(["images", "labels"]))]
    return arrays


@st.composite
def dermamnist_npz(draw) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for part in ("train", "val", "test"):
        if part != "train" and draw(st.booleans()):
            continue
        n = draw(st.integers(0, 4))
        arrays[f"{part}_images"] = draw(images_for(n))
        if draw(st.integers(0, 5)):
            arrays[f"{part}_labels"] = draw(labels_for(n))
    if draw(st.integers(0, 9)) == 0:
        arrays[draw(st.sampled_from(sorted(arrays)))] = PICKLED
    return arrays


@fuzz(60)
@given(arrays=st.one_of(canonical_npz(), dermamnist_npz()), size=st.sampled_from([4, 8, 28]))
def test_npz_arrays_of_any_shape_and_dtype(tmp_path, arrays, size):
    path = fresh_dir(tmp_path) / "fuzz.npz"
    np.savez(path, **arrays)
    ds = load_or_refuse(path, size=size)
    if ds is not None and "labels" in arrays:  # what loaded is what was written
        assert np.array_equal(ds.labels, np.asarray(arrays["labels"]).reshape(-1))


def _npy_claiming(shape: tuple[int, ...], descr: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue() + payload


@fuzz(40)
@given(
    shape=st.lists(st.integers(0, 10**10), max_size=4).map(tuple),
    descr=st.sampled_from(["|u1", "<f8", "<i8", "<U3"]),
    payload=st.binary(max_size=64),
    key=st.sampled_from(["images", "labels", "train_images"]),
)
def test_npz_header_claiming_an_absurd_shape(tmp_path, shape, descr, payload, key):
    """A member whose header claims terabytes but holds a few bytes: refused, and nothing
    is read beyond the bytes that are there."""
    good = io.BytesIO()
    np.lib.format.write_array(good, np.zeros((2, 8, 8, 3), np.uint8))
    labels = io.BytesIO()
    np.lib.format.write_array(labels, np.array([0, 1]))
    path = fresh_dir(tmp_path) / "claims.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{key}.npy", _npy_claiming(shape, descr, payload))
        if key != "images":
            z.writestr("images.npy", good.getvalue())
        z.writestr("train_labels.npy" if key == "train_images" else "labels.npy", labels.getvalue())
    load_or_refuse(path)


# --------------------------------------------------------------------------- data: CSV

CELL = st.one_of(
    st.integers(-5, 300).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "nan", "inf", "-inf", "1e999", " 7", "abc", '"3"', "0x1F", "1_0", "٣"]),
)


@st.composite
def hmnist_csv(draw) -> str:
    side = draw(st.integers(0, 3))
    n_pix = max(0, 3 * side * side + draw(st.sampled_from([0, 0, 0, 1, -1])))
    label = draw(st.sampled_from(["label", "label", '"label"', "Label", ""]))
    lines = [",".join([f"pixel{i:04d}" for i in range(n_pix)] + [label])]
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            pixels = draw(st.lists(st.integers(0, 255).map(str), min_size=n_pix, max_size=n_pix))
            fields = [*pixels, str(draw(st.integers(0, 6)))]
        else:
            fields = draw(st.lists(CELL, min_size=max(0, n_pix - 1), max_size=n_pix + 2))
        lines.append(",".join(fields) if draw(st.integers(0, 9)) else "")
    return draw(st.sampled_from(["\n", "\r\n"])).join(lines) + draw(st.sampled_from(["", "\n"]))


@fuzz(60)
@given(text=hmnist_csv())
def test_hmnist_csv_of_any_content(tmp_path, text):
    path = fresh_dir(tmp_path) / "hmnist_3_3_RGB.csv"
    path.write_text(text, encoding="utf-8")
    load_or_refuse(path)


def test_hmnist_csv_bytes_beyond_the_first_buffer_that_are_not_utf8(tmp_path):
    """The header reads as text, a row 10 kB on does not: DataError, not UnicodeDecodeError."""
    good_row = ",".join(["1"] * 12) + ",0\n"
    path = tmp_path / "hmnist_2_2_RGB.csv"
    header = ",".join(f"p{i}" for i in range(12)) + ",label\n"
    path.write_bytes((header + good_row * 500).encode() + b"\xff\xfe,1\n")
    with pytest.raises(DataError, match="cannot read CSV"):
        load_dataset(path)


# --------------------------------------------------------------------------- data: folder

IMAGE_IDS = ["ISIC_0024306", "ISIC_0024307", "ISIC_0024308"]


@pytest.fixture(scope="module")
def jpegs(real_data_dir: Path) -> Blobs:
    return Blobs(
        {i: (real_data_dir / "images_200x150" / f"{i}.jpg").read_bytes() for i in IMAGE_IDS}
    )


@st.composite
def ham_folder(draw, jpegs: dict[str, bytes]) -> tuple[str, dict[str, bytes]]:
    cols = ["lesion_id", "image_id", "dx"]
    if draw(st.integers(0, 7)) == 0:
        cols = draw(st.lists(st.sampled_from([*cols, "dx_type", "x"]), max_size=4))
    text_cell = st.text(st.characters(blacklist_characters=',"\r\n'), max_size=6)
    rows = []
    for _ in range(draw(st.integers(0, 4))):
        value = {
            "lesion_id": draw(st.sampled_from(["HAM_1", "HAM_2", "", " "]) | text_cell),
            "image_id": draw(st.sampled_from([*IMAGE_IDS, "ISIC_9999999"]) | text_cell),
            "dx": draw(st.sampled_from(CLASSES) | st.sampled_from(["scc", "", "MEL"])),
            "dx_type": "histo",
            "x": draw(text_cell),
        }
        rows.append(",".join(value[c] for c in cols))
    meta = "\n".join([",".join(cols), *rows]) + "\n"
    images = {}
    for image_id, blob in jpegs.items():
        kind = draw(st.sampled_from(["real", "real", "cut", "bytes", "absent"]))
        if kind == "real":
            images[image_id] = blob
        elif kind == "cut":
            images[image_id] = cut(blob, draw(st.floats(0, 1, exclude_max=True)))
        elif kind == "bytes":
            images[image_id] = draw(st.binary(max_size=256))
    return meta, images


@fuzz(40)
@given(data=st.data())
def test_ham10000_folder_of_any_content(tmp_path, jpegs, data):
    meta, images = data.draw(ham_folder(jpegs))
    root = fresh_dir(tmp_path)
    (root / "HAM10000_metadata.csv").write_text(meta)
    (root / "part_1").mkdir()
    for image_id, blob in images.items():
        (root / "part_1" / f"{image_id}.jpg").write_bytes(blob)
    ds = load_or_refuse(str(root), cache_dir=root / "cache")
    if ds is not None:
        assert set(ds.image_id) <= set(images)


# --------------------------------------------------------------------------- data: specs


@fuzz(50)
@given(
    size=st.one_of(
        st.integers(-3, 40),
        st.sampled_from([0, 1, 3, MAX_SIZE + 1, 10**6, 10**12, -(10**9)]),
    ),
    source=st.sampled_from(["npz", "synthetic"]),
)
def test_absurd_image_sizes(seeds, tmp_path, size, source):
    """``size`` 0, 1, a million: DataError, before any memory is asked for."""
    spec = "synthetic:7"
    if source == "npz":
        spec = str(fresh_dir(tmp_path) / "seed.npz")
        Path(spec).write_bytes(seeds["npz"])
    ds = load_or_refuse(spec, size=size)
    assert (ds is not None) == (4 <= size <= MAX_SIZE)


@fuzz(50)
@given(
    n=st.one_of(st.integers(-3, 30), st.sampled_from([10**12, 10**15, 10**30])).map(str)
    | st.sampled_from(["", "1e3", "abc", " 8", "0x10", "٣٣"]),
    seed=st.one_of(st.none(), st.integers(-5, 5), st.sampled_from([2**64, -(2**70)])).map(
        lambda s: "" if s is None else f":{s}"
    )
    | st.sampled_from([":", ":x", ":1:2", "::"]),
)
def test_synthetic_specs(n, seed):
    """``synthetic:N:SEED`` with N absurd (a trillion images) or SEED negative: DataError."""
    load_or_refuse(f"synthetic:{n}{seed}", size=8)


@fuzz(60)
@given(spec=st.text(max_size=300) | st.sampled_from(["a" * 5000, "x/" * 3000, ",", " , ,"]))
def test_any_spec_string(tmp_path, monkeypatch, spec):
    """Any text as a SPEC (in an empty folder): DataError, even for names too long to stat."""
    stripped = spec.strip()
    assume(".." not in spec and not stripped.startswith(("/", "~", "synthetic", "s3:")))
    assume(not any(p.strip().startswith("/") for p in spec.split(",")))
    monkeypatch.chdir(fresh_dir(tmp_path))
    assert load_or_refuse(spec) is None


# --------------------------------------------------------------------------- checkpoints


class Checkpoint(tuple):
    """(.pt bytes, JSON config, state dict) of a tiny saved model, with a short repr."""

    def __repr__(self) -> str:
        return f"Checkpoint({len(self[0])} bytes, {self[1]['name']})"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Checkpoint:
    """A tiny saved model: the .pt bytes, its JSON config and its state dict."""
    torch.manual_seed(0)
    model = create_model("paper_cnn", width=2)
    path = save_model(model, tmp_path_factory.mktemp("ckpt") / "m.pt")
    meta = json.loads(path.with_name("m.pt.json").read_text())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return Checkpoint((path.read_bytes(), meta, state))


def write_checkpoint(root: Path, pt: bytes, meta: dict | str | bytes) -> Path:
    path = fresh_dir(root) / "m.pt"
    path.write_bytes(pt)
    side = path.with_name("m.pt.json")
    if isinstance(meta, bytes):
        side.write_bytes(meta)
    else:
        side.write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return path


def load_model_or_refuse(path: Path) -> torch.nn.Module | None:
    """``load_model(path)``, the model checked; None when it raised ValueError."""
    try:
        model, meta = load_model(path)
    except ValueError as exc:
        assert str(exc).strip()
        return None
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) <= MAX_PARAMS
    with torch.no_grad():
        out = model(torch.rand(2, 3, 28, 28))
    assert out.shape == (2, meta.get("num_classes", 7))
    return model


def test_seed_checkpoint_loads(checkpoint, tmp_path):
    pt, meta, _ = checkpoint
    assert load_model_or_refuse(write_checkpoint(tmp_path, pt, meta)) is not None


@fuzz(50)
@given(
    blob=st.one_of(
        st.binary(max_size=2048),
        st.binary(max_size=2048).map(lambda b: b"PK\x03\x04" + b),
        st.binary(max_size=512).map(lambda b: b"\x80\x02" + b),  # a pickle's opening
    )
)
def test_checkpoint_random_bytes(checkpoint, tmp_path, blob):
    _, meta, _ = checkpoint
    assert load_model_or_refuse(write_checkpoint(tmp_path, blob, meta)) is None


@fuzz(50)
@given(
    where=st.floats(0, 1, exclude_max=True),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6),
)
def test_checkpoint_truncated_or_corrupted(checkpoint, tmp_path, where, flips):
    pt, meta, _ = checkpoint
    blob = flip(cut(pt, where), flips) if where else flip(pt, flips)
    model = load_model_or_refuse(write_checkpoint(tmp_path, blob, meta))
    if where:  # a cut zip has lost its central directory
        assert model is None


class Touch:
    """Unpickled by plain ``pickle``, it creates ``marker``: proof of code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickles_are_refused_unrun(checkpoint, tmp_path):
    _, meta, _ = checkpoint
    marker = tmp_path / "pwned"
    for i, save in enumerate(
        (
            lambda obj, f: torch.save(obj, f),
            lambda obj, f: pickle.dump(obj, f, protocol=2),  # the legacy, non-zip layout
            lambda obj, f: torch.save({"fc.weight": obj}, f),
        )
    ):
        buf = io.BytesIO()
        save(Touch(marker), buf)
        assert load_model_or_refuse(write_checkpoint(tmp_path, buf.getvalue(), meta)) is None, i
    assert not marker.exists()


def plain(leaves: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        leaves,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
        max_leaves=8,
    )


JSONABLE = plain(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8))
PLAIN = plain(st.none() | st.booleans() | st.integers() | st.floats() | st.binary(max_size=8))


@fuzz(40)
@given(obj=PLAIN, protocol=st.integers(0, pickle.HIGHEST_PROTOCOL), zipped=st.booleans())
def test_checkpoint_pickling_any_plain_object(checkpoint, tmp_path, obj, protocol, zipped):
    """Plain objects (no tensors) pickled either way: never a state dict, always refused."""
    _, meta, _ = checkpoint
    buf = io.BytesIO()
    if zipped:
        torch.save(obj, buf, pickle_protocol=max(protocol, 2))
    else:
        pickle.dump(obj, buf, protocol=protocol)
    assert load_model_or_refuse(write_checkpoint(tmp_path, buf.getvalue(), meta)) is None


@st.composite
def mutated_state(draw, state: dict[str, torch.Tensor]):
    state = dict(state)
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(sorted(k for k in state if isinstance(k, str))))
        t = state[key]
        op = draw(
            st.sampled_from(
                ["drop", "rename", "add", "reshape", "dtype", "nonfinite", "value", "key"]
            )
        )
        if op == "drop":
            del state[key]
        elif op == "rename":
            state[key + draw(st.sampled_from(["_", ".x", "0"]))] = state.pop(key)
        elif op == "add":
            state[draw(st.text(max_size=10))] = torch.zeros(draw(st.integers(0, 3)))
        elif op == "reshape":
            state[key] = torch.zeros(draw(st.lists(st.integers(0, 4), max_size=4)))
        elif not isinstance(t, torch.Tensor):
            continue
        elif op == "dtype":
            dtypes = [torch.float16, torch.float64, torch.int64, torch.bool, torch.complex64]
            state[key] = t.to(draw(st.sampled_from(dtypes)))
        elif op == "nonfinite" and t.is_floating_point() and t.numel():
            t = t.clone()
            t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(NAN_INF)
            state[key] = t
        elif op == "value":
            state[key] = draw(st.sampled_from([None, 3, 2.5, "w", [1.0, 2.0], b"xx"]))
        elif op == "key":
            state[draw(st.sampled_from([1, None, (1, 2), 2.5]))] = state.pop(key)
        if not any(isinstance(k, str) for k in state):
            break
    return state


@fuzz(50)
@given(data=st.data())
def test_state_dict_with_wrong_keys_shapes_dtypes_and_values(checkpoint, tmp_path, data):
    pt, meta, state = checkpoint
    obj = data.draw(mutated_state(state))
    obj = data.draw(st.sampled_from([obj, list(obj.values()), {"state_dict": obj}]))
    buf = io.BytesIO()
    torch.save(obj, buf)
    load_model_or_refuse(write_checkpoint(tmp_path, buf.getvalue(), meta))


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10),
    st.sampled_from([10**4, 10**9, 2**63, 10**30, 10**400, -(10**9)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-2, 2), max_size=2),
)


@st.composite
def side_config(draw, meta: dict):
    """The model's JSON config with a few fields replaced by junk."""
    meta = json.loads(json.dumps(meta))
    for _ in range(draw(st.integers(1, 3))):
        field = draw(
            st.sampled_from(
                ["name", "num_classes", "kwargs", "width", "dropout", "pool", "extra", "drop"]
            )
        )
        if field == "drop":
            meta.pop(draw(st.sampled_from(["name", "num_classes", "kwargs"])), None)
        elif field in ("name", "num_classes", "kwargs"):
            meta[field] = draw(JUNK | st.just("paper_cnn"))
        elif isinstance(meta.get("kwargs"), dict):
            meta["kwargs"][field] = draw(JUNK)
    return meta


@fuzz(60)
@given(data=st.data())
def test_checkpoint_config_with_junk_fields(checkpoint, tmp_path, data):
    """width "abc", -5 or 10**9, num_classes inf, kwargs a list...: ValueError, and never
    a model too big for memory (``MAX_PARAMS``)."""
    pt, meta, _ = checkpoint
    side = data.draw(
        st.one_of(
            side_config(meta),
            st.text(max_size=200),
            st.binary(max_size=200),
            JSONABLE.map(json.dumps),
            st.sampled_from(["[" * 100_000, '{"a":' * 100_000, "", "null", "{}"]),
        )
    )
    load_model_or_refuse(write_checkpoint(tmp_path, pt, side))


@fuzz(60)
@given(
    name=st.just("paper_cnn") | JUNK,
    num_classes=JUNK,
    kwargs=st.dictionaries(st.sampled_from(["width", "dropout", "pool", "depth"]), JUNK),
)
def test_create_model_with_any_arguments(name, num_classes, kwargs):
    try:
        model = create_model(name, num_classes=num_classes, **kwargs)
    except ValueError as exc:
        assert str(exc).strip()
        return
    assert sum(p.numel() for p in model.parameters()) <= MAX_PARAMS


# --------------------------------------------------------------------------- config

KEYS = st.one_of(
    st.sampled_from(
        [
            "train.epochs",
            "train.lr",
            "train.batch_size",
            "train.weight_decay",
            "train.device",
            "attack.fgsm.eps",
            "attack.pgd.eps",
            "attack.pgd.steps",
            "attack.pgd.norm",
            "attack.mifgsm.alpha",
            "attack.batch_size",
            "data.size",
            "data.subset",
            "data.test_size",
            "data.spec",
            "model.width",
            "model.dropout",
            "model.name",
            "fractions",
            "methods",
            "seeds",
            "robust.eps",
            "robust.attacks",
            "robust.targeted",
            "robust.select_eps",
            "defences",
            "name",
            "train",
            "train.epochs.x",
            "nope",
            "a..b",
            ".",
            "train.",
        ]
    ),
    st.text(max_size=20),
)
RAW = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            ".nan",
            ".inf",
            "-.inf",
            "1e999",
            "-0.1",
            "-1",
            "0",
            "8/255",
            "1/0",
            "[0.2, 1.5]",
            "[]",
            "{}",
            "[{method: pgd-at, eps: 8/255}]",
            "[{method: trades, eps: .nan}]",
            "[[[",
            "{a: [",
            "!!python/object/apply:os.system ['true']",
            "&a [*a, *a]",
            "2020-13-01",
            "2020-01-01",
            "9" * 5000,
            "[" * 3000,
            "'unterminated",
            "~",
            "yes",
            "0x10",
            "1_000",
            "!!binary aGVsbG8=",
            "a\nb",
            "'a\nb'",
        ]
    ),
    JUNK.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
)


def config_or_refuse(make) -> ExperimentConfig | None:
    """A config that is sound (hashable, round-trips), or a ValueError (pydantic's included)
    that ``describe_error`` puts on one line, as the CLI prints it."""
    try:
        cfg = make()
    except ValueError as exc:
        line = describe_error(exc)
        assert line.strip() and len(line.splitlines()) == 1, line
        return None
    assert isinstance(cfg, ExperimentConfig)
    assert config_hash(ExperimentConfig.model_validate(cfg.model_dump())) == config_hash(cfg)
    return cfg


@fuzz(60)
@given(
    overrides=st.lists(
        st.builds(lambda k, v: f"{k}={v}", KEYS, RAW) | st.text(max_size=30), max_size=4
    )
)
def test_override_strings(overrides):
    """``--set`` strings of any content: unknown keys, YAML garbage, NaN, inf, huge ints,
    negative budgets, lists for scalars."""
    config_or_refuse(lambda: load_preset("quick", overrides))


VALUES = st.recursive(
    JUNK | st.sets(st.integers(0, 3), max_size=2) | st.binary(max_size=4) | st.dates(),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=2),
    max_leaves=6,
)


@fuzz(40)
@given(overrides=st.dictionaries(KEYS, VALUES, max_size=3))
def test_override_dicts(overrides):
    config_or_refuse(lambda: load_preset("quick", overrides))


@fuzz(40)
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.dictionaries(st.sampled_from(["name", "data", "train", "seeds", "x"]), VALUES).map(
            yaml.safe_dump
        ),
    )
)
def test_preset_files_of_any_content(tmp_path, text):
    path = fresh_dir(tmp_path) / "preset.yaml"
    path.write_text(text, encoding="utf-8")
    config_or_refuse(lambda: load_preset(str(path)))


# --------------------------------------------------------------------------- CLI


def run_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    """The real ``skinadv`` process (so a traceback would really be printed)."""
    env = {**os.environ, "SKINADV_CACHE_DIR": str(cwd / "cache")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.pop("SKINADV_DATA", None)
    return subprocess.run(
        [sys.executable, "-m", "skinadv.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def assert_one_error_line(code: int, stdout: str, stderr: str) -> None:
    assert code == 2, (code, stdout, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stdout + stderr


def test_cli_data_commands_on_random_and_truncated_npz(seeds, tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04" + np.random.default_rng(0).bytes(3000))
    proc = run_cli("data", "summary", "--data", junk, cwd=tmp_path)
    assert_one_error_line(proc.returncode, proc.stdout, proc.stderr)
    assert "not a readable .npz" in proc.stderr

    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(seeds["npz"][: len(seeds["npz"]) // 2])
    out = tmp_path / "out" / "prepared.npz"
    proc = run_cli("data", "prepare", "--data", trunc, "--out", out, cwd=tmp_path)
    assert_one_error_line(proc.returncode, proc.stdout, proc.stderr)
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no partial file


def test_cli_evaluate_refuses_a_malicious_pickle(checkpoint, tmp_path):
    _, meta, _ = checkpoint
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"fc.weight": Touch(marker)}, buf)
    model = write_checkpoint(tmp_path, buf.getvalue(), meta)
    proc = run_cli("evaluate", "--model", model, "--data", "synthetic:40", cwd=tmp_path)
    assert_one_error_line(proc.returncode, proc.stdout, proc.stderr)
    assert "not a loadable weights-only checkpoint" in proc.stderr and not marker.exists()


runner = CliRunner()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "NPZ", "--set", "train.epochs=abc", "--out", "OUT/m.pt"], "epochs"),
        (["train", "--data", "NPZ", "--set", "train.lr=.inf", "--out", "OUT/m.pt"], "finite"),
        (
            ["train", "--data", "NPZ", "--set", "model.width=" + "[" * 3000, "--out", "OUT/m.pt"],
            "not valid YAML",
        ),
        (["attack", "--model", "BIG", "--data", "NPZ", "--out", "OUT/adv.npz"], "parameters"),
        (["data", "summary", "--data", "a" * 5000], "File name too long"),
        (["data", "summary", "--data", "synthetic:20", "--size", "1000000"], "image size"),
        (["data", "prepare", "--data", "DERMA", "--out", "OUT/d.npz"], "but train's are"),
    ],
    ids=["epochs-abc", "lr-inf", "deep-yaml", "giant-width", "long-path", "size", "derma-parts"],
)
def test_cli_hostile_arguments(checkpoint, seeds, tmp_path, args, message):
    """In-process (fast): exit 2 with one line, the exception a SystemExit (anything else
    would be a traceback in a real run), and nothing written."""
    pt, meta, _ = checkpoint
    npz = tmp_path / "seed.npz"
    npz.write_bytes(seeds["npz"])
    big = write_checkpoint(tmp_path, pt, {**meta, "kwargs": {"width": 10**9}})
    derma = tmp_path / "dermamnist.npz"
    np.savez(
        derma,
        train_images=np.zeros((7, 28, 28, 3), np.uint8),
        train_labels=np.arange(7),
        val_images=np.zeros((7, 32, 32, 3), np.uint8),
        val_labels=np.arange(7),
    )
    out = tmp_path / "out"
    subs = {"NPZ": npz, "BIG": big, "DERMA": derma}
    argv = [str(subs.get(a, a)).replace("OUT", str(out)) for a in args]
    res = runner.invoke(app, argv)
    assert isinstance(res.exception, SystemExit), res.exception
    assert_one_error_line(res.exit_code, res.stdout, res.stderr)
    assert message in res.stderr
    assert not out.exists()
