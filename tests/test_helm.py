"""The Helm chart helm/gateway, linted and rendered offline with the Helm v4 SDK (helm-python-sdk).

Every rendered manifest is validated against the Kubernetes JSON schemas (kubernetes-validate),
and the gateway.yaml rendered into the ConfigMap is checked by `gateway check-config`.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.fixtures.pki import Pki

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "gateway"
KUBE_VERSION = "1.30.0"
RELEASE = "shop"
NAMESPACE = "apps"
FULLNAME = f"{RELEASE}-gateway"
CONTAINER_TMP = "/tmp"  # noqa: S108 - a path inside the pod, not a temp file on this host
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def load_values(path: Path) -> dict[str, Any]:
    """A values file as a dict."""
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict)
    return data


SIDECAR = load_values(ROOT / "config" / "helm-sidecar-values.yaml")
STANDALONE_FULL = load_values(CHART / "ci" / "standalone-values.yaml")


def sidecar_full() -> dict[str, Any]:
    """The sidecar values file with a chart-created Secret and every optional part switched on."""
    values = copy.deepcopy(SIDECAR)
    values["secrets"] = {
        "data": {"introspection-client-secret": "dummy", "web-app-secret": "dummy"},
    }
    values["forwardAuth"] = {"enabled": True}
    values["serviceMonitor"] = {"enabled": True}
    values["networkPolicy"] = {"enabled": True, "adminFrom": [{"podSelector": {}}]}
    values["preStopSleepSeconds"] = 0
    values["tmpVolume"] = {"sizeLimit": None}
    values["extraVolumes"] = [{"name": "ca", "secret": {"secretName": "idp-ca"}}]
    values["extraVolumeMounts"] = [{"name": "ca", "mountPath": "/etc/gateway-ca", "readOnly": True}]
    return values


def standalone_tls() -> dict[str, Any]:
    """Standalone mode with HTTPS everywhere: the listeners from a cert-manager Secret (its
    ca.crt also the client CA), an https upstream with its CA and a client certificate,
    rediss:// with a CA, and TLS scraping."""
    return {
        "mode": "standalone",
        "upstream": {"url": "https://orders.internal:8443"},
        "upstreamTLS": {
            "app": {
                "caSecret": "orders-ca",
                "clientCertSecret": "gateway-client-tls",
                "serverName": "orders.internal",
            }
        },
        "tls": {
            "secretName": "gateway-tls",
            "minVersion": "1.3",
            "admin": True,
            "forwardAuth": True,
            "clientCA": {"secretName": "gateway-tls", "clientAuth": "required"},
        },
        "forwardAuth": {"enabled": True},
        "redis": {"url": "rediss://redis.redis.svc:6380/0", "tls": {"caSecret": "redis-ca"}},
        "serviceMonitor": {
            "enabled": True,
            "tlsConfig": {"ca": {"secret": {"name": "gateway-tls", "key": "ca.crt"}}},
        },
    }


def sidecar_tls() -> dict[str, Any]:
    """Sidecar mode with an HTTPS listener, a separate client-CA Secret, and an extra https
    upstream of config.upstreams trusted through a CA Secret."""
    values = copy.deepcopy(SIDECAR)
    values["tls"] = {
        "secretName": "orders-api-tls",
        "clientCA": {"secretName": "partner-ca", "key": "bundle.pem"},
    }
    values["config"]["upstreams"] = {"billing": {"url": "https://billing.internal"}}
    values["config"]["routes"] = [
        {"name": "billing", "path_prefix": "/billing", "upstream": "billing"},
        *values["config"]["routes"],
    ]
    values["upstreamTLS"] = {"billing": {"caSecret": "billing-ca", "caKey": "root.pem"}}
    return values


CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "sidecar": SIDECAR,
    "sidecar-full": sidecar_full(),
    "standalone-full": STANDALONE_FULL,
    "standalone-tls": standalone_tls(),
    "sidecar-tls": sidecar_tls(),
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    """The chart, loaded once for the module."""
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Render the chart offline and return every non-empty manifest, in template order."""
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for name in sorted(out):
        if not name.endswith((".yaml", ".yml")):
            continue
        docs.extend(d for d in yaml.safe_load_all(out[name]) if d)
    return docs


def notes(chart: helm.Chart, values: dict[str, Any]) -> str:
    """The rendered NOTES.txt."""
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for name, text in out.items() if name.endswith("NOTES.txt"))


def one(docs: list[dict[str, Any]], kind: str, name: str = FULLNAME) -> dict[str, Any]:
    """The single manifest of a kind and name."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> set[str]:
    """The kinds present in a rendering."""
    return {d["kind"] for d in docs}


def containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Deployment's containers by name."""
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["containers"]}


def gateway_config_text(docs: list[dict[str, Any]]) -> str:
    """gateway.yaml as rendered into the ConfigMap."""
    text = one(docs, "ConfigMap")["data"]["gateway.yaml"]
    assert isinstance(text, str)
    return text


def gateway_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """gateway.yaml as rendered into the ConfigMap, parsed."""
    data = yaml.safe_load(gateway_config_text(docs))
    assert isinstance(data, dict)
    return data


def checksum(docs: list[dict[str, Any]]) -> str:
    """The pod template's checksum/config annotation."""
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    value = annotations["checksum/config"]
    assert isinstance(value, str)
    return value


