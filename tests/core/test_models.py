"""Model registry and weights-only checkpoints."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from skinadv.data import CLASSES
from skinadv.models import MODELS, create_model, load_model, read_model_config, save_model


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("size", [28, 32, 64])
def test_registered_models_give_logits_for_square_inputs(name, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, width=4).eval()
    x = torch.rand(3, 3, size, size)
    out = model(x)
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out.softmax(-1).sum(-1), out.sum(-1))  # logits, not probabilities


def test_paper_cnn_layout():
    model = create_model("paper_cnn", width=8)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    fcs = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 5 and len(bns) == 5 and len(fcs) == 1
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())


def _relu_before_pool(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy in the textbook order conv-BN-ReLU-pool (the model pools first)."""
    ref = copy.deepcopy(model)
    layers = list(ref.features)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], torch.nn.MaxPool2d) and isinstance(layers[i + 1], torch.nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    ref.features = torch.nn.Sequential(*layers)
    return ref


def test_paper_cnn_pools_before_relu_and_computes_the_textbook_order_bit_for_bit():
    torch.manual_seed(3)
    model = create_model("paper_cnn", width=6)
    kinds = [type(m).__name__ for m in model.features]
    assert kinds.count("MaxPool2d") == 3
    assert all(kinds[i + 1] == "ReLU" for i, k in enumerate(kinds) if k == "MaxPool2d")
    ref = _relu_before_pool(model)
    assert [type(m).__name__ for m in ref.features] != kinds
    # a checkpoint of either order loads into the other: no key moved
    assert list(ref.state_dict()) == list(model.state_dict())
    x = torch.randn(32, 3, 28, 28)  # negative and positive pre-activations alike
    y = torch.randint(0, 7, (32,))
    for m in (model, ref):  # one training step each: BatchNorm in train mode, dropout off
        m.dropout.p = 0.0
        torch.nn.functional.cross_entropy(m(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name
    model.eval(), ref.eval()
    grads = []
    for m in (model, ref):
        xi = x.clone().requires_grad_(True)
        out = m(xi)
        out.sum().backward()
        grads.append((out.detach(), xi.grad))
    assert torch.equal(grads[0][0], grads[1][0])
    assert torch.equal(grads[0][1], grads[1][1])  # the input gradient an attack follows


def test_unknown_model_lists_names():
    with pytest.raises(ValueError, match="unknown model 'vgg'; available: paper_cnn"):
        create_model("vgg")
    with pytest.raises(ValueError, match="bad arguments"):
        create_model("paper_cnn", depth=3)


def test_save_load_round_trip(tmp_path, monkeypatch):
    torch.manual_seed(1)
    model = create_model("paper_cnn", width=6, dropout=0.1).eval()
    path = save_model(model, tmp_path / "sub" / "m.pt", {"image_size": 28, "note": "x"})
    assert path.is_file() and (tmp_path / "sub" / "m.pt.json").is_file()
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["m.pt", "m.pt.json"]
    meta = json.loads((tmp_path / "sub" / "m.pt.json").read_text())
    assert meta["name"] == "paper_cnn" and meta["kwargs"] == {"width": 6, "dropout": 0.1}
    assert meta["class_names"] == list(CLASSES) and meta["note"] == "x"

    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded, cfg = load_model(path, "cpu")
    assert seen.get("weights_only") is True
    assert cfg == read_model_config(path) and not loaded.training
    x = torch.rand(4, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_pickled_objects_are_refused(tmp_path):
    model = create_model("paper_cnn", width=4)
    path = save_model(model, tmp_path / "m.pt")
    # replace the weights by a pickle of an arbitrary object: weights_only must refuse it
    torch.save({"evil": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(ValueError, match="not a loadable weights-only checkpoint"):
        load_model(path)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no such model checkpoint"):
        load_model(tmp_path / "missing.pt")
    model = create_model("paper_cnn", width=4)
    path = save_model(model, tmp_path / "m.pt")
    (tmp_path / "m.pt.json").unlink()
    with pytest.raises(ValueError, match="m.pt.json is missing"):
        load_model(path)
    path = save_model(model, tmp_path / "w.pt")
    meta = json.loads((tmp_path / "w.pt.json").read_text())
    meta["kwargs"]["width"] = 8
    (tmp_path / "w.pt.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="weights do not fit"):
        load_model(path)


def test_save_needs_a_name_and_json(tmp_path):
    plain = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="needs the model 'name'"):
        save_model(plain, tmp_path / "p.pt")
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        save_model(create_model("paper_cnn", width=4), tmp_path / "q.pt", {"bad": object()})
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_resnet18_for_small_images_is_medmnists(tmp_path):
    """ResNet-18 with a 3x3 stem and no max-pool: 11.2 M parameters at width 64 (as
    torchvision's ResNet-18 less its 7x7 stem and 1000-class head), logits at 28 and 64,
    about 0.46 G multiply-adds forward at 28, saved and loaded like the paper CNN."""
    import torch

    from skinadv.bench.flops import training_flops_per_image
    from skinadv.models import create_model, load_model, save_model

    torch.manual_seed(0)
    model = create_model("resnet18", width=64).eval()
    n = sum(p.numel() for p in model.parameters())
    assert 11.1e6 < n < 11.3e6
    for size in (28, 64):
        assert model(torch.rand(2, 3, size, size)).shape == (2, 7)
    small = create_model("resnet18", width=8, dropout=0.1).eval()
    # training FLOPs (forward + backward = 3x forward, 2 per multiply-add) over width 64's
    flops = training_flops_per_image(model, (3, 28, 28), batch=1) / 6
    assert 0.4e9 < flops < 0.5e9
    path = save_model(small, tmp_path / "r.pt")
    loaded, meta = load_model(path)
    assert meta["name"] == "resnet18"
    x = torch.rand(3, 3, 28, 28)
    assert torch.equal(loaded(x), small(x))
    with pytest.raises(ValueError, match="width"):
        create_model("resnet18", width=0)
