"""Bring-your-own classifiers in the core: the loaders (skinadv.models.sources), the adapters
(skinadv.models.adapters) and the checks (skinadv.models.checks), on a model class defined
here only (not in skinadv's registry), saved every way skinadv accepts. Synthetic tensors:
what these tests claim is about formats and wrappers, not about HAM10000."""

from __future__ import annotations

import copy
import inspect
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skinadv.attacks import craft
from skinadv.commands.model_sources import check, download, parse_mlflow_uri
from skinadv.data import CLASSES, HMNIST_CLASSES
from skinadv.models import create_model, save_model
from skinadv.models.adapters import ClassOrder, Normalize, adapt, parse_classes, parse_normalize
from skinadv.models.checks import check_classifier
from skinadv.models.sources import ExportedProgram, load_classifier, source_kind

FACTORY_MODULE = "skinadv_byo_unit"


class ByoNet(nn.Module):
    """A foreign classifier: conv + BN + linear over (N, 3, 28, 28), ``n_out`` logits."""

    def __init__(self, n_out: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 7 * 7, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(torch.relu(self.bn(self.conv(x))), 4)
        return self.fc(x.flatten(1))


def make_byo() -> ByoNet:
    torch.manual_seed(0)
    net = ByoNet().eval()
    with torch.no_grad():  # BN statistics that do something in eval mode
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


def write_factory_module(folder, name: str) -> None:
    """A module ``name`` in ``folder`` holding ``ByoNet`` (its source copied from this file)
    and ``make()``, an untrained ``ByoNet``: the code a ``--weights`` state dict fits."""
    text = "import torch\nimport torch.nn.functional as F\nfrom torch import nn\n\n\n"
    text += inspect.getsource(ByoNet) + "\n\ndef make():\n    return ByoNet()\n"
    (folder / f"{name}.py").write_text(text)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``make_byo()`` saved as TorchScript, an exported program, a state dict, a pickle."""
    d = tmp_path_factory.mktemp("byo")
    net = make_byo()
    x = torch.rand(2, 3, 28, 28)
    torch.jit.save(torch.jit.script(net), d / "net.ts")
    dyn = ({0: torch.export.Dim("batch")},)
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=dyn), d / "net.pt2")
    torch.export.save(torch.export.export(net, (x,)), d / "static.pt2")
    torch.save(net.state_dict(), d / "state.pt")
    torch.save(net, d / "pickled.pt")
    write_factory_module(d, FACTORY_MODULE)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(d))
        yield d, net
    sys.modules.pop(FACTORY_MODULE, None)


def test_source_kind_reads_contents_not_names(saved, tmp_path):
    d, _ = saved
    kinds = {f: source_kind(d / f) for f in ("net.ts", "net.pt2", "state.pt", "pickled.pt")}
    assert kinds == {
        "net.ts": "torchscript",
        "net.pt2": "export",
        "state.pt": "torch_save",
        "pickled.pt": "torch_save",
    }
    (tmp_path / "renamed.bin").write_bytes((d / "net.pt2").read_bytes())
    assert source_kind(tmp_path / "renamed.bin") == "export"
    assert source_kind(f"{FACTORY_MODULE}:make") == "factory"
    assert source_kind(d) == "folder"
    with pytest.raises(ValueError, match="no such model checkpoint"):
        source_kind(tmp_path / "missing.pt")


def test_three_forms_give_the_same_logits_and_attacks(saved):
    """TorchScript, exported program and factory + state dict: bit-identical logits and
    PGD examples (craft's BatchNorm folding and channels-last copy included)."""
    d, net = saved
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(9, 3, 28, 28, generator=g), torch.randint(0, 7, (9,), generator=g)
    loaded = {
        "torchscript": load_classifier(d / "net.ts"),
        "export": load_classifier(d / "net.pt2"),
        "factory": load_classifier(f"{FACTORY_MODULE}:make", weights=d / "state.pt"),
    }
    kw = {"batch_size": 4, "seed": 0, "eps": 8 / 255, "alpha": 2 / 255, "steps": 3}
    with torch.no_grad():
        ref = net(x)
    ref_adv = craft(net, x, y, "pgd", **kw)
    for kind, (model, meta) in loaded.items():
        assert meta["source"] == kind and not model.training
        assert not any(p.requires_grad for p in model.parameters())  # input gradients only
        with torch.no_grad():
            assert torch.equal(model(x), ref), kind
        assert torch.equal(craft(model, x, y, "pgd", **kw), ref_adv), kind
        check_classifier(model, (4, 3, 28, 28))
    exported = loaded["export"][0]
    assert isinstance(exported, ExportedProgram)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pytree notice at each attack's copy
        copied = copy.deepcopy(exported)
    assert torch.equal(copied(x), ref) and copied.program is not exported.program
    assert loaded["export"][1]["image_size"] == 28
    assert loaded["export"][1]["input_shape"] == [None, 3, 28, 28]
    assert loaded["torchscript"][1]["image_size"] is None  # TorchScript does not say
    assert loaded["factory"][1]["weights"] == str(d / "state.pt")


def test_skinadv_checkpoint_and_folders(tmp_path, saved):
    model = create_model("paper_cnn", width=4)
    path = save_model(model, tmp_path / "ckpt" / "m.pt", {"seed": 3})
    net, meta = load_classifier(path)
    assert meta["source"] == "skinadv" and meta["seed"] == 3 and meta["name"] == "paper_cnn"
    assert all(p.requires_grad for p in net.parameters())  # as load_model leaves it
    _, meta = load_classifier(tmp_path / "ckpt")  # a downloaded weights/ folder: .pt + .json
    assert meta["source"] == "skinadv"
    d, _ = saved
    with pytest.raises(ValueError, match="exactly one model file.*found 5"):
        load_classifier(d)


@pytest.mark.parametrize(
    "name, kw, message",
    [
        ("pickled.pt", {}, "is a pickled .*ByoNet.*torch.jit.save.*torch.export.save"),
        ("state.pt", {}, "bare state dict: pass --model package.module:factory"),
        ("net.ts", {"weights": "state.pt"}, "--weights goes with a package.module:factory"),
    ],
)
def test_refusals(saved, name, kw, message):
    d, _ = saved
    kw = {k: d / v for k, v in kw.items()}
    with pytest.raises(ValueError, match=message) as err:
        load_classifier(d / name, **kw)
    assert "\n" not in str(err.value)


def test_factory_weights(saved, tmp_path):
    d, net = saved
    (tmp_path / "w").mkdir()  # an MLflow weights/ folder, downloaded
    (tmp_path / "w" / "state.pt").write_bytes((d / "state.pt").read_bytes())
    model, meta = load_classifier(f"{FACTORY_MODULE}:make", weights=tmp_path / "w")
    x = torch.rand(3, 3, 28, 28)
    assert torch.equal(model(x), net(x)) and meta["source"] == "factory"


def test_factory_errors(saved, tmp_path):
    d, _ = saved
    with pytest.raises(ValueError, match="needs --weights"):
        load_classifier(f"{FACTORY_MODULE}:make")
    with pytest.raises(ValueError, match="cannot import no_such_module_xyz"):
        load_classifier("no_such_module_xyz:make", weights=d / "state.pt")
    with pytest.raises(ValueError, match="has no 'nope'"):
        load_classifier(f"{FACTORY_MODULE}:nope", weights=d / "state.pt")
    torch.save(ByoNet(n_out=10).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ValueError, match="do not fit"):
        load_classifier(f"{FACTORY_MODULE}:make", weights=tmp_path / "wide.pt")
    torch.save({"conv.weight": torch.zeros(6, 3, 3, 3)}, tmp_path / "part.pt")
    with pytest.raises(ValueError, match="missing"):
        load_classifier(f"{FACTORY_MODULE}:make", weights=tmp_path / "part.pt")


class Softmaxed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_byo()

    def forward(self, x):
        return self.net(x).softmax(1)


class Noisy(nn.Module):
    """Randomised: dropout on the input, at every call (a stochastic defence)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_byo()

    def forward(self, x):
        return self.net(F.dropout(x, 0.2, training=True))


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_byo()

    def forward(self, x):
        return self.net(x).detach()


class LogSoftmaxed(Softmaxed):
    def forward(self, x):
        return self.net(x).log_softmax(1)


@pytest.mark.parametrize(
    "model, message",
    [
        (Softmaxed(), "returns probabilities .* not logits"),
        (ByoNet(n_out=10), "returns 10 outputs per image .* expected \\(4, 7\\) logits"),
        (Noisy(), "answers two identical calls differently.*needs an EOT attack"),
        (Detached(), "gives no gradient with respect to its input"),
        (nn.Flatten(), "returns 2352 outputs per image"),
    ],
)
def test_check_classifier_refuses(model, message):
    with pytest.raises(ValueError, match=message) as err:
        check_classifier(model, (4, 3, 28, 28), what="--model m")
    assert str(err.value).startswith("--model m ") and "\n" not in str(err.value)


def test_check_classifier_names_the_size_it_cannot_take():
    net = make_byo()  # its linear layer fits 28x28 input only
    with pytest.raises(ValueError, match=r"cannot take a \(4, 3, 32, 32\) float batch"):
        check_classifier(net, (4, 3, 32, 32))
    check_classifier(LogSoftmaxed(), (4, 3, 28, 28))  # log-probabilities are logits


def test_check_classifier_restores_modes():
    net = make_byo().train()
    check_classifier(net, (4, 3, 28, 28))
    assert all(m.training for m in net.modules())


def test_class_order_matches_the_canonical_model():
    """A model answering in hmnist order, wrapped with its order, is the canonical model:
    same logits and same input gradients."""
    canon = make_byo()
    hmnist = make_byo()
    perm = [CLASSES.index(c) for c in HMNIST_CLASSES]  # hmnist column j = canonical perm[j]
    with torch.no_grad():
        hmnist.fc.weight.copy_(canon.fc.weight[perm])
        hmnist.fc.bias.copy_(canon.fc.bias[perm])
    wrapped = adapt(hmnist, classes=parse_classes("hmnist"))
    assert isinstance(wrapped, ClassOrder)
    x = torch.rand(5, 3, 28, 28, requires_grad=True)
    assert torch.equal(wrapped(x), canon(x))
    (g1,) = torch.autograd.grad(wrapped(x)[:, 4].sum(), x)  # melanoma's logit
    (g2,) = torch.autograd.grad(canon(x)[:, 4].sum(), x)
    assert torch.equal(g1, g2)
    assert parse_classes(",".join(HMNIST_CLASSES)) == HMNIST_CLASSES
    assert adapt(canon, classes=CLASSES) is canon  # nothing to adapt


class SelfNormalising(nn.Module):
    """The canonical form: the model owns its normalisation (as skinadv's CNN does)."""

    def __init__(self, core: nn.Module, mean, std) -> None:
        super().__init__()
        self.core = core
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        return self.core((x - self.mean) / self.std)


def test_normalize_matches_a_self_normalising_model():
    mean, std = parse_normalize("0.485,0.456,0.406", "0.229,0.224,0.225")
    core = make_byo()
    wrapped = adapt(core, normalize=(mean, std))
    assert isinstance(wrapped, Normalize)
    canon = SelfNormalising(core, mean, std)
    x, y = torch.rand(6, 3, 28, 28), torch.randint(0, 7, (6,))
    assert torch.equal(wrapped(x), canon(x))
    kw = {"batch_size": 6, "seed": 0, "eps": 4 / 255, "alpha": 1 / 255, "steps": 2}
    adv = craft(wrapped, x, y, "pgd", **kw)
    assert torch.equal(adv, craft(canon, x, y, "pgd", **kw))
    assert float((adv - x).abs().max()) <= 4 / 255 + 1e-6  # eps in pixels, not in stds
    assert parse_normalize("0.5", "0.25") == ((0.5,) * 3, (0.25,) * 3)


@pytest.mark.parametrize(
    "mean, std, message",
    [
        ("0.5,0.5", "0.2", "MEAN must be 1 or 3"),
        ("0.5", "0", "STD must be > 0"),
        ("a", "1", "MEAN and STD are numbers"),
    ],
)
def test_parse_normalize_errors(mean, std, message):
    with pytest.raises(ValueError, match=message):
        parse_normalize(mean, std)


def test_parse_classes_errors():
    with pytest.raises(ValueError, match="unknown melanoma; repeated nv; missing mel, vasc"):
        parse_classes("akiec,bcc,bkl,df,melanoma,nv,nv")


def test_exported_sizes_are_checked_against_the_data(saved, tmp_path):
    """An exported program says its input size: a fixed batch, or images of another size
    than the data's, get one line before any data is read."""
    d, _ = saved
    net, meta = load_classifier(d / "static.pt2")
    assert meta["input_shape"] == [2, 3, 28, 28]
    with pytest.raises(ValueError, match="exported for batches of exactly 2 images"):
        check(net, meta, 28, "--model static.pt2")
    big = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 7))
    dyn = ({0: torch.export.Dim("batch")},)
    program = torch.export.export(big.eval(), (torch.rand(2, 3, 32, 32),), dynamic_shapes=dyn)
    torch.export.save(program, tmp_path / "big.pt2")
    net, meta = load_classifier(tmp_path / "big.pt2")
    with pytest.raises(ValueError, match="takes 32x32 images, but the data is 28x28"):
        check(net, meta, 28, "--model big.pt2")
    check(net, meta, 32, "--model big.pt2")


def test_mlflow_uri_needs_a_tracking_uri(monkeypatch, tmp_path):
    """Without MLFLOW_TRACKING_URI, mlflow would open (and create) ./mlflow.db: refused."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="set MLFLOW_TRACKING_URI"):
        download("models:/m@champion", tmp_path / "dl")
    assert list(tmp_path.iterdir()) == []


def test_mlflow_uris_parse():
    assert parse_mlflow_uri("models:/skinadv-quick-pgd@robust-champion") == {
        "scheme": "models",
        "name": "skinadv-quick-pgd",
        "alias": "robust-champion",
    }
    assert parse_mlflow_uri("models:/m/3") == {"scheme": "models", "name": "m", "version": "3"}
    assert parse_mlflow_uri("runs:/abc123/weights/m.pt2") == {
        "scheme": "runs",
        "run_id": "abc123",
        "path": "weights/m.pt2",
    }
    for bad in ("models:/m", "models:/m/latest", "runs:/abc", "models:/@x"):
        with pytest.raises(ValueError, match="not an MLflow model URI"):
            parse_mlflow_uri(bad)