@pytest.mark.parametrize("case", CASES)
def test_chart_lints_clean(case: str) -> None:
    """`helm lint --strict` reports no error and no warning for the case's values."""
    report = helm.lint(CHART, CASES[case], strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


@pytest.mark.parametrize("case", CASES)
def test_manifests_validate_against_kubernetes_schemas(chart: helm.Chart, case: str) -> None:
    """Every rendered manifest validates against the Kubernetes 1.30 schemas (strict)."""
    docs = render(chart, CASES[case])
    assert {"ConfigMap", "Deployment", "Service", "ServiceAccount"} <= kinds(docs)
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            # A CRD: kubernetes-validate ships no schema for it; its shape is checked below.
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        assert doc["metadata"]["namespace"] == NAMESPACE
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


@pytest.mark.parametrize("case", CASES)
def test_rendered_config_passes_check_config(
    chart: helm.Chart, case: str, tmp_path: Path, pki: Pki
) -> None:
    """`gateway check-config` accepts the ConfigMap's gateway.yaml with its ${VAR}s set, and
    loads the TLS files it names as they would be mounted from the Secrets (real test
    certificates in place of the mount folder)."""
    docs = render(chart, CASES[case])
    text = gateway_config_text(docs)
    mounted = tmp_path / "gateway-tls"
    for found in sorted(set(re.findall(r"/etc/gateway-tls/[^\s'\"]+", text))):
        target = mounted / found.removeprefix("/etc/gateway-tls/")
        target.parent.mkdir(parents=True, exist_ok=True)
        source = (
            pki.server.cert_file
            if target.name == "tls.crt"
            else pki.server.key_file
            if target.name == "tls.key"
            else pki.ca_file
        )
        target.write_bytes(Path(source).read_bytes())
    assert ("tls" in case) == mounted.exists(), "the TLS cases, and only they, mount Secrets"
    text = text.replace("/etc/gateway-tls/", f"{mounted}/")
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    env = dict(os.environ)
    for name, _ in VAR.findall(text):
        env[name] = "redis://127.0.0.1:6379/0" if name == "REDIS_URL" else f"dummy-{name}"
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


@pytest.mark.parametrize("case", CASES)
def test_every_config_variable_comes_from_the_pod(chart: helm.Chart, case: str) -> None:
    """Each required ${VAR} of gateway.yaml is an env var of the gateway container, from the Secret."""
    docs = render(chart, CASES[case])
    values = CASES[case]
    env = {e["name"]: e for e in containers(docs)["gateway"].get("env", [])}
    existing = values.get("secrets", {}).get("existingSecret")
    secret_name = existing or FULLNAME
    chart_secret = None if existing else next((d for d in docs if d["kind"] == "Secret"), None)
    for name, default in VAR.findall(gateway_config_text(docs)):
        assert name in env, f"${{{name}}} has no env var in the gateway container"
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret_name
        assert bool(ref.get("optional")) == bool(default)
        if chart_secret is not None and not ref.get("optional"):
            assert ref["key"] in chart_secret["data"]


def test_values_schema_rejects_bad_values(chart: helm.Chart) -> None:
    """values.schema.json refuses an unknown mode and other impossible values."""
    chart.validate_schema({})
    chart.validate_schema(SIDECAR)
    chart.validate_schema(STANDALONE_FULL)
    bad_values: list[dict[str, Any]] = [
        {"mode": "daemonset"},
        {"mode": "sidecar"},  # no application image
        {"mode": "standalone", "upstream": {"url": "", "targets": []}},
        {"config": {"listen": {"port": 1}}},  # owned by the chart
        {"apps": [{"client_id": "web"}]},  # no secretKeys
        {"ports": {"http": 70000, "admin": 9901}},
        {"replicaCount": "two"},
        {"unknownTopLevelKey": True},
        {"tracing": {"sampleRatio": 2}},
        {"tracing": {"otlpEndpoint": "otel-collector:4318"}},  # not a URL
        {"config": {"tracing": {"sample_ratio": 1}}},  # the chart writes it from `tracing`
    ]
    for bad in bad_values:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(bad)
    with pytest.raises(helm.HelmValuesError, match="mode"):
        chart.render({"mode": "daemonset"}, name=RELEASE, namespace=NAMESPACE)


def test_schema_declares_mode_enum() -> None:
    """values.schema.json is draft-07 and declares `mode` as sidecar | standalone."""
    schema = yaml.safe_load((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["properties"]["mode"]["enum"] == ["sidecar", "standalone"]


def test_sidecar_service_targets_only_the_gateway_port(chart: helm.Chart) -> None:
    """In sidecar mode the Service reaches the gateway's listener, never the app or admin port."""
    docs = render(chart, SIDECAR)
    pods = containers(docs)
    assert set(pods) == {"orders-api", "gateway"}
    assert "ports" not in pods["orders-api"]
    gateway_ports = {p["name"]: p["containerPort"] for p in pods["gateway"]["ports"]}
    service = one(docs, "Service")
    targets = [p["targetPort"] for p in service["spec"]["ports"]]
    assert targets == ["http"]
    assert gateway_ports["http"] == 8080
    resolved = {gateway_ports[t] if isinstance(t, str) else t for t in targets}
    assert SIDECAR["app"]["port"] not in resolved
    assert gateway_ports["admin"] not in resolved
    assert service["spec"]["selector"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]


def test_sidecar_gateway_forwards_to_the_app_on_localhost(chart: helm.Chart) -> None:
    """In sidecar mode every route goes to http://127.0.0.1:<app.port>; no HPA or PDB is made."""
    docs = render(chart, SIDECAR)
    config = gateway_config(docs)
    assert config["upstreams"] == {
        "app": {"url": "http://127.0.0.1:5678", "connect_timeout": "2s", "timeout": "30s"}
    }
    assert {r["upstream"] for r in config["routes"]} == {"app"}
    assert config["listen"] == {"host": "0.0.0.0", "port": 8080}
    assert config["redis"]["url"].startswith("redis://")
    assert one(docs, "Deployment")["spec"]["replicas"] == SIDECAR["replicaCount"]
    assert not kinds(docs) & {"HorizontalPodAutoscaler", "PodDisruptionBudget"}


def test_standalone_has_autoscaler_disruption_budget_and_upstream(chart: helm.Chart) -> None:
    """Standalone mode renders gateway replicas, an autoscaling/v2 HPA and a policy/v1 PDB."""
    values = {"mode": "standalone", "upstream": {"url": "http://orders.shop.svc:9000"}}
    docs = render(chart, values)
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert list(containers(docs)) == ["gateway"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    config = gateway_config(docs)
    assert config["upstreams"]["app"]["url"] == "http://orders.shop.svc:9000"
    static = render(chart, {**values, "autoscaling": {"enabled": False}, "replicaCount": 4})
    assert one(static, "Deployment")["spec"]["replicas"] == 4
    assert "HorizontalPodAutoscaler" not in kinds(static)


@pytest.mark.parametrize("case", CASES)
def test_security_context_and_writable_tmp(chart: helm.Chart, case: str) -> None:
    """The pod runs as 10001, non-root, read-only root fs, no privilege escalation, no caps."""
    docs = render(chart, CASES[case])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    gateway = containers(docs)["gateway"]
    sc = gateway["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts[CONTAINER_TMP]["name"]]
    config_mount = mounts["/etc/gateway"]
    assert "subPath" not in config_mount, "a subPath mount never sees ConfigMap updates"
    assert volumes[config_mount["name"]]["configMap"]["name"] == FULLNAME
    assert gateway["args"] == ["serve", "--config", "/etc/gateway/gateway.yaml"]


def test_probes_use_the_admin_port(chart: helm.Chart) -> None:
    """Liveness probes /healthz and readiness /readyz on the admin port, which listens on the pod IP."""
    docs = render(chart, SIDECAR)
    gateway = containers(docs)["gateway"]
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert ports["admin"] == 9901
    assert gateway_config(docs)["admin"] == {"host": "0.0.0.0", "port": 9901}
    assert gateway["resources"]["requests"]["cpu"]


def test_checksum_annotation_follows_the_config(chart: helm.Chart) -> None:
    """checksum/config is the SHA-256 of gateway.yaml: it changes with config values only."""
    base = render(chart, SIDECAR)
    assert (
        checksum(base)
        == hashlib.sha256(gateway_config_text(base).rstrip("\n").encode()).hexdigest()
    )
    louder = copy.deepcopy(SIDECAR)
    louder["config"]["log"]["level"] = "debug"
    assert checksum(render(chart, louder)) != checksum(base)
    other_redis = {**SIDECAR, "redis": {"url": "redis://elsewhere:6379/1"}}
    assert checksum(render(chart, other_redis)) != checksum(base)
    more_pods = {**SIDECAR, "replicaCount": 5}
    assert checksum(render(chart, more_pods)) == checksum(base)
    off = render(chart, {**SIDECAR, "rollOnConfigChange": False})
    annotations = one(off, "Deployment")["spec"]["template"]["metadata"].get("annotations") or {}
    assert "checksum/config" not in annotations


def test_missing_secret_key_fails_the_render(chart: helm.Chart) -> None:
    """An introspection source whose secret is in no Secret stops the render with the key's name."""
    values = copy.deepcopy(SIDECAR)
    values["secrets"] = {"data": {"web-app-secret": "x"}}
    with pytest.raises(helm.HelmRenderError, match="introspection-client-secret"):
        render(chart, values)


def test_tracing_values_become_the_tracing_block(chart: helm.Chart) -> None:
    """`tracing.*` values are written as the config's `tracing:` block (the service name
    defaults to the release's), the collector's headers come from the Secret as the SDK's
    OTEL_EXPORTER_OTLP_TRACES_HEADERS; without `tracing.enabled` there is no block."""
    docs = render(chart, STANDALONE_FULL)
    assert gateway_config(docs)["tracing"] == {
        "otlp_endpoint": "http://otel-collector.observability:4318",
        "service_name": FULLNAME,
        "sample_ratio": 0.01,
        "max_queue_size": 2048,
        "export_timeout": "10s",
    }
    env = {e["name"]: e for e in containers(docs)["gateway"]["env"]}
    ref = env["OTEL_EXPORTER_OTLP_TRACES_HEADERS"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": FULLNAME, "key": "otlp-headers"}
    assert "tracing" not in gateway_config(render(chart, SIDECAR))
    propagate_only = {**SIDECAR, "tracing": {"enabled": True, "serviceName": "edge"}}
    assert gateway_config(render(chart, propagate_only))["tracing"]["service_name"] == "edge"
    assert "otlp_endpoint" not in gateway_config(render(chart, propagate_only))["tracing"]


def test_optional_parts_are_off_by_default(chart: helm.Chart) -> None:
    """ServiceMonitor, NetworkPolicy, the metrics Service and the Secret are opt-in."""
    docs = render(chart, {})
    assert not kinds(docs) & {"ServiceMonitor", "NetworkPolicy", "Secret"}
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Service"] == [FULLNAME]


def test_service_monitor_scrapes_the_metrics_service(chart: helm.Chart) -> None:
    """The ServiceMonitor selects the admin-port Service and scrapes /metrics there."""
    docs = render(chart, STANDALONE_FULL)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "admin"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    selected = [
        d
        for d in docs
        if d["kind"] == "Service"
        and monitor["spec"]["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected] == [f"{FULLNAME}-metrics"]
    assert selected[0]["spec"]["ports"][0]["targetPort"] == "admin"


def test_network_policy_opens_only_gateway_ports(chart: helm.Chart) -> None:
    """The NetworkPolicy admits the gateway listeners, and the admin port only from adminFrom."""
    docs = render(chart, STANDALONE_FULL)
    policy = one(docs, "NetworkPolicy")
    ports = [[p["port"] for p in rule["ports"]] for rule in policy["spec"]["ingress"]]
    assert ports == [["http", "forward-auth"], ["admin"]]
    assert all(rule.get("from") for rule in policy["spec"]["ingress"])
    sidecar_policy = one(render(chart, SIDECAR), "NetworkPolicy")
    assert [[p["port"] for p in r["ports"]] for r in sidecar_policy["spec"]["ingress"]] == [
        ["http"]
    ]


def test_notes_warn_about_replicas_without_redis(chart: helm.Chart) -> None:
    """NOTES.txt names the mode and warns when several replicas share no Redis."""
    assert "WARNING" in notes(chart, {})
    text = notes(chart, SIDECAR)
    assert "mode: sidecar" in text
    assert "WARNING" not in text


def test_chart_user_matches_the_image_user(chart: helm.Chart) -> None:
    """The chart's runAsUser is the Dockerfile's USER, so runAsNonRoot holds for the image."""
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    users = re.findall(r"^USER\s+(\d+)", dockerfile, re.MULTILINE)
    assert users, "the Dockerfile has no numeric USER"
    assert chart.values["securityContext"]["runAsUser"] == int(users[-1])
    assert chart.values["podSecurityContext"]["runAsUser"] == int(users[-1])
    assert chart.metadata["apiVersion"] == "v2"


def _mounts(docs: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """The gateway container's Secret mounts: mount path -> (volume name, Secret name)."""
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    out = {}
    for m in containers(docs)["gateway"]["volumeMounts"]:
        secret = volumes[m["name"]].get("secret")
        if secret is not None:
            assert m.get("readOnly") is True
            assert "subPath" not in m, "a subPath mount never sees Secret updates"
            out[m["mountPath"]] = (m["name"], secret["secretName"])
    return out


def _secret_of(docs: list[dict[str, Any]], path: str) -> str:
    """The Secret whose mount holds the file at `path`."""
    mounts = _mounts(docs)
    folder = path.rsplit("/", 1)[0]
    assert folder in mounts, f"{path} is in no mounted Secret"
    return mounts[folder][1]


def test_listener_tls_from_a_kubernetes_tls_secret(chart: helm.Chart) -> None:
    """tls.secretName mounts the kubernetes.io/tls Secret and renders listen.tls (and the
    admin / forward-auth listeners' tls) with its tls.crt and tls.key; the client CA is its
    ca.crt (cert-manager's shape); probes switch to HTTPS, Prometheus scrapes over TLS."""
    docs = render(chart, standalone_tls())
    config = gateway_config(docs)
    listen = config["listen"]["tls"]
    assert _secret_of(docs, listen["cert_file"]) == "gateway-tls"
    assert listen["cert_file"].endswith("/tls.crt")
    assert listen["key_file"].endswith("/tls.key")
    assert listen["min_version"] == "1.3"
    assert listen["client_ca_file"].endswith("/ca.crt")
    assert _secret_of(docs, listen["client_ca_file"]) == "gateway-tls"
    assert listen["client_auth"] == "required"
    for key in ("admin", "forward_auth"):
        tls = config[key]["tls"]
        assert (tls["cert_file"], tls["key_file"]) == (listen["cert_file"], listen["key_file"])
        assert "client_ca_file" not in tls
    gateway = containers(docs)["gateway"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert gateway[probe]["httpGet"]["scheme"] == "HTTPS"
        assert gateway[probe]["httpGet"]["port"] == "admin"
    endpoint = one(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {"ca": {"secret": {"name": "gateway-tls", "key": "ca.crt"}}}
    assert f"https://{FULLNAME}.{NAMESPACE}.svc" in notes(chart, standalone_tls())


def test_listener_tls_in_sidecar_mode_with_a_separate_client_ca(chart: helm.Chart) -> None:
    """Sidecar mode: the same listener rendering; a client CA from another Secret is mounted
    apart; the admin listener stays HTTP (probes keep scheme HTTP)."""
    docs = render(chart, sidecar_tls())
    config = gateway_config(docs)
    listen = config["listen"]["tls"]
    assert _secret_of(docs, listen["cert_file"]) == "orders-api-tls"
    assert _secret_of(docs, listen["key_file"]) == "orders-api-tls"
    assert listen["client_ca_file"].endswith("/bundle.pem")
    assert _secret_of(docs, listen["client_ca_file"]) == "partner-ca"
    assert listen["client_auth"] == "optional"
    assert "tls" not in config["admin"]
    gateway = containers(docs)["gateway"]
    assert "scheme" not in gateway["livenessProbe"]["httpGet"]
    assert set(containers(docs)) == {"orders-api", "gateway"}
    app_mounts = containers(docs)["orders-api"].get("volumeMounts", [])
    assert not [m for m in app_mounts if m["name"].startswith("tls-")], "the app sees no keys"


def test_upstream_and_redis_ca_secrets(chart: helm.Chart) -> None:
    """upstreamTLS.<name> mounts the CA (and client certificate) Secrets and renders them
    into upstreams.<name>.tls; redis.tls likewise into redis.tls."""
    docs = render(chart, standalone_tls())
    config = gateway_config(docs)
    tls = config["upstreams"]["app"]["tls"]
    assert config["upstreams"]["app"]["url"] == "https://orders.internal:8443"
    assert _secret_of(docs, tls["ca_file"]) == "orders-ca"
    assert tls["ca_file"].endswith("/ca.crt")
    assert _secret_of(docs, tls["cert_file"]) == "gateway-client-tls"
    assert _secret_of(docs, tls["key_file"]) == "gateway-client-tls"
    assert tls["server_name"] == "orders.internal"
    redis = config["redis"]
    assert redis["url"].startswith("rediss://")
    assert _secret_of(docs, redis["tls"]["ca_file"]) == "redis-ca"

    sidecar = gateway_config(render(chart, sidecar_tls()))
    billing = sidecar["upstreams"]["billing"]["tls"]
    assert billing["ca_file"].endswith("/root.pem")
    assert _secret_of(render(chart, sidecar_tls()), billing["ca_file"]) == "billing-ca"
    assert "tls" not in sidecar["upstreams"]["app"]  # http://127.0.0.1: no TLS


def test_tls_is_off_by_default(chart: helm.Chart) -> None:
    """Without TLS values nothing is mounted and every listener is plain HTTP."""
    for case in ("defaults", "sidecar", "standalone-full"):
        docs = render(chart, CASES[case])
        config = gateway_config(docs)
        assert _mounts(docs) == {}
        assert "tls" not in config["listen"]
        assert "tls" not in config["admin"]
        assert "scheme" not in containers(docs)["gateway"]["readinessProbe"]["httpGet"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"upstreamTLS": {"app": {"caSecret": "ca"}}},  # upstream.url is http:// by default
            "is not https://",
        ),
        (
            {"upstream": {"url": "https://x"}, "upstreamTLS": {"nope": {"caSecret": "ca"}}},
            "no upstream named",
        ),
        ({"tls": {"admin": True}}, "need tls.secretName"),
    ],
)
def test_tls_values_that_cannot_apply_fail_the_render(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)


def test_values_schema_rejects_bad_tls_values(chart: helm.Chart) -> None:
    """values.schema.json checks the TLS values."""
    chart.validate_schema(standalone_tls())
    chart.validate_schema(sidecar_tls())
    bad_values: list[dict[str, Any]] = [
        {"tls": {"minVersion": "1.1"}},
        {"tls": {"clientCA": {"clientAuth": "sometimes"}}},
        {"tls": {"secret": "x"}},
        {"upstreamTLS": {"app": {"caFile": "/x"}}},
        {"redis": {"tls": {"caSecret": "Not_A_Name"}}},
        {"upstream": {"url": "ftp://x"}},
    ]
    for bad in bad_values:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(bad)


def test_tls_client_auth_source_gets_no_secret(chart: helm.Chart) -> None:
    """An introspection source with auth_method: tls_client_auth authenticates by its client
    certificate: the chart adds no client_secret (and needs no Secret key) for it."""
    values = copy.deepcopy(SIDECAR)
    values["secrets"] = {"data": {"web-app-secret": "x"}}
    values["extraVolumes"] = [{"name": "idp-client", "secret": {"secretName": "idp-client"}}]
    values["extraVolumeMounts"] = [{"name": "idp-client", "mountPath": "/etc/gateway-idp"}]
    values["config"]["tokens"]["sources"] = [
        {
            "type": "introspection",
            "url": "https://idp.example.com/oauth2/introspect",
            "client_id": "orders-api-gateway",
            "auth_method": "tls_client_auth",
            "tls": {
                "cert_file": "/etc/gateway-idp/tls.crt",
                "key_file": "/etc/gateway-idp/tls.key",
            },
        }
    ]
    docs = render(chart, values)
    [source] = gateway_config(docs)["tokens"]["sources"]
    assert "client_secret" not in source
    env = {e["name"] for e in containers(docs)["gateway"].get("env", [])}
    assert not any(name.startswith("INTROSPECTION_CLIENT_SECRET") for name in env)


def test_rate_limits_pass_through_to_the_config(chart: helm.Chart) -> None:
    """config.rate_limits and routes[].rate_limit go into gateway.yaml as written; an app's
    rate_limits stay with its entry next to the secrets the chart fills in."""
    cfg = gateway_config(render(chart, STANDALONE_FULL))
    assert cfg["rate_limits"]["per_client"] == {"key": ["client_id"], "rate": "100/s", "burst": 200}
    assert cfg["routes"][-1]["rate_limit"] == ["per_client", "per_ip"]
    app = cfg["apps"][0]
    assert app["rate_limits"] == {"per_client": {"rate": "500/s", "burst": 1000}}
    assert app["secrets"] == ["${APP_SECRET_0_0}", "${APP_SECRET_0_1:-}"]


def test_values_schema_rejects_a_bad_app_rate(chart: helm.Chart) -> None:
    values = copy.deepcopy(STANDALONE_FULL)
    values["apps"][0]["rate_limits"] = {"per_client": {"rate": "fast"}}
    with pytest.raises(Exception, match="rate"):
        render(chart, values)
