"""deploy/kubernetes/: valid for Kubernetes, and consistent with the Dockerfile.

Every built-in object is validated with kubernetes-validate (PyPI; its
bundled schemas, so offline) in strict mode (an unknown or misspelt field is
an error) against the oldest Kubernetes the manifests are meant for and the
newest the package knows. The PodMonitor is a Prometheus Operator CRD, whose
schema kubernetes-validate does not carry (it would only warn): it is checked
against the part of the CRD's schema it uses, written out below.

Then what no schema can see: the probes run `fastecho probe`, the drain fits
terminationGracePeriodSeconds, the ports agree from the Dockerfile's EXPOSE
to the PodMonitor, the user is the image's, and every selector selects the
pods.
"""

from __future__ import annotations

import pytest

import dockerfile

yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate (the test extra)")

MANIFESTS = dockerfile.ROOT / "deploy" / "kubernetes"
OLDEST_KUBERNETES = "1.31"  # the oldest minor still maintained upstream when these were written
RUNTIME = dockerfile.parse()[-1]


def _load() -> dict[str, dict]:
    objects = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(docs) == 1, f"{path.name}: one object per file"
        objects[path.name] = docs[0]
    return objects


OBJECTS = _load()
BY_KIND = {o["kind"]: o for o in OBJECTS.values()}
DEPLOYMENT = BY_KIND["Deployment"]
POD = DEPLOYMENT["spec"]["template"]["spec"]
CONTAINER = POD["containers"][0]
POD_LABELS = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]


def test_kustomization_lists_every_manifest():
    kustomization = BY_KIND["Kustomization"]
    others = sorted(name for name, o in OBJECTS.items() if o["kind"] != "Kustomization")
    assert sorted(kustomization["resources"]) == others
    assert sorted(BY_KIND) == sorted(["Deployment", "Service", "PodDisruptionBudget",
                                      "HorizontalPodAutoscaler", "PodMonitor", "Kustomization"])


BUILT_IN = [name for name, o in OBJECTS.items() if o["kind"] not in ("Kustomization", "PodMonitor")]


@pytest.mark.parametrize("name", BUILT_IN)
def test_valid_for_kubernetes(name):
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate is not installed (in the test extra)")
    from kubernetes_validate.utils import latest_version

    newest = ".".join(latest_version().split(".")[:2])
    for version in dict.fromkeys([OLDEST_KUBERNETES, newest]):
        try:
            validated = kv.validate(OBJECTS[name], version, strict=True)
        except kv.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{name} is not valid for Kubernetes {version}: {where}: {e.message}")
        assert validated == version


def test_validation_catches_a_misspelt_field():
    """Strict mode is what makes the validation worth having: a typo is an error."""
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate is not installed (in the test extra)")
    broken = yaml.safe_load((MANIFESTS / "deployment.yaml").read_text())
    security = broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    security["readOnlyRootFilesytem"] = security.pop("readOnlyRootFilesystem")
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, OLDEST_KUBERNETES, strict=True)


# The parts of monitoring.coreos.com/v1 PodMonitor that podmonitor.yaml uses,
# from the Prometheus Operator's CRD; anything else is refused so a typo
# does not pass unnoticed.
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
PODMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": LABELS},
        },
        "spec": {
            "type": "object", "required": ["selector", "podMetricsEndpoints"], "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "additionalProperties": False,
                             "properties": {"matchLabels": LABELS}},
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "podMetricsEndpoints": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


def test_podmonitor_matches_the_crd():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema comes with kubernetes-validate")
    jsonschema.validate(BY_KIND["PodMonitor"], PODMONITOR_SCHEMA)
    endpoint = BY_KIND["PodMonitor"]["spec"]["podMetricsEndpoints"][0]
    assert dockerfile.seconds(endpoint["scrapeTimeout"]) <= dockerfile.seconds(endpoint["interval"])


# ---------------------------------------------------------------- what schemas cannot see


def _args() -> list[str]:
    return list(CONTAINER.get("command") or RUNTIME.last("ENTRYPOINT").exec_form()) + \
        list(CONTAINER.get("args") or RUNTIME.last("CMD").exec_form())


def test_container_runs_the_images_command():
    assert "command" not in CONTAINER, "keep the image's ENTRYPOINT (fastecho serve)"
    assert CONTAINER["args"] == RUNTIME.last("CMD").exec_form(), \
        "the Deployment spells out the Dockerfile's CMD; change both together"


def test_drain_fits_the_termination_grace_period():
    _, _, grace = dockerfile.serve_settings(_args())
    assert grace is not None, "--grace is explicit"
    pre_stop = CONTAINER["lifecycle"]["preStop"]
    if "exec" in pre_stop:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep" and len(command) == 2, command
        pause = float(command[1])
    else:
        pause = float(pre_stop["sleep"]["seconds"])
    assert pause >= 5, "time for the endpoint removal to reach kube-proxy and load balancers"
    # preStop, then SIGTERM and up to --grace of drain, then exit: all before SIGKILL.
    assert pause + grace < POD["terminationGracePeriodSeconds"], (pause, grace)
    assert RUNTIME.last("STOPSIGNAL").text == "SIGTERM", "the kubelet sends SIGTERM"


