"""infra/ files against what the code expects; parsed only (no Docker, cloud or cluster)."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from skinadv.stack import ENV_VARS, WORKER_ENV_VARS

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
# what skinadv reads to find its services (skinadv.stack) and passes on to Ray workers
CODE_ENV = set(ENV_VARS.values()) | set(WORKER_ENV_VARS)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.IGNORECASE)
SHARED = "/shared"  # where the shared work folder was mounted: no infra file needs one now


def load(name: str):
    return yaml.safe_load((INFRA / name).read_text())


# -- prefect.yaml -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return load("prefect.yaml")


def test_prefect_yaml_is_a_valid_project_file(prefect_yaml):
    # the model `prefect deploy` validates the file with (Prefect 3.9)
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(prefect_yaml)
    assert {d.name for d in model.deployments} == {"grid", "grid-git"}
    assert prefect_yaml["build"] is None and prefect_yaml["push"] is None


def _steps(prefect_yaml):
    for section in ("build", "push", "pull"):
        yield from prefect_yaml.get(section) or []
    for dep in prefect_yaml["deployments"]:
        for section in ("build", "push", "pull"):
            yield from dep.get(section) or []


def test_prefect_yaml_steps_exist_and_take_their_arguments(prefect_yaml):
    steps = list(_steps(prefect_yaml))
    assert steps
    for step in steps:
        ((fqn, kwargs),) = step.items()
        module, _, name = fqn.rpartition(".")
        fn = getattr(importlib.import_module(module), name)
        args = {k: v for k, v in kwargs.items() if k not in ("id", "requires")}
        inspect.signature(fn).bind(**args)


def test_prefect_yaml_entrypoints_are_the_grid_flow_on_ray(prefect_yaml, monkeypatch):
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint
    from prefect_ray import RayTaskRunner

    monkeypatch.chdir(REPO)  # entrypoints are relative to the repository root
    for dep in prefect_yaml["deployments"]:
        flow = load_flow_from_entrypoint(dep["entrypoint"])
        assert isinstance(flow, Flow) and flow.name == "skinadv-grid"
        assert isinstance(flow.task_runner, RayTaskRunner)
        # Prefect's own parameter validation (the flow signature's pydantic model)
        params = dep["parameters"]
        inspect.signature(flow.fn).bind(**params)
        validated = flow.validate_parameters(params)["params"]
        assert validated.model_dump(include=set(params["params"])) == params["params"]


def test_prefect_yaml_parameters_make_a_valid_grid(prefect_yaml):
    from skinadv.config import grid_config

    for dep in prefect_yaml["deployments"]:
        p = dep["parameters"]["params"]
        cfg = grid_config(
            p["preset"],
            data=p["data"],
            methods=p["methods"],
            fractions=p["fractions"],
            seeds=p["seeds"],
            overrides=p["overrides"],
        )
        assert cfg.methods == p["methods"] and cfg.fractions == p["fractions"]
        assert not p["workdir"].startswith(SHARED + "/")  # the flow run's own folder


def test_prefect_yaml_schedule_is_a_valid_cron(prefect_yaml):
    from prefect.client.schemas.schedules import CronSchedule

    (grid,) = [d for d in prefect_yaml["deployments"] if d["name"] == "grid"]
    (schedule,) = grid["schedules"]
    assert CronSchedule(**schedule).cron == "0 3 * * *"


def test_prefect_yaml_work_pool_is_process_with_code_env_vars(prefect_yaml):
    for dep in prefect_yaml["deployments"]:
        pool = dep["work_pool"]
        assert pool["name"] == "skinadv-process"
        env = dict(pool["job_variables"]["env"])
        assert env.pop("RAY_AUTH_MODE") == "token"  # a setting, not an address
        assert set(env) <= CODE_ENV and {"RAY_ADDRESS", "MLFLOW_TRACKING_URI"} <= set(env)
        # addresses come from the deploying shell, never literals in the file
        assert all(v == f"{{{{ ${k} }}}}" for k, v in env.items())
    # the work pool type: ProcessWorker's job variables accept these
    from prefect.workers.process import ProcessWorker

    variables = ProcessWorker.get_default_base_job_template()["variables"]["properties"]
    assert ProcessWorker.type == "process" and "env" in variables


# -- compose.yaml -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return load("compose.yaml")


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


def test_compose_has_the_services(compose):
    services = compose["services"]
    assert {"postgres", "minio", "mlflow", "prefect", "ray-head", "ray-gpu-worker"} <= set(services)
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = (INFRA / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (INFRA / source).exists(), (name, volume)
            else:
                assert source in compose["volumes"], (name, volume)


def test_compose_binds_published_ports_to_loopback(compose):
    ports = [(n, p) for n, s in compose["services"].items() for p in s.get("ports", [])]
    assert ports
    for name, port in ports:
        assert str(port).startswith("127.0.0.1:"), (name, port)


def test_compose_mlflow_uses_postgres_and_s3(compose):
    cmd = " ".join(compose["services"]["mlflow"]["command"])
    assert "--backend-store-uri=postgresql://" in cmd and "@postgres:5432/mlflow" in cmd
    assert "--artifacts-destination=s3://" in cmd
    assert _env(compose["services"]["mlflow"])["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    prefect_db = _env(compose["services"]["prefect"])["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://") and prefect_db.endswith("/prefect")
    assert "CREATE DATABASE prefect" in (INFRA / "postgres" / "init.sql").read_text()


def test_compose_skinadv_services_point_at_the_compose_services(compose):
    services = compose["services"]
    ray_nodes = ["ray-head", "ray-gpu-worker", "skinadv", "skinadv-serve"]
    for name in ray_nodes:
        env = _env(services[name])
        assert set(ENV_VARS.values()) | {"MLFLOW_S3_ENDPOINT_URL"} <= set(env), name
        for var in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL"):
            host = re.match(r"https?://([^:/]+)", env[var]).group(1)
            assert host in services, (name, var, env[var])
        assert env["RAY_ADDRESS"].split(":")[0] in services
    # no volume shared by the Ray nodes: only the drivers keep their run folders
    for name in ray_nodes:
        mounts = [v.split(":", 1)[1] for v in services[name].get("volumes", [])]
        assert mounts == ([] if name.startswith("ray-") else ["/runs"]), (name, mounts)
    assert "shared" not in compose["volumes"]


def test_compose_gpu_worker_reserves_nvidia_gpus(compose):
    devices = compose["services"]["ray-gpu-worker"]["deploy"]["resources"]["reservations"][
        "devices"
    ]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "--num-gpus=0" in compose["services"]["ray-head"]["command"]


def test_compose_has_no_literal_secrets(compose):
    text = (INFRA / "compose.yaml").read_text()
    for name, svc in compose["services"].items():
        for key, value in _env(svc).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{\w+(:\?[^}]*)?\}", str(value)), (name, key)
    # passwords inside URLs are interpolated too
    userinfos = re.findall(r"://([^/\s@]+)@", text)
    assert userinfos
    for userinfo in userinfos:
        assert re.fullmatch(r"\$\{\w+\}", userinfo.rsplit(":", 1)[1]), userinfo
    example = dict(
        line.split("=", 1)
        for line in (INFRA / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert all(v == "" for k, v in example.items() if SECRET_NAME.search(k))
    assert ".env" in (INFRA / ".gitignore").read_text().split()


# -- Ray cluster launcher ---------------------------------------------------------------


def test_ray_cluster_config_matches_rays_schema_with_gpu_workers():
    import jsonschema
    import ray.autoscaler

    cfg = load("ray-cluster.yaml")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert types[cfg["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu = [
        t
        for n, t in types.items()
        if n != cfg["head_node_type"] and t["resources"].get("GPU", 0) >= 1
    ]
    assert gpu and all(t["max_workers"] >= 1 for t in gpu)
    setup = "\n".join(cfg["setup_commands"])
    src = next(remote for remote, local in cfg["file_mounts"].items() if local == ".")
    assert (
        f"pip install --python ~/skinadv-venv/bin/python {src.replace('/home/ubuntu', '~')}"
        in setup
    )
    assert SHARED not in setup and "mount" not in setup  # no shared file system


# -- KubeRay ----------------------------------------------------------------------------


def test_kuberay_manifest_has_head_and_gpu_workers_with_service_env():
    docs = list(yaml.safe_load_all((INFRA / "kuberay-raycluster.yaml").read_text()))
    (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    dockerfile = (INFRA / "docker" / "skinadv.Dockerfile").read_text()
    assert f"ARG RAY_VERSION={spec['rayVersion']}" in dockerfile  # one Ray version everywhere
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in spec["workerGroupSpecs"]
    ]
    for pod in pods:
        for c in pod["containers"]:
            names = {e["name"] for e in c["env"]}
            assert (
                {"PREFECT_API_URL", "MLFLOW_TRACKING_URI"}
                <= names
                <= CODE_ENV | {"RAY_USAGE_STATS_ENABLED"}
            )
            assert not any(SECRET_NAME.search(e["name"]) for e in c["env"])  # Secret only
            assert SHARED not in {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert not any("persistentVolumeClaim" in v for v in pod.get("volumes", []))
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    gpu_groups = [
        g
        for g in spec["workerGroupSpecs"]
        if int(
            g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)
        )
        >= 1
    ]
    assert gpu_groups and all(g["maxReplicas"] >= 1 for g in gpu_groups)
    assert [d["kind"] for d in docs] == ["RayCluster"]  # no shared volume claim


def test_every_ray_in_infra_requires_a_token(compose, prefect_yaml):
    """Ray's token authentication is on wherever these files start or reach Ray; the token
    itself is never written in them."""
    env = compose["x-skinadv"]["environment"]
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"].startswith(
        "${RAY_AUTH_TOKEN:?"
    )
    for name in ("ray-head", "ray-gpu-worker", "skinadv", "skinadv-serve"):
        assert compose["services"][name]["environment"]["RAY_AUTH_MODE"] == "token", name
    docs = yaml.safe_load_all((INFRA / "kuberay-raycluster.yaml").read_text())
    kuberay = next(d for d in docs if d["kind"] == "RayCluster")
    assert kuberay["spec"]["authOptions"] == {"mode": "token"}
    launcher = yaml.safe_load((INFRA / "ray-cluster.yaml").read_text())
    starts = launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert "/home/ubuntu/.ray/auth_token" in launcher["file_mounts"]
    job_env = prefect_yaml["definitions"]["work_pool"]["job_variables"]["env"]
    assert job_env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in job_env


# -- README -----------------------------------------------------------------------------


def test_readme_documents_every_file_and_variable():
    text = (INFRA / "README.md").read_text()
    for name in (
        "prefect.yaml",
        "compose.yaml",
        "ray-cluster.yaml",
        "kuberay-raycluster.yaml",
        *CODE_ENV,
        "--run-dir",
        "skinadv serve",
        "RAY_AUTH_MODE",
        "RAY_AUTH_TOKEN",
        "SKINADV_MLFLOW_AUTH",
        "basic-auth",
    ):
        assert name in text, name
    files = {p.name for p in INFRA.iterdir() if p.is_file() and p.suffix == ".yaml"}
    assert files == {"prefect.yaml", "compose.yaml", "ray-cluster.yaml", "kuberay-raycluster.yaml"}
    assert os.path.isfile(INFRA / "docker" / "mlflow.Dockerfile")
