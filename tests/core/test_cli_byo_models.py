"""``skinadv evaluate`` / ``attack`` with bring-your-own classifiers, on 300 real images:
a model class defined only in these tests (not in skinadv's registry) saved as TorchScript,
as an exported program and as factory + state dict gives the same figures every way; bad
models get one ``error:`` line and exit code 2; MLflow URIs on a SQLite MLflow in tmp."""

from __future__ import annotations

import inspect
import json
import re
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from skinadv import tracking
from skinadv.commands.experiment import app
from skinadv.data import CLASSES, HMNIST_CLASSES
from skinadv.models import create_model, save_model

runner = CliRunner()
SMALL = ["--set", "data.subset=300", "--set", "attack.pgd.steps=2", "--set", "attack.batch_size=64"]
FACTORY_MODULE = "skinadv_byo_cli"
MEAN, STD = (0.76, 0.54, 0.57), (0.14, 0.15, 0.17)


class Lesions(nn.Module):
    """A foreign classifier of 28x28 images (its own layers, ``n_out`` logits)."""

    def __init__(self, n_out: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 7 * 7, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(torch.relu(self.bn(self.conv(x))), 4)
        return self.fc(x.flatten(1))


class Head(nn.Module):
    """``model(x)`` then a head: softmax (probabilities) or noise (a randomised model)."""

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        if self.kind == "softmax":
            return z.softmax(1)
        return z + 0.1 * torch.randn_like(z)


class OwnNormalisation(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def lesions(n_out: int = 7) -> Lesions:
    torch.manual_seed(0)
    net = Lesions(n_out).eval()
    with torch.no_grad():  # not all one class on real images
        net.fc.bias.copy_(torch.linspace(-0.5, 0.5, n_out))
        net.bn.running_mean.uniform_(-0.1, 0.1)
    return net


def script(model: nn.Module, path) -> str:
    torch.jit.save(torch.jit.script(model.eval()), path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Every form these tests feed ``--model``, by name."""
    d = tmp_path_factory.mktemp("byo-cli")
    net = lesions()
    x = torch.rand(2, 3, 28, 28)
    dyn = ({0: torch.export.Dim("batch")},)
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=dyn), d / "net.pt2")
    torch.save(net.state_dict(), d / "state.pt")
    torch.save(net, d / "pickled.pt")
    (d / f"{FACTORY_MODULE}.py").write_text(
        "import torch\nimport torch.nn.functional as F\nfrom torch import nn\n\n\n"
        + inspect.getsource(Lesions)
        + "\n\ndef make():\n    return Lesions()\n"
    )
    at32 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 32 * 32, 7))
    x32 = torch.rand(2, 3, 32, 32)
    torch.export.save(torch.export.export(at32.eval(), (x32,), dynamic_shapes=dyn), d / "32.pt2")
    perm = [CLASSES.index(c) for c in HMNIST_CLASSES]  # hmnist column j: canonical perm[j]
    hmnist = lesions()
    with torch.no_grad():
        hmnist.fc.weight.copy_(net.fc.weight[perm])
        hmnist.fc.bias.copy_(net.fc.bias[perm])
    big = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 32 * 32, 7))
    paths = {
        "torchscript": script(net, d / "net.ts"),
        "export": str(d / "net.pt2"),
        "factory": f"{FACTORY_MODULE}:make",
        "weights": str(d / "state.pt"),
        "pickled": str(d / "pickled.pt"),
        "hmnist": script(hmnist, d / "hmnist.ts"),
        "self_normalising": script(OwnNormalisation(net), d / "own-norm.ts"),
        "bare": script(net, d / "bare.ts"),  # expects normalised input: --normalize MEAN STD
        "softmax": script(Head(net, "softmax"), d / "softmax.ts"),
        "noisy": script(Head(net, "noise"), d / "noisy.ts"),
        "ten": script(lesions(10), d / "ten.ts"),
        "big": script(big, d / "big.ts"),
        "export32": str(d / "32.pt2"),  # exported for 32x32 images (any batch)
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(d))
        yield paths
    sys.modules.pop(FACTORY_MODULE, None)


def run(command: str, model: str, data, *extra: str):
    args = [command, "--model", model, "--data", str(data), *SMALL, *map(str, extra)]
    return runner.invoke(app, args)


def figures(res) -> dict:
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    keys = ("clean", "adversarial", "results", "max_linf", "n_test", "attack")
    return {k: payload[k] for k in keys if k in payload}


def test_three_forms_give_identical_figures(models, ham_npz):
    """TorchScript, exported program, factory + state dict: the same clean and adversarial
    figures from ``attack`` (PGD) and ``evaluate`` (FGSM and PGD, both protocols)."""
    forms = {
        "torchscript": [models["torchscript"]],
        "export": [models["export"]],
        "factory": [models["factory"], "--weights", models["weights"]],
    }
    attacked, evaluated = {}, {}
    for kind, (model, *extra) in forms.items():
        res = run("attack", model, ham_npz, *extra, "--attack", "pgd", "--json")
        attacked[kind] = figures(res)
        assert json.loads(res.stdout)["model_source"] == kind
        res = run("evaluate", model, ham_npz, *extra, "--json")
        evaluated[kind] = figures(res)
    first = attacked["torchscript"]
    assert first["n_test"] == 60 and first["max_linf"] <= 0.3 + 1e-6
    assert first["adversarial"]["accuracy"] <= first["clean"]["accuracy"]
    assert 0 < first["clean"]["accuracy"] < 1  # not a constant classifier on these images
    assert attacked["export"] == first and attacked["factory"] == first
    ev = evaluated["torchscript"]
    assert set(ev["results"]) == {"transfer", "whitebox"}
    assert evaluated["export"] == ev and evaluated["factory"] == ev


def test_table_names_a_foreign_model(models, ham_npz):
    res = run("evaluate", models["export"], ham_npz, "--protocol", "whitebox")
    assert res.exit_code == 0, res.output
    assert "net.pt2" in res.stdout and "whitebox / pgd" in res.stdout


def test_classes_and_normalize_match_the_canonical_model(models, ham_npz):
    """A model in hmnist order with --classes hmnist, and a model wanting normalised input
    with --normalize, give the canonical model's predictions and attacks."""
    canonical = figures(run("attack", models["torchscript"], ham_npz, "--json"))
    order = ",".join(HMNIST_CLASSES)
    assert figures(run("attack", models["hmnist"], ham_npz, "--classes", order, "--json")) == (
        canonical
    )
    assert figures(run("attack", models["hmnist"], ham_npz, "--json")) != canonical
    own = figures(run("attack", models["self_normalising"], ham_npz, "--json"))
    norm = ["--normalize", ",".join(map(str, MEAN)), ",".join(map(str, STD))]
    assert figures(run("attack", models["bare"], ham_npz, *norm, "--json")) == own


def test_data_is_resized_to_the_size_the_model_was_exported_for(models, ham_npz):
    """An exported program says its input size (32x32): the 28x28 data is resized to it
    (a model that cannot take 28x28 at all runs), and an explicit other data.size is refused
    in one line; a TorchScript model of other sizes is told how to set the size."""
    for command in ("attack", "evaluate"):
        res = run(command, models["export32"], ham_npz, "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["n_test"] == 60
        res = run(command, models["export32"], ham_npz, "--set", "data.size=28")
        assert res.exit_code == 2, res.output
        assert "takes 32x32 images, but the data is 28x28" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    res = run("attack", models["big"], ham_npz)
    assert res.exit_code == 2 and "--set data.size=N" in res.stderr
    assert figures(run("attack", models["big"], ham_npz, "--set", "data.size=32", "--json"))


def test_transfer_sets_from_a_foreign_source_model(models, ham_npz):
    """``evaluate --source-model`` takes any source: sets crafted against a TorchScript copy
    of the model score it as its own sets do; another model's sets score it otherwise."""
    own = figures(run("evaluate", models["export"], ham_npz, "--protocol", "transfer", "--json"))
    src = ["--source-model", models["torchscript"], "--protocol", "transfer", "--json"]
    res = run("evaluate", models["export"], ham_npz, *src)
    assert figures(res) == own
    assert json.loads(res.stdout)["source_model"] == models["torchscript"]
    other = ["--source-model", models["hmnist"], "--protocol", "transfer", "--json"]
    assert figures(run("evaluate", models["export"], ham_npz, *other)) != own
    res = run("evaluate", models["export"], ham_npz, "--source-model", models["softmax"])
    assert res.exit_code == 2 and "--source-model" in res.stderr and "probabilities" in res.stderr


@pytest.mark.parametrize(
    "name, extra, message",
    [
        ("pickled", [], "is a pickled .*Lesions .*torch.jit.save.*torch.export.save"),
        ("softmax", [], "returns probabilities .* not logits"),
        ("ten", [], "returns 10 outputs per image"),
        ("noisy", [], "answers two identical calls differently.*needs an EOT attack"),
        ("big", [], r"cannot take a \(4, 3, 28, 28\) float batch"),
        ("weights", [], "bare state dict: pass --model package.module:factory"),
        ("torchscript", ["--classes", "nv,mel"], "--classes 'nv,mel'"),
        ("torchscript", ["--normalize", "0.5", "0"], "STD must be > 0"),
    ],
)
@pytest.mark.parametrize("command", ["evaluate", "attack"])
def test_bad_models_one_line_exit_2(models, ham_npz, command, name, extra, message):
    res = run(command, models[name], ham_npz, *extra)
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ") and re.search(message, res.stderr), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_mlflow_uris(models, ham_npz, tmp_path, monkeypatch):
    """``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` of a registered skinadv champion
    (a run's weights/ folder, as the grid registers it) and ``runs:/ID/PATH`` of a foreign
    exported program give the figures of the same files read locally."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    import mlflow

    mlflow.MlflowClient().create_experiment("byo", artifact_location=(tmp_path / "a").as_uri())
    torch.manual_seed(0)
    ckpt = save_model(create_model("paper_cnn", width=4), tmp_path / "w" / "vanilla.pt")
    with tracking.owned_run("byo", name="vanilla", kind="vanilla") as rid:
        files = [ckpt, ckpt.with_name("vanilla.pt.json")]
        tracking.log_artifact_files(rid, files, tracking.WEIGHTS_DIR)
        tracking.log_artifact_files(rid, [models["export"]], "foreign")
    version = tracking.register_champion("byo-vanilla", rid, description="test", tags={})
    local = figures(run("attack", str(ckpt), ham_npz, "--json"))
    for uri in ("models:/byo-vanilla@robust-champion", f"models:/byo-vanilla/{version}"):
        res = run("attack", uri, ham_npz, "--json")
        assert figures(res) == local and json.loads(res.stdout)["model_source"] == "skinadv"
    foreign = figures(run("attack", models["export"], ham_npz, "--json"))
    assert figures(run("attack", f"runs:/{rid}/foreign/net.pt2", ham_npz, "--json")) == foreign
    res = run("attack", "models:/byo-vanilla@nope", ham_npz)
    assert res.exit_code == 2 and res.stderr.startswith("error: models:/byo-vanilla@nope")
    assert len(res.stderr.strip().splitlines()) == 1
    res = run("attack", "models:/byo-vanilla", ham_npz)
    assert res.exit_code == 2 and "not an MLflow model URI" in res.stderr
