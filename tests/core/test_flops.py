"""Training FLOPs and this CPU's peaks (skinadv.bench.flops), and the report's "Training
cost" table (skinadv.report.cost): counts equal the hand formulas, the arithmetic is the
stated one, no timing is asserted."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from test_report import report, scored
from torch import nn

from skinadv.attacks.craft import bf16_supported
from skinadv.bench.flops import (
    attack_flops_per_image,
    bf16_kind,
    cpu_info,
    measured_peak,
    nominal_peaks,
    train_cost_fields,
    training_cost,
    training_flops_per_image,
)
from skinadv.config import ExperimentConfig, TrainConfig
from skinadv.models import paper_cnn
from skinadv.report import save_report, to_markdown
from skinadv.report.cost import COLUMNS, cost_table
from skinadv.training import fit


@pytest.mark.parametrize("n_in, n_out", [(10, 5), (64, 7)])
def test_linear_layer_counts_the_hand_formula(n_in, n_out):
    forward = 2 * n_in * n_out  # a multiply-add per weight; the bias add is not a matmul
    layer = nn.Linear(n_in, n_out)
    assert training_flops_per_image(layer, (n_in,), input_grad=True) == 3 * forward
    # training skips the input's gradient: forward + the weight gradient only
    assert training_flops_per_image(layer, (n_in,)) == 2 * forward
    assert attack_flops_per_image(layer, (n_in,)) == 2 * forward  # forward + input gradient


def test_conv_layer_counts_the_hand_formula():
    c_in, c_out, k, h = 3, 8, 3, 14
    forward = 2 * c_in * c_out * k * k * h * h  # padding 1, stride 1: output h x h
    conv = nn.Conv2d(c_in, c_out, k, padding=1, bias=False)
    assert training_flops_per_image(conv, (c_in, h, h), input_grad=True) == 3 * forward
    assert training_flops_per_image(conv, (c_in, h, h)) == 2 * forward


def test_paper_cnn_count_and_model_untouched():
    torch.manual_seed(0)
    model = paper_cnn(width=4).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train = training_flops_per_image(model)
    with_input = training_flops_per_image(model, input_grad=True)
    # the only difference: the first conv's input gradient (3 -> 4 channels, 3x3, 28x28)
    assert with_input - train == 2 * 3 * 4 * 9 * 28 * 28
    assert 0 < attack_flops_per_image(model) < train
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_training_cost_arithmetic():
    peaks = {"fp32": 50e9, "bf16": 200e9}
    c = training_cost(2000.0, 5e6, "bf16", peaks=peaks)
    assert c["gflops_per_thread"] == pytest.approx(10.0)  # 2000 x 5 MFLOP
    assert c["share_fp32_peak"] == pytest.approx(0.2)
    assert c["share_bf16_peak"] == pytest.approx(0.05)
    assert c["share_of_own_peak"] == c["share_bf16_peak"]
    assert (c["peak_fp32_gflops"], c["peak_bf16_gflops"]) == (50.0, 200.0)
    assert training_cost(2000.0, 5e6, "fp32", peaks=peaks)["share_of_own_peak"] == 0.2
    with pytest.raises(ValueError, match="fp16"):
        training_cost(1.0, 1.0, "fp16", peaks=peaks)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", torch.float32])
def test_measured_peak_is_positive_and_cached(dtype):
    threads = torch.get_num_threads()
    peak = measured_peak(dtype, size=128, repeats=1)
    assert math.isfinite(peak) and peak > 0
    assert measured_peak(dtype, size=128, repeats=1) == peak  # cached per process
    assert torch.get_num_threads() == threads  # restored


def _cpuinfo(tmp_path, vendor: str, family: int, flags: str, mhz: float = 2000.0):
    p = tmp_path / "cpuinfo"
    p.write_text(
        f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\n"
        f"model name\t: test cpu\ncpu MHz\t\t: {mhz}\nflags\t\t: fpu {flags}\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    return cpu_info(p)


def test_nominal_peaks_from_the_cpu_flags(tmp_path):
    zen4 = nominal_peaks(_cpuinfo(tmp_path, "AuthenticAMD", 25, "fma avx512f avx512_bf16"))
    assert (zen4["fp32_per_cycle"], zen4["bf16_per_cycle"]) == (32, 64)
    assert zen4["fp32"] == pytest.approx(64e9) and zen4["bf16_kind"] == "AVX512-BF16"
    spr = nominal_peaks(_cpuinfo(tmp_path, "GenuineIntel", 6, "fma avx512f amx_bf16"))
    assert (spr["fp32_per_cycle"], spr["bf16_per_cycle"]) == (64, 2048)
    old = nominal_peaks(_cpuinfo(tmp_path, "GenuineIntel", 6, "fma avx2"))
    assert old["bf16"] is None and bf16_kind(set()) == "emulated"
    assert math.isnan(cpu_info(tmp_path / "missing")["ghz"])


def test_train_cost_fields_of_a_real_fit():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(24, 3, 12, 12)).astype(np.float32)
    y = rng.integers(0, 7, 24)
    cfg = ExperimentConfig.model_validate(
        {"data": {"size": 12}, "train": {"epochs": 2, "batch_size": 8, "precision": "bf16"}}
    )
    trained = fit(
        "paper_cnn", (x, y), TrainConfig(epochs=2, batch_size=8), model_kwargs={"width": 2}
    )
    fields = train_cost_fields(trained, cfg)
    # bf16 asked for; recorded as run, and fit falls back to fp32 where it is not native
    assert fields["images"] == 48 and fields["bf16"] == float(bf16_supported("cpu"))
    assert fields["threads"] == torch.get_num_threads()
    assert fields["flops_per_image"] == training_flops_per_image(trained.model, (3, 12, 12))
    assert fields["peak_fp32_flops"] > 0 and fields["peak_bf16_flops"] > 0


def _with_cost(r, *, seconds, images, evals, forwards=0.0, bf16=0.0):
    cost = {
        "seconds": seconds,
        "grad_evals": evals,
        "forwards": forwards,
        "guard_evals": 0.0,
        "images": images,
        "threads": 1.0,
        "flops_per_image": 6e6,
        "attack_flops_per_image": 4e6,
        "bf16": bf16,
        "peak_fp32_flops": 40e9,
        "peak_bf16_flops": 100e9,
    }
    return dataclasses.replace(r, cost=cost)


def test_cost_table_per_kind_of_model(tmp_path):
    results = [
        _with_cost(scored("vanilla", s), seconds=10.0, images=30_000, evals=30_000)
        for s in range(2)
    ]
    results += [
        _with_cost(scored(c), seconds=20.0, images=40_000, evals=40_000)
        for c in ("fgsm@0.2", "pgd@0.8")
    ]
    # PGD-AT with 5 steps: 6 gradient evaluations per image, 5 of them attack steps
    results.append(
        _with_cost(scored("pgd-at@2_255"), seconds=60.0, images=30_000, evals=180_000, bf16=1.0)
    )
    results.append(scored("trades@2_255"))  # no training time recorded: left out
    t = cost_table(results).set_index("cell")
    assert list(t.index) == ["vanilla", "static cells", "pgd-at@2_255"]
    assert list(t.reset_index().columns) == list(COLUMNS)
    assert t.loc["vanilla", "images_per_s_per_thread"] == pytest.approx(3000.0)
    assert t.loc["vanilla", "gflops_per_thread"] == pytest.approx(18.0)  # 3000 x 6 MFLOP
    assert t.loc["vanilla", "share_fp32_peak"] == pytest.approx(45.0)
    assert t.loc["static cells", "models"] == 2 and t.loc["static cells", "precision"] == "fp32"
    at = t.loc["pgd-at@2_255"]
    assert at["images_per_s_per_thread"] == pytest.approx(500.0)
    assert at["grad_evals_per_image"] == pytest.approx(6.0)
    # (30k x 6 MFLOP + 150k attack steps x 4 MFLOP) / 60 s
    assert at["gflops_per_thread"] == pytest.approx(13.0)
    assert at["share_bf16_peak"] == pytest.approx(13.0) and at["precision"] == "bf16"
    rep = report(results)
    assert "training_cost" in rep.tables
    md = to_markdown(rep)
    assert "## Training cost" in md and "Training images/s per thread" in md
    assert "fp32 40.0 GFLOP/s, bf16 100.0 GFLOP/s" in md and "3,000" in md
    assert (save_report(rep, tmp_path)["training_cost.csv"]).is_file()


def test_cost_table_of_older_records():
    """Records from before the FLOP fields: images/s where the data was fixed, dashes for
    the rest, no crash."""
    old = [
        dataclasses.replace(scored("vanilla"), cost={"seconds": 10.0, "grad_evals": 2e4}),
        dataclasses.replace(scored("pgd-at@2_255"), cost={"seconds": 30.0, "grad_evals": 6e4}),
    ]
    t = cost_table(old).set_index("cell")
    assert t.loc["vanilla", "images_per_s_per_thread"] == pytest.approx(2000.0)
    assert math.isnan(t.loc["vanilla", "gflops_per_thread"])
    assert math.isnan(t.loc["pgd-at@2_255", "images_per_s_per_thread"])
    assert "no shares" in report(old).table_notes["training_cost"]
    assert cost_table([scored("vanilla")]).empty


def test_counting_flops_installs_no_global_module_hooks():
    """The grid's thread runner trains cells side by side: counting FLOPs in one thread must
    not hook every module of every thread (torch's FlopCounterMode enters a ModuleTracker,
    whose forward hooks are global)."""
    from torch.nn.modules import module as module_mod

    from skinadv.bench import flops

    seen = []
    real_grad = torch.Tensor.backward

    def spy(self, *a, **kw):  # inside the counter: what global hooks are installed now
        seen.append(
            len(module_mod._global_forward_pre_hooks) + len(module_mod._global_forward_hooks)
        )
        return real_grad(self, *a, **kw)

    before = seen[:]
    torch.Tensor.backward = spy
    try:
        flops.training_flops_per_image(torch.nn.Linear(4, 3), (4,))
    finally:
        torch.Tensor.backward = real_grad
    assert before == [] and seen == [0]
