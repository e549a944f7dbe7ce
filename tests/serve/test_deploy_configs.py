"""deploy/serve-config.yaml and deploy/rayservice.yaml stay valid: Serve's own schema accepts
them, they declare the same application, its import path builds the real application (no Ray
started: building only binds deployments), the overrides name its deployments and are options
they take, and the manifest's volumes, GPUs and NetworkPolicy agree with the Serve config."""

from __future__ import annotations

import copy
import importlib
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

serve = pytest.importorskip("ray.serve")
yaml = pytest.importorskip("yaml")

import ray  # noqa: E402
from ray.serve.schema import ServeDeploySchema  # noqa: E402

from realtime_erc.config import ConfigError, load_config  # noqa: E402
from realtime_erc.serve.app import ServeError  # noqa: E402
from realtime_erc.serve.on_ray import REPLICA_ENV, app  # noqa: E402

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERVE_CONFIG = DEPLOY / "serve-config.yaml"
RAYSERVICE = DEPLOY / "rayservice.yaml"
DEPLOYMENTS = {"ingress", "asr", "text", "engine", "metrics"}
PUBLIC_PORT = 8765


def serve_config() -> dict[str, Any]:
    return yaml.safe_load(SERVE_CONFIG.read_text())


def manifest(kind: str) -> dict[str, Any]:
    documents = [d for d in yaml.safe_load_all(RAYSERVICE.read_text()) if d is not None]
    found = [d for d in documents if d.get("kind") == kind]
    assert len(found) == 1, f"{RAYSERVICE.name}: {len(found)} {kind} documents"
    return found[0]


def application(config: dict[str, Any]) -> dict[str, Any]:
    (only,) = config["applications"]
    return only


def overrides() -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in application(serve_config()).get("deployments", [])}