@pytest.mark.parametrize("kind", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probes_run_fastecho_probe(kind):
    probe = CONTAINER[kind]
    command = probe["exec"]["command"]
    assert command[:2] == ["fastecho", "probe"], command
    url = command[2]
    listens, _, _ = dockerfile.serve_settings(_args())
    assert any(url == f"{l.scheme}://127.0.0.1:{l.port}" for l in listens), f"{url} is not a listener"
    timeout = float(command[command.index("--timeout") + 1])
    assert timeout < probe["timeoutSeconds"], "the probe gives up before the kubelet does"
    assert probe["periodSeconds"] >= probe["timeoutSeconds"]


def test_liveness_tolerates_a_slow_moment():
    live = CONTAINER["livenessProbe"]
    assert live["failureThreshold"] * live["periodSeconds"] >= 20, "a restart only after ~30 s of failures"
    assert "startupProbe" in CONTAINER, "liveness starts once the server is up"


def _container_ports() -> dict[str, tuple[int, str]]:
    return {p["name"]: (p["containerPort"], p.get("protocol", "TCP")) for p in CONTAINER["ports"]}


def test_ports_agree_from_dockerfile_to_podmonitor():
    listens, metrics_port, _ = dockerfile.serve_settings(_args())
    served = {(l.port, "UDP" if l.scheme == "udp" else "TCP") for l in listens} | {(metrics_port, "TCP")}
    named = _container_ports()
    assert set(named.values()) == served == dockerfile.exposed(RUNTIME)
    assert all(len(name) <= 15 for name in named), "port names are IANA_SVC_NAMEs: at most 15 characters"

    service = BY_KIND["Service"]
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        assert target in named, f"Service port {port['name']}: no container port named {target}"
        assert named[target][1] == port.get("protocol", "TCP")
    assert {(p["port"], p.get("protocol", "TCP")) for p in service["spec"]["ports"]} == served, \
        "the Service carries every listener (TCP and UDP) and the metrics port"

    endpoint = BY_KIND["PodMonitor"]["spec"]["podMetricsEndpoints"][0]
    assert named[endpoint["port"]] == (metrics_port, "TCP")
    assert endpoint["path"] == "/metrics"
    args = _args()
    assert args[args.index("--metrics-host") + 1] in ("0.0.0.0", "::"), "Prometheus scrapes the pod's IP"


def test_security_context_matches_the_image():
    uid, gid = dockerfile.user_ids(RUNTIME)
    pod = POD["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == uid and pod["runAsGroup"] == gid
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    container = CONTAINER["securityContext"]
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"] and "add" not in container["capabilities"]
    assert POD["automountServiceAccountToken"] is False
    # Every listener is above 1024: no NET_BIND_SERVICE needed.
    assert all(port > 1024 for port, _ in _container_ports().values())


def test_resources_and_threads():
    resources = CONTAINER["resources"]
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[part]), part
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    threads = {e["name"]: e for e in CONTAINER["env"]}["FASTECHO_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert threads["resource"] == "limits.cpu" and threads["containerName"] == CONTAINER["name"]
    assert "--max-memory" not in _args(), "its default, a quarter of the memory limit, is the one meant"


def test_selectors_select_the_pods():
    def selects(match_labels: dict) -> bool:
        return bool(match_labels) and all(POD_LABELS.get(k) == v for k, v in match_labels.items())

    assert selects(DEPLOYMENT["spec"]["selector"]["matchLabels"])
    assert selects(BY_KIND["Service"]["spec"]["selector"])
    assert selects(BY_KIND["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"])
    assert selects(BY_KIND["PodMonitor"]["spec"]["selector"]["matchLabels"])
    for spread in POD["topologySpreadConstraints"]:
        assert selects(spread["labelSelector"]["matchLabels"])


def test_disruption_budget_and_autoscaler_fit_together():
    hpa = BY_KIND["HorizontalPodAutoscaler"]["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", DEPLOYMENT["metadata"]["name"])
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in CONTAINER["resources"]["requests"], "CPU utilization is measured against the request"
    pdb = BY_KIND["PodDisruptionBudget"]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert hpa["minReplicas"] >= 2 and DEPLOYMENT["spec"]["replicas"] >= hpa["minReplicas"]
    rollout = DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]
    assert rollout["maxUnavailable"] == 0, "a rollout keeps every replica serving"


def test_writable_paths_are_volumes():
    mounts = {m["mountPath"]: m["name"] for m in CONTAINER.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in POD.get("volumes", [])}
    assert set(mounts.values()) <= set(volumes)
    assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]]
    assert "--log-dir" not in _args() and "--pidfile" not in _args(), \
        "the root filesystem is read-only: log to stderr, no pid file"

