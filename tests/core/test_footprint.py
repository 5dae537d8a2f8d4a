"""Batch sizes from a device's free memory (``choose_batch_size``, ``device_batch_size``),
with made-up memory figures: no GPU needed."""

from __future__ import annotations

import importlib

import pytest
import torch

from skinadv.attacks import craft
from skinadv.training.footprint import (
    ATTACK_BUFFERS,
    FLOAT_BYTES,
    MAX_AUTO_BATCH,
    activation_bytes_per_image,
    attack_bytes_per_image,
    choose_batch_size,
    device_batch_size,
)

MIB = 2**20
#: the module (the package's ``craft`` is the function)
craft_module = importlib.import_module("skinadv.attacks.craft")


def test_cpu_keeps_the_configured_size():
    for free in (0, 10**15):
        assert choose_batch_size(256, device_type="cpu", free_bytes=free, per_image_bytes=1) == 256


def test_cuda_fills_the_free_memory_with_headroom():
    # 1000 MiB free, 1 MiB per image: 90 % of it holds 900 images, whatever was configured
    for configured in (1, 256, 4096):
        n = choose_batch_size(
            configured, device_type="cuda", free_bytes=1000 * MIB, per_image_bytes=MIB
        )
        assert n == 900
    half = choose_batch_size(
        256, device_type="cuda", free_bytes=1000 * MIB, per_image_bytes=MIB, headroom=0.5
    )
    assert half == 500


def test_cuda_bounds():
    big = choose_batch_size(256, device_type="cuda", free_bytes=10**15, per_image_bytes=1000)
    assert big == MAX_AUTO_BATCH
    assert choose_batch_size(256, device_type="cuda", free_bytes=100, per_image_bytes=MIB) == 1
    with pytest.raises(ValueError, match="per-image bytes"):
        choose_batch_size(256, device_type="cuda", free_bytes=MIB, per_image_bytes=0)
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        choose_batch_size(0, device_type="cpu", free_bytes=MIB, per_image_bytes=1)


def test_device_batch_size_from_the_model(small_model):
    acts = activation_bytes_per_image(small_model, 28)
    per_attack = attack_bytes_per_image(small_model, 28)
    assert per_attack == 2 * acts + ATTACK_BUFFERS * 3 * 28 * 28 * FLOAT_BYTES
    assert attack_bytes_per_image(small_model, 28, backward=False) == acts
    free = 64 * MIB
    n = device_batch_size(small_model, "cuda", 256, free_bytes=free)  # no GPU touched
    assert n == int(free * 0.9 // per_attack)
    m = device_batch_size(small_model, "cuda", 256, free_bytes=free, backward=False)
    assert m > n  # evaluation keeps no backward state: more images fit
    assert device_batch_size(small_model, "cpu", 256) == 256
    assert not small_model.training  # the probe left the mode alone


def test_craft_fit_memory_uses_the_chosen_size(small_model, rand_batch, monkeypatch):
    x, y = rand_batch
    asked = []

    def fake(model, device, configured, **kw):
        asked.append((torch.device(device).type, configured, kw["size"]))
        return 5

    monkeypatch.setattr(craft_module, "device_batch_size", fake)
    done = []
    craft(
        small_model,
        x,
        y,
        "fgsm",
        eps=0.1,
        batch_size=256,
        fit_memory=True,
        progress=lambda d, t: done.append(d),
    )
    assert asked == [("cpu", 256, 28)] and done == [5, 10, 12]