def pod_templates() -> dict[str, dict[str, Any]]:
    cluster = manifest("RayService")["spec"]["rayClusterConfig"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster["workerGroupSpecs"]:
        templates[group["groupName"]] = group["template"]
    return templates


def builder(import_path: str):
    module, _, attribute = import_path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def build(monkeypatch, args: dict[str, Any]) -> dict[str, Any]:
    """Call the application builder of serve-config.yaml with ``args``; the deployments it
    declares (``serve.deployment`` watched: an Application does not list them publicly)."""
    declared: dict[str, Any] = {}
    real = serve.deployment

    def watch(*a: Any, **k: Any) -> Any:
        d = real(*a, **k)
        declared[d.name] = d
        return d

    monkeypatch.setattr(serve, "deployment", watch)
    built = builder(application(serve_config())["import_path"])(args)
    assert isinstance(built, serve.Application)
    return declared


def server_toml(tmp_path: Path, tokens: str = "t0k3n\n") -> tuple[Path, list[str]]:
    """The ConfigMap's serve.toml in a file, and a ``set`` pointing its token_file (the
    mounted Secret) at a local file holding ``tokens``."""
    toml = tmp_path / "serve.toml"
    toml.write_text(manifest("ConfigMap")["data"]["serve.toml"])
    token_file = tmp_path / "tokens"
    token_file.write_text(tokens)
    return toml, [f'serve.token_file="{token_file}"']


def test_the_serve_config_is_a_valid_serve_deploy_config() -> None:
    config = ServeDeploySchema.model_validate(serve_config())
    assert config.http_options.host == "0.0.0.0"
    assert config.http_options.port == PUBLIC_PORT
    (app_config,) = config.applications
    assert app_config.name == "realtime-erc"
    assert app_config.route_prefix == "/"
    assert app_config.import_path == "realtime_erc.serve.on_ray:app"


def test_the_rayservice_serves_the_same_application() -> None:
    service = manifest("RayService")
    assert service["apiVersion"] == "ray.io/v1"
    v2 = service["spec"]["serveConfigV2"]
    assert isinstance(v2, str), "serveConfigV2 is a block string"
    in_service = ServeDeploySchema.model_validate(yaml.safe_load(v2))
    on_its_own = ServeDeploySchema.model_validate(serve_config())
    assert [a.name for a in in_service.applications] == [a.name for a in on_its_own.applications]
    for a, b in zip(in_service.applications, on_its_own.applications, strict=True):
        assert (a.import_path, a.route_prefix) == (b.import_path, b.route_prefix)
        assert [d.name for d in a.deployments] == [d.name for d in b.deployments]
    # and nothing else drifts either: arguments, overrides, proxy, HTTP options
    assert in_service.model_dump(exclude_unset=True) == on_its_own.model_dump(exclude_unset=True)


def test_the_import_path_builds_the_application_and_its_overrides_fit(
    monkeypatch, tmp_path: Path
) -> None:
    assert builder(application(serve_config())["import_path"]) is app
    toml, token = server_toml(tmp_path)
    args = {**application(serve_config())["args"], "config": str(toml), "set": token}
    declared = build(monkeypatch, args)
    assert set(declared) == DEPLOYMENTS
    for name, deployment in declared.items():  # Serve's replica settings, on every replica
        assert deployment.ray_actor_options["runtime_env"]["env_vars"] == REPLICA_ENV, name
    # ... and where an override replaces those options, the application's own runtime_env
    assert application(serve_config())["runtime_env"]["env_vars"] == REPLICA_ENV
    for name, override in overrides().items():
        assert name in declared, f"override of {name!r}: the application has no such deployment"
        # Serve replaces the application's whole ray_actor_options with the override's
        if "ray_actor_options" in override:
            assert "num_cpus" in override["ray_actor_options"], f"{name}: num_cpus would be 1"
        options = copy.deepcopy({k: v for k, v in override.items() if k != "name"})
        declared[name] = declared[name].options(**options)  # Serve's own checks of each option
    engine = overrides().get("engine", {})
    assert "autoscaling_config" not in engine and engine.get("num_replicas", 1) == 1
    assert declared["engine"].num_replicas == 1, "engine holds every session's state"


def test_the_ingress_scales_on_sessions_within_max_sessions(tmp_path: Path) -> None:
    toml, token = server_toml(tmp_path)
    config = load_config(toml, token)
    target = overrides()["ingress"]["autoscaling_config"]["target_ongoing_requests"]
    assert 1 <= target <= config.serve.max_sessions


def test_the_gpu_shares_fit_the_gpu_worker_group() -> None:
    args = application(serve_config())["args"]
    shares: list[float] = []
    for name in DEPLOYMENTS - {"ingress"}:  # ingress replicas take no GPU
        override = overrides().get(name, {})
        default = args.get("gpus", 0) if name in {"asr", "text"} else 0
        gpus = override.get("ray_actor_options", {"num_gpus": default}).get("num_gpus", 0)
        if gpus:
            shares += [gpus] * override.get("num_replicas", 1)
    assert all(0 < s <= 1 for s in shares)
    groups = manifest("RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    free = []
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        per_pod = int(container["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
        free += [1.0] * (per_pod * group["maxReplicas"])
    for share in sorted(shares, reverse=True):  # first fit, as Ray packs fractional GPUs
        fits = [i for i, left in enumerate(free) if left >= share - 1e-9]
        assert fits, f"GPU shares {shares} do not fit {len(free)} GPUs"
        free[fits[0]] -= share


def test_the_builder_refuses_to_serve_without_tokens(monkeypatch, tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="tokens"):
        app({})
    toml, empty = server_toml(tmp_path, tokens="\n")
    with pytest.raises(ServeError, match="tokens"):
        build(monkeypatch, {"config": str(toml), "set": empty, "gpus": 0})
    # the TOML itself names a token file and holds no tokens
    serve_section = tomllib.loads(manifest("ConfigMap")["data"]["serve.toml"])["serve"]
    assert serve_section["token_file"] and not serve_section.get("tokens")


def test_the_builder_refuses_unknown_args() -> None:
    with pytest.raises(ConfigError, match="gpu"):
        app({"gpu": 1, "set": ['serve.tokens=["t"]']})


def test_every_pod_mounts_the_config_and_the_token_secret() -> None:
    args = application(serve_config())["args"]
    config_path = PurePosixPath(args["config"])
    toml = tomllib.loads(manifest("ConfigMap")["data"][config_path.name])
    token_path = PurePosixPath(toml["serve"]["token_file"])
    config_map = manifest("ConfigMap")["metadata"]["name"]
    images = set()
    for group, template in pod_templates().items():
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        (container,) = template["spec"]["containers"]
        images.add(container["image"])
        mounted = {PurePosixPath(m["mountPath"]): volumes[m["name"]]
                   for m in container.get("volumeMounts", [])}  # fmt: skip
        assert mounted.get(config_path.parent, {}).get("configMap", {}).get("name") == config_map, (
            f"{group}: {config_path.parent} is not the ConfigMap {config_map}"
        )
        assert "secretName" in mounted.get(token_path.parent, {}).get("secret", {}), (
            f"{group}: {token_path.parent} is not a Secret"
        )
    assert len(images) == 1, f"one image for every pod: {images}"


def test_the_cluster_matches_the_ray_it_runs() -> None:
    cluster = manifest("RayService")["spec"]["rayClusterConfig"]
    major_minor = ".".join(ray.__version__.split(".")[:2])
    assert cluster["rayVersion"].startswith(major_minor + ".")
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_only_the_serve_port_is_public() -> None:
    policy = manifest("NetworkPolicy")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for group, template in pod_templates().items():
        labels = template.get("metadata", {}).get("labels", {})
        assert selector.items() <= labels.items(), f"{group}: the NetworkPolicy misses its pods"
        (container,) = template["spec"]["containers"]
        serve_ports = [p["containerPort"] for p in container["ports"] if p["name"] == "serve"]
        assert serve_ports == [PUBLIC_PORT], f"{group}: the serve port is not {PUBLIC_PORT}"
    assert "Ingress" in policy["spec"]["policyTypes"]
    rules = policy["spec"]["ingress"]
    assert rules
    for rule in rules:
        if "from" not in rule:  # from anywhere: the Serve port only
            assert rule.get("ports") == [{"protocol": "TCP", "port": PUBLIC_PORT}], rule
        if "ports" not in rule:  # every port: the cluster's own pods only
            assert rule.get("from") == [{"podSelector": {"matchLabels": selector}}], rule


def test_ingress_replicas_on_one_node_bind_successive_zeromq_ports() -> None:
    from realtime_erc.config import ConfigError
    from realtime_erc.serve.on_ray import shifted_endpoint

    assert shifted_endpoint("tcp://127.0.0.1:5556", 0) == "tcp://127.0.0.1:5556"
    assert shifted_endpoint("tcp://127.0.0.1:5556", 2) == "tcp://127.0.0.1:5558"
    assert shifted_endpoint("tcp://[::1]:5556", 1) == "tcp://[::1]:5557"
    assert shifted_endpoint("ipc:///run/erc", 0) == "ipc:///run/erc"
    with pytest.raises(ConfigError, match="tcp://HOST:PORT"):
        shifted_endpoint("ipc:///run/erc", 1)
