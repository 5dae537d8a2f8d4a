"""``skinadv bench`` on a tiny real setting: the JSON's shape, the three libraries' robust
accuracies agree for the same attack, the grid's gradient evaluations are counted right, and
bad input gives one line and exit code 2 with nothing written. No timed assertions."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from skinadv.bench import LIBRARIES, grid_cost, pool_evals, run_bench, tiny, to_markdown
from skinadv.cli import app
from skinadv.config import AttackConfig, load_preset
from skinadv.training import adversarial_pool

runner = CliRunner()
N_IMAGES = 96
#: robust accuracies of the same attack in two libraries, in points: the random starts
#: differ (each library draws its own), so a few of 96 images may fall either way; an attack
#: that ignored eps or the gradient would miss by tens of points
AGREE_POINTS = 8.0


@pytest.fixture(scope="module")
def result(ham_npz):
    return run_bench(tiny(str(ham_npz), n_images=N_IMAGES))


def test_json_structure(result):
    assert set(result) >= {
        "settings",
        "machine",
        "attacks",
        "training",
        "grid_cost",
        "ray_scaling",
        "orchestration",
    }
    json.dumps(result)  # JSON-ready as it is
    att = result["attacks"]
    assert att["n_images"] == N_IMAGES
    assert [a["label"] for a in att["attacks"]] == ["FGSM", "PGD-5", "APGD-CE-5"]
    for a in att["attacks"]:
        assert set(a["results"]) == set(LIBRARIES)
        for lib, r in a["results"].items():
            assert (
                r["batch_size"] in (24, 48) and r["batch_size"] == att["batch_sizes"][lib]["chosen"]
            )
            assert r["images_per_s"] > 0 and 0 <= r["robust_accuracy"] <= 1
        ours = a["results"]["skinadv"]
        for lib in ("torchattacks", "art"):
            theirs = a["results"][lib]
            assert a["speedup"][lib] == pytest.approx(ours["images_per_s"] / theirs["images_per_s"])
            gap = 100 * (ours["robust_accuracy"] - theirs["robust_accuracy"])
            assert a["robust_gap_points"][lib] == pytest.approx(gap)
    for name in ("clean", "static_adversarial", "pgd_at", "crafting"):
        assert result["training"][name]["images_per_s"] > 0
    tr = result["training"]
    n = tr["settings"]["n_train"]
    assert tr["clean"]["grad_evals"] == n and tr["pgd_at"]["grad_evals"] == 3 * n  # PGD-2 + 1
    assert tr["static_adversarial"]["images"] == n + round(0.8 * n)
    md = to_markdown(result)
    assert "| PGD-5 |" in md and "skinadv / art" in md and "Nested / separate" in md
    # the Ray part is opt-in (skinadv bench --ray; tests/flows/test_bench_ray.py)
    assert result["ray_scaling"] == result["orchestration"] == {"status": "not run (pass --ray)"}
    assert md.count("not run (pass --ray)") == 2


def test_libraries_agree_on_robust_accuracy(result):
    clean = result["attacks"]["clean_accuracy"]
    for a in result["attacks"]["attacks"]:
        robust = {lib: r["robust_accuracy"] for lib, r in a["results"].items()}
        assert robust["skinadv"] < clean - 0.1, (a["label"], robust, clean)  # the attack bites
        for lib in ("torchattacks", "art"):
            assert abs(a["robust_gap_points"][lib]) <= AGREE_POINTS, (a["label"], robust)


def test_grid_cost_by_hand():
    g = grid_cost(["fgsm", "pgd", "mix"], [0.2, 0.4], n_train=10, pgd_steps=3)
    # nested: one pool of 4 rows per method, but mix's rows are taken from the fgsm and pgd
    # pools (free); separate: 2 + 4 rows per method; mix rows alternate
    assert g["mix_from_pools"] is True
    assert g["per_method"]["fgsm"] == {"nested": 4, "crafted": 4, "separate": 6}
    assert g["per_method"]["pgd"] == {"nested": 12, "crafted": 12, "separate": 18}
    assert g["per_method"]["mix"] == {
        "nested": 0,
        "crafted": 2 + 2 * 3,
        "separate": (1 + 3) + (2 + 2 * 3),
    }
    assert (g["nested_evals"], g["separate_evals"]) == (16, 36)
    assert g["ratio"] == pytest.approx(16 / 36)
    assert (g["nested_evals_mix_crafted"], g["ratio_mix_crafted"]) == (24, pytest.approx(24 / 36))
    assert grid_cost(["pgd"], [0.5], n_train=10, pgd_steps=3, seeds=3)["nested_evals"] == 45


@pytest.mark.parametrize("methods", [["mix"], ["fgsm", "mix"], ["pgd", "mix"]])
def test_grid_cost_crafts_mix_without_both_sources(methods):
    """Without both an fgsm and a pgd pool to take its rows from, mix is crafted."""
    g = grid_cost(methods, [0.2, 0.4], n_train=10, pgd_steps=3)
    assert g["mix_from_pools"] is False
    assert g["per_method"]["mix"]["nested"] == 2 + 2 * 3
    assert (
        g["nested_evals"] == g["nested_evals_mix_crafted"] and g["ratio"] == g["ratio_mix_crafted"]
    )


def test_grid_cost_of_the_quick_preset():
    cfg = load_preset("quick")
    n, steps = 10_000, cfg.attack.pgd.steps
    g = grid_cost(cfg.methods, cfg.fractions, n_train=n, pgd_steps=steps)
    assert sorted(cfg.methods) == ["fgsm", "mix", "pgd"] and g["cells"] == 12
    # by hand: FGSM costs 1 per row, PGD `steps`, mix half each; nested crafts fgsm and pgd
    # once for the largest fraction (mix is free), separate every (method, fraction) alone
    per_row = 1 + steps + (1 + steps) / 2  # fgsm + pgd + mix, for an even row count
    separate = sum(round(f * n) for f in cfg.fractions) * per_row
    nested = round(max(cfg.fractions) * n) * (1 + steps)
    assert g["separate_evals"] == separate and g["nested_evals"] == nested
    assert g["ratio"] == pytest.approx(nested / separate)
    # fractions 0.2 ... 0.8: 0.8 (1 + steps) / (2.0 * 1.5 (1 + steps)) = 0.267 for any steps
    assert g["ratio"] == pytest.approx(0.8 / 3.0) and g["ratio"] <= 0.35
    # crafting mix again, every method costs 0.8 / 2.0 of its separate pools
    assert g["ratio_mix_crafted"] == pytest.approx(0.8 / 2.0)


def test_grid_cost_in_the_markdown(result):
    md = to_markdown(result)
    g = result["grid_cost"]
    assert f"**{g['ratio']:.3f}**" in md
    if g["mix_from_pools"]:
        assert f"ratio {g['ratio_mix_crafted']:.3f}" in md


def test_mix_count_matches_the_pool(tiny_trained, tiny_split):
    """pool_evals('mix') counts the rows adversarial_pool really crafts with each attack."""
    x, y = tiny_split[0].to_float()
    attack = AttackConfig(pgd={"eps": 0.03, "alpha": 0.01, "steps": 2})
    pool = adversarial_pool(
        tiny_trained.model, x[:21], y[:21], method="mix", fraction=1.0, attack_cfg=attack
    )
    kinds = np.asarray(pool.kinds)
    assert pool_evals("mix", len(pool), 2) == (kinds == "fgsm").sum() + 2 * (kinds == "pgd").sum()
    with pytest.raises(ValueError, match="unknown method"):
        pool_evals("bim", 3, 2)


def bench(*args):
    return runner.invoke(app, ["bench", *map(str, args)])


def test_cli_writes_json_and_markdown(ham_npz, tmp_path, monkeypatch):
    monkeypatch.setattr("skinadv.bench.quick", lambda data, device: tiny(data, device=device))
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    res = bench("--quick", "--data", ham_npz, "--json", out, "--markdown", md)
    assert res.exit_code == 0, res.output
    payload = json.loads(out.read_text())
    assert payload["settings"]["n_images"] == 48 and payload["machine"]["device"] == "cpu"
    assert md.read_text().startswith("# skinadv bench") and "| FGSM |" in res.stdout
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--libraries", "skinadv,foolbox"], "--libraries must name skinadv"),
        (["--json", "{tmp}/no/such/folder/b.json"], "does not exist"),
        (["--json", "{tmp}"], "is a folder, not a file"),
        (["--markdown", "{tmp}/missing/b.md"], "does not exist"),
        (["--data", "synthetic:100"], "needs the real data"),
        (["--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_cli_bad_input(args, message, ham_npz, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    data = [] if "--data" in args else ["--data", ham_npz]
    res = bench("--quick", *data, *args)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cli_cuda_without_cuda(ham_npz):
    res = bench("--quick", "--data", ham_npz, "--device", "cuda")
    assert res.exit_code == 2 and "CUDA is not available" in res.output


def test_cli_missing_bench_extra(ham_npz, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "art", None)  # import art -> ImportError
    res = bench("--quick", "--data", ham_npz, "--json", tmp_path / "b.json")
    assert res.exit_code == 2
    assert "adversarial-robustness-toolbox" in res.output and "pip install" in res.output
    assert not (tmp_path / "b.json").exists()


def test_bf16_column_and_headline(tiny_trained, tiny_test):
    """The skinadv-bf16 column: its own results, its ratios and gaps (to ART and to float32
    skinadv), and a headline naming the variant it uses."""
    from skinadv.bench.attacks import VARIANTS, AttackSpec, attack_throughput
    from skinadv.bench.markdown import attack_table

    model = tiny_trained.model.eval()
    x, y = tiny_test[0][:48], tiny_test[1][:48]
    eps = 8 / 255
    specs = [AttackSpec("PGD-3", "pgd", eps, eps / 2, 3)]
    out = attack_throughput(
        model, x, y, specs, libraries=("skinadv", "art"), batch_sizes=(48,), repeats=1, bf16=True
    )
    assert list(out["batch_sizes"]) == ["skinadv", "skinadv-bf16", "art"]
    a = out["attacks"][0]
    res = a["results"]
    assert set(a["variants"]) == {"skinadv", "skinadv-bf16"}
    bf = a["variants"]["skinadv-bf16"]
    assert bf["speedup"]["art"] == pytest.approx(
        res["skinadv-bf16"]["images_per_s"] / res["art"]["images_per_s"]
    )
    to_fp32 = 100 * (res["skinadv-bf16"]["robust_accuracy"] - res["skinadv"]["robust_accuracy"])
    assert bf["robust_gap_points"]["skinadv"] == pytest.approx(to_fp32)
    assert "skinadv-bf16" not in a["speedup"]  # float32 skinadv's ratios: other libraries only
    head = out["headline"]
    assert head["attack"] == "PGD-3" and head["versus"] == "art" and head["variant"] in VARIANTS
    assert head["variant"] in head["text"] and "x, robust accuracy" in head["text"]
    table = "\n".join(attack_table(out))
    assert "skinadv-bf16 / art" in table and "skinadv-bf16 / skinadv" in table


def _fake_attack(fp32: tuple[float, float], bf16: tuple[float, float], art: tuple[float, float]):
    """An attack entry with (images/s, robust accuracy) per column, as attack_throughput
    makes it."""
    results = {
        lib: {"images_per_s": r, "robust_accuracy": acc}
        for lib, (r, acc) in {"skinadv": fp32, "skinadv-bf16": bf16, "art": art}.items()
    }
    variants = {
        v: {
            "speedup": {"art": results[v]["images_per_s"] / art[0]},
            "robust_gap_points": {"art": 100 * (results[v]["robust_accuracy"] - art[1])},
        }
        for v in ("skinadv", "skinadv-bf16")
    }
    return {"label": "PGD-50", "kind": "pgd", "steps": 50, "results": results, "variants": variants}


def test_headline_takes_bf16_only_within_tolerance():
    from skinadv.bench.attacks import headline

    pgd10 = {**_fake_attack((900, 0.4), (2000, 0.4), (100, 0.4)), "label": "PGD-10", "steps": 10}
    close = _fake_attack((300, 0.301), (600, 0.299), (100, 0.299))
    head = headline([pgd10, close])
    assert head["attack"] == "PGD-50" and head["variant"] == "skinadv-bf16"
    assert head["speedup"] == pytest.approx(6.0)
    assert head["gap_to_fp32_points"] == pytest.approx(-0.2)
    assert "skinadv-bf16 (bfloat16 autocast) / art = 6.00x" in head["text"]
    assert "float32 skinadv 3.00x" in head["text"]
    far = _fake_attack((300, 0.301), (600, 0.28), (100, 0.299))  # bf16 2.1 points off
    head = headline([far])
    assert head["variant"] == "skinadv" and head["speedup"] == pytest.approx(3.0)
    slow = _fake_attack((300, 0.301), (200, 0.301), (100, 0.299))  # bf16 slower
    assert headline([slow])["variant"] == "skinadv"
