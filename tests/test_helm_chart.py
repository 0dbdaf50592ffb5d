"""The Helm chart (deploy/helm/hookgate), rendered by Helm's own Go engine through helm-python-sdk:
lint, schema, every manifest against the Kubernetes API schemas of a pinned version, the toggles,
the chart's refusals of contradictory values, the container commands parsed by the real CLI, and
the monitoring objects checked against the files and the metrics they come from. No cluster."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import msgspec
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from gateway import cli
from gateway.settings import Settings, settings_from_env
from tests.support.chart import CHART, REQUIRED, ROOT, merge, one, render
from tests.support.promql import PROMETHEUS_SERIES, parse_exposition, problems_in, scrape_app

GRAFANA = ROOT / "deploy" / "grafana"
KUBERNETES = "1.35.0"  # the API version every built-in manifest is validated against (strict: no unknown fields)
SECRET_SETTINGS = {"secret_key", "database_url", "redis_url", "operator_key"}
CHART_SETTINGS = {"mode", "public_url", "worker_metrics_host", "worker_metrics_port"}
EVERYTHING_ON = {
    "ingress": {"enabled": True, "tls": [{"secretName": "hookgate-tls", "hosts": ["hooks.example.com"]}], "hosts": ["hooks.example.com"]},
    "gateway": {"autoscaling": {"enabled": True}},
    "worker": {"autoscaling": {"enabled": True}},
    "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}},
}


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def refusal(chart: Any, overrides: dict[str, Any], *, base: dict[str, Any] = REQUIRED) -> str:
    with pytest.raises(helm.HelmRenderError) as raised:
        render(chart, overrides, base=base)
    return str(raised.value)


def kinds(documents: list[dict[str, Any]]) -> list[str]:
    return sorted(document["kind"] for document in documents)


def containers(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Container by the component label of its workload (gateway, worker, migrations)."""
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: container
        for d in documents
        if d["kind"] in {"Deployment", "Job"}
        for container in d["spec"]["template"]["spec"]["containers"]
    }


# --- Helm's own checks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, EVERYTHING_ON], ids=["defaults", "everything-on"])
def test_helm_lint_is_clean(overrides: dict[str, Any]) -> None:
    report = helm.lint(CHART, merge(REQUIRED, overrides), strict=True, kube_version=f"v{KUBERNETES}")
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report  # info (e.g. "icon is recommended") only


def test_helm_lint_reports_a_broken_template(tmp_path: Path) -> None:
    """The lint check above can fail: a copy of the chart with an unclosed action does not pass."""
    broken = tmp_path / "hookgate"
    shutil.copytree(CHART, broken, symlinks=False)
    (broken / "templates" / "broken.yaml").write_text("kind: ConfigMap\nname: {{ .Values.image.repository\n")
    report = helm.lint(broken, REQUIRED, strict=True)
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"])


def test_the_schema_accepts_the_defaults_and_rejects_bad_values(chart: Any) -> None:
    chart.validate_schema(REQUIRED)
    chart.validate_schema(merge(REQUIRED, EVERYTHING_ON))
    bad = [  # (values, what Helm's message names)
        ({"gateway": {"replicas": "two"}}, "/gateway/replicas"),
        ({"worker": {"metricsPort": 0}}, "/worker/metricsPort"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"config": {"HOOKGATE_NO_SUCH_SETTING": "1"}}, "HOOKGATE_NO_SUCH_SETTING"),
        ({"config": {"HOOKGATE_OTEL_EXPORTER": "zipkin"}}, "/config/HOOKGATE_OTEL_EXPORTER"),
        ({"config": {"HOOKGATE_INGEST_LIMIT_LOW": "fast"}}, "/config/HOOKGATE_INGEST_LIMIT_LOW"),
        ({"config": {"HOOKGATE_SECRET_KEY": "belongs-in-secrets"}}, "HOOKGATE_SECRET_KEY"),
        ({"secrets": {"redisUrl": "http://not-redis"}}, "/secrets/redisUrl"),
        ({"publicUrl": "hooks.example.com"}, "/publicUrl"),
        ({"gatway": {"replicas": 2}}, "gatway"),
    ]
    for values, named in bad:
        with pytest.raises(helm.HelmValuesError, match=re.escape(named)):
            chart.validate_schema(merge(REQUIRED, values))


def test_the_schema_knows_every_setting_exactly_as_the_code_declares_it() -> None:
    """`config` offers every HOOKGATE_* setting the chart does not own, with the code's own type and
    constraints (msgspec's schema of Settings): a new setting fails here until the chart offers it."""
    declared = msgspec.json.schema(Settings)["$defs"]["Settings"]["properties"]
    offered = json.loads((CHART / "values.schema.json").read_text())["properties"]["config"]["properties"]
    expected = {f"HOOKGATE_{name.upper()}": spec for name, spec in declared.items() if name not in SECRET_SETTINGS | CHART_SETTINGS}
    missing = {key: expected[key] for key in expected.keys() - offered.keys()}
    assert not missing, "add to values.schema.json config.properties:\n" + json.dumps(missing, indent=2)
    assert offered == expected


# --- what renders ----------------------------------------------------------------------------------------


def _validate_builtin(documents: list[dict[str, Any]]) -> list[str]:
    """Every manifest of a built-in kind validated against the pinned API schemas; returns the CRD kinds
    kubernetes-validate has no schema for (checked separately below)."""
    custom = []
    for document in documents:
        try:
            kubernetes_validate.validate(document, KUBERNETES, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            custom.append(document["kind"])
    return custom


def test_the_defaults_render_valid_manifests(chart: Any) -> None:
    documents = render(chart)
    assert kinds(documents) == [
        "ConfigMap", "Deployment", "Deployment", "Job", "PodDisruptionBudget", "PodDisruptionBudget",
        "Secret", "Secret", "Service", "Service", "ServiceAccount",
    ]  # fmt: skip
    assert _validate_builtin(documents) == []


def test_everything_switched_on_renders_valid_manifests(chart: Any) -> None:
    documents = render(chart, EVERYTHING_ON)
    assert sorted(_validate_builtin(documents)) == ["PrometheusRule", "ServiceMonitor"]
    assert {"Ingress", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"} <= set(kinds(documents))


def test_the_validator_rejects_a_wrong_manifest(chart: Any) -> None:
    """The validation above can fail: a Deployment with a misspelt field does not pass."""
    deployment = copy.deepcopy(one(render(chart), "Deployment", "hg-hookgate-worker"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


@pytest.mark.parametrize(
    ("values", "kind", "count"),
    [
        ({"ingress": {"enabled": True}}, "Ingress", 1),
        ({"gateway": {"autoscaling": {"enabled": True}}}, "HorizontalPodAutoscaler", 1),
        ({"gateway": {"autoscaling": {"enabled": True}}, "worker": {"autoscaling": {"enabled": True}}}, "HorizontalPodAutoscaler", 2),
        ({"metrics": {"serviceMonitor": {"enabled": True}}}, "ServiceMonitor", 1),
        ({"metrics": {"prometheusRule": {"enabled": True}}}, "PrometheusRule", 1),
        ({"metrics": {"dashboard": {"enabled": True}}}, "ConfigMap", 2),
        ({"migrations": {"enabled": False}}, "Job", 0),
        ({"gateway": {"pdb": {"enabled": False}}, "worker": {"pdb": {"enabled": False}}}, "PodDisruptionBudget", 0),
        ({"secrets": {"existingSecret": "hookgate-managed", "secretKey": "", "databaseUrl": "", "redisUrl": ""}}, "Secret", 0),
    ],
)
def test_toggles_add_and_remove_objects(chart: Any, values: dict[str, Any], kind: str, count: int) -> None:
    assert kinds(render(chart, values)).count(kind) == count


def test_defaults_have_no_optional_objects(chart: Any) -> None:
    assert not {"Ingress", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"} & set(kinds(render(chart)))


def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(chart: Any) -> None:
    documents = render(chart, {"worker": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12}}})
    assert "replicas" not in one(documents, "Deployment", "hg-hookgate-worker")["spec"]
    assert one(documents, "Deployment", "hg-hookgate-gateway")["spec"]["replicas"] == 2
    hpa = one(documents, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "hg-hookgate-worker"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)


def test_the_migration_job_is_a_hook_before_install_and_upgrade(chart: Any) -> None:
    documents = render(chart)
    job = one(documents, "Job")
    hook = job["metadata"]["annotations"]
    assert hook["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert hook["helm.sh/hook-delete-policy"] == "before-hook-creation"
    # The release's Secret does not exist during a pre-install hook: the Job reads its own hook Secret, made first.
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    source = env[0]["valueFrom"]["secretKeyRef"]
    hook_secret = one(documents, "Secret", source["name"])
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(hook["helm.sh/hook-weight"])
    assert hook_secret["stringData"][source["key"]] == REQUIRED["secrets"]["databaseUrl"]
    assert "serviceAccountName" not in job["spec"]["template"]["spec"]  # the release's ServiceAccount does not exist yet either
    managed = render(chart, {"secrets": {"existingSecret": "hookgate-managed", "secretKey": "", "databaseUrl": "", "redisUrl": ""}})
    assert one(managed, "Job")["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "hookgate-managed"


def test_pods_run_non_root_on_a_read_only_root_filesystem(chart: Any) -> None:
    for document in render(chart):
        if document["kind"] not in {"Deployment", "Job"}:
            continue
        pod = document["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False  # no HOOKGATE_SERVICE_HOST & co. for the settings to warn about
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # the only writable path


def test_probes_use_readyz_and_healthz_on_the_served_ports(chart: Any) -> None:
    documents = render(chart, {"gateway": {"port": 8080}, "worker": {"metricsPort": 9200}})
    for component, port in (("gateway", 8080), ("worker", 9200)):
        container = containers(documents)[component]
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert named[container["readinessProbe"]["httpGet"]["port"]] == port
        assert named[container["livenessProbe"]["httpGet"]["port"]] == port
    config = one(documents, "ConfigMap")["data"]
    assert config["HOOKGATE_WORKER_METRICS_PORT"] == "9200" and config["HOOKGATE_WORKER_METRICS_HOST"] == "0.0.0.0"


# --- the chart's own refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"scheduler": {"replicas": 2}}, "scheduler.replicas is 2, but Hookgate has no scheduler process"),
        ({"scheduler": {"replicas": 1}}, "scheduler.replicas is 1, but Hookgate has no scheduler process"),
        ({"worker": {"replicas": 0, "pdb": {"enabled": False}}}, "worker.replicas must be at least 1"),
        ({"worker": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}}}, "worker.autoscaling.minReplicas (5) is above maxReplicas (3)"),
        ({"gateway": {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}}}, "needs gateway.resources.requests.cpu"),
        ({"gateway": {"replicas": 1}}, "gateway.pdb.minAvailable (1) must be below the gateway replica count (1)"),
        ({"worker": {"autoscaling": {"enabled": True, "minReplicas": 2}, "pdb": {"minAvailable": 2}}}, "worker.pdb.minAvailable (2)"),
        ({"config": {"HOOKGATE_DELIVERY_TIMEOUT": 60}}, "worker.terminationGracePeriodSeconds (45) must be at least HOOKGATE_DELIVERY_TIMEOUT (60) + 10 s"),
        ({"worker": {"terminationGracePeriodSeconds": 20}}, "worker.terminationGracePeriodSeconds (20)"),
        ({"config": {"HOOKGATE_LEASE_SECONDS": 15}}, "HOOKGATE_LEASE_SECONDS (15) must exceed HOOKGATE_DELIVERY_TIMEOUT (15)"),
        ({"secrets": {"existingSecret": "managed"}}, "secrets.existingSecret (managed) is set together with"),
        ({"secrets": {"databaseUrl": "sqlite+aiosqlite:///hookgate.db"}}, "must be a postgresql+asyncpg:// URL"),
        ({"ingress": {"enabled": True, "hosts": []}}, "ingress.enabled needs at least one host"),
    ],
)
def test_contradictory_values_fail_with_the_charts_message(chart: Any, values: dict[str, Any], message: str) -> None:
    assert message in refusal(chart, values)


def test_a_values_file_with_two_schedulers_fails_to_render(chart: Any, tmp_path: Path) -> None:
    values_file = tmp_path / "two-schedulers.yaml"
    values_file.write_text("scheduler:\n  replicas: 2\nworker:\n  replicas: 3\n")
    values = helm.values_from_yaml(values_file.read_text())  # Helm's own reading of a -f file
    message = refusal(chart, values)
    assert "hookgate: scheduler.replicas is 2, but Hookgate has no scheduler process to run" in message
    assert "scale worker.replicas" in message


def test_missing_connection_secrets_are_named(chart: Any) -> None:
    message = refusal(chart, {}, base={})
    assert "secrets.secretKey, secrets.databaseUrl, secrets.redisUrl required" in message
    message = refusal(chart, {"secrets": {"redisUrl": ""}})
    assert "hookgate: secrets.redisUrl required" in message


# --- the containers run the real CLI ---------------------------------------------------------------------


def _dockerfile() -> DockerfileParser:
    return DockerfileParser(str(ROOT / "Dockerfile"))


def _image_entrypoint() -> list[str]:
    return json.loads(next(i["value"] for i in reversed(_dockerfile().structure) if i["instruction"] == "ENTRYPOINT"))


def test_container_commands_are_the_real_cli(chart: Any) -> None:
    """Each container's command is the image's entry point and its args parse, with the real argparse
    parser, to the subcommand the workload needs, with the values' host, port and process count."""
    documents = render(chart, {"gateway": {"port": 8080, "processes": 4}})
    parser = cli.build_parser()
    expected = {"gateway": cli._serve, "worker": cli._worker, "migrations": cli._migrate}  # noqa: SLF001
    found = containers(documents)
    assert found.keys() == expected.keys()
    for component, container in found.items():
        assert container["command"] == _image_entrypoint() == ["hookgate"]
        args = parser.parse_args(container["args"])
        assert args.run is expected[component], component
    serve = parser.parse_args(found["gateway"]["args"])
    assert (serve.host, serve.port, serve.workers) == ("0.0.0.0", 8080, 4)
    assert found["gateway"]["ports"][0]["containerPort"] == serve.port
    with pytest.raises(SystemExit):  # the parser is strict: a flag the CLI lacks would not pass
        parser.parse_args(["worker", "--concurrency", "8"])


def test_rendered_settings_are_what_the_app_reads(chart: Any) -> None:
    """The ConfigMap plus the Secret, read by the app's own settings loader, give a production Settings
    with the configured values (numbers arrive from YAML as floats: no 1e+06 may reach the env)."""
    documents = render(
        chart,
        {
            "config": {"HOOKGATE_MAX_BODY_BYTES": 2_097_152, "HOOKGATE_SOURCE_CACHE_TTL_SECONDS": 2.5, "HOOKGATE_ALLOW_PRIVATE_ENDPOINTS": False},
            "ingress": {"enabled": True, "hosts": ["hooks.example.com"], "tls": [{"secretName": "t", "hosts": ["hooks.example.com"]}]},
        },
    )
    env = one(documents, "ConfigMap")["data"] | one(documents, "Secret", "hg-hookgate")["stringData"]
    settings = settings_from_env(env)
    assert settings.mode == "production" and not settings.is_embedded
    assert settings.max_body_bytes == 2_097_152 and settings.source_cache_ttl_seconds == 2.5
    assert settings.allow_private_endpoints is False
    assert settings.public_url == "https://hooks.example.com"
    assert settings.database_url == REQUIRED["secrets"]["databaseUrl"] and settings.secret_key == REQUIRED["secrets"]["secretKey"]
    assert settings_from_env(one(render(chart, {"publicUrl": "https://in.example.com"}), "ConfigMap")["data"]).public_url == "https://in.example.com"


def test_the_worker_has_time_to_finish_in_flight_deliveries(chart: Any) -> None:
    worker = one(render(chart), "Deployment", "hg-hookgate-worker")["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] >= Settings().delivery_timeout + 10
    gateway = one(render(chart), "Deployment", "hg-hookgate-gateway")["spec"]["template"]["spec"]
    assert gateway["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"] < gateway["terminationGracePeriodSeconds"]


def test_the_dockerfile_builds_one_non_root_image_of_the_package(chart: Any) -> None:
    dockerfile = _dockerfile()
    instructions = [(i["instruction"], i["value"]) for i in dockerfile.structure]
    assert len(dockerfile.parent_images) >= 2, "multi-stage: build tools stay out of the runtime image"
    final = instructions[max(n for n, (name, _) in enumerate(instructions) if name == "FROM") :]
    user = [value for name, value in final if name == "USER"]
    assert user and user[-1].split(":")[0] == str(chart.values["podSecurityContext"]["runAsUser"]) != "0"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"][_image_entrypoint()[0]] == "gateway.cli:main"
    copied = {source for name, value in instructions if name == "COPY" and not value.startswith("--from") for source in value.split()[:-1]}
    packages = {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, f"the image would lack {packages - copied}"
    assert cli.build_parser().parse_args(json.loads(dockerfile.cmd)).run is cli._serve  # noqa: SLF001


# --- monitoring: one source of truth ------------------------------------------------------------------------


def test_the_prometheus_rule_is_alerts_yaml_and_queries_only_exported_metrics(chart: Any, tmp_path: Path) -> None:
    rule = one(render(chart, {"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}}), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"]["groups"] == yaml.safe_load((GRAFANA / "alerts.yaml").read_text())["groups"]
    known = {**parse_exposition(scrape_app(tmp_path)), **PROMETHEUS_SERIES}
    exprs = [(f"rule {r['alert']}", r["expr"]) for group in rule["spec"]["groups"] for r in group["rules"]]
    assert len(exprs) >= 5
    problems = [problem for where, expr in exprs for problem in problems_in(where, expr, known)]
    assert not problems, "\n".join(problems)
    assert problems_in("renamed", "rate(hookgate_no_such_metric_total[5m])", known)  # the check can fail
    rules = tmp_path / "prometheusrule.yaml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (.ci/run installs it)"
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_service_monitor_scrapes_the_gateway_and_every_worker(chart: Any) -> None:
    documents = render(chart, {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    monitor = one(documents, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    selector = monitor["spec"]["selector"]
    selected = [
        service
        for service in documents
        if service["kind"] == "Service"
        and selector["matchLabels"].items() <= service["metadata"]["labels"].items()
        and all(service["metadata"]["labels"].get(e["key"]) in e["values"] for e in selector["matchExpressions"])
    ]
    assert {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in selected} == {"gateway", "worker"}
    ports = {port["name"] for service in selected for port in service["spec"]["ports"]}
    endpoints = monitor["spec"]["endpoints"]
    assert {e["port"] for e in endpoints} == {"http", "metrics"} <= ports
    assert all(e["path"] == "/metrics" for e in endpoints)
    worker_service = one(documents, "Service", "hg-hookgate-worker")
    assert worker_service["spec"]["clusterIP"] == "None"  # every worker pod is its own target
    # Prometheus names the job after the Service label jobLabel points at; the shipped rules and panels
    # select on those job names, so each one they use must be one a selected Service produces.
    jobs = {service["metadata"]["labels"][monitor["spec"]["jobLabel"]] for service in selected}
    rules = [rule["expr"] for group in yaml.safe_load((GRAFANA / "alerts.yaml").read_text())["groups"] for rule in group["rules"]]
    panels = [t["expr"] for panel in json.loads((GRAFANA / "hookgate.json").read_text())["panels"] for t in panel.get("targets", [])]
    queried = {job for expr in rules + panels for job in re.findall(r'job="([^"]+)"', expr)}
    assert queried and queried <= jobs, (queried, jobs)


def test_the_dashboard_config_map_embeds_the_dashboard(chart: Any) -> None:
    documents = render(chart, {"metrics": {"dashboard": {"enabled": True, "annotations": {"grafana_folder": "Hookgate"}}}})
    dashboard = one(documents, "ConfigMap", "hg-hookgate-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"]["grafana_folder"] == "Hookgate"
    shipped = (GRAFANA / "hookgate.json").read_text()
    assert dashboard["data"]["hookgate.json"] == shipped.rstrip("\n")
    assert json.loads(dashboard["data"]["hookgate.json"])["uid"] == "hookgate"


def test_the_packaged_chart_carries_the_grafana_files(chart: Any, tmp_path: Path) -> None:
    """files/grafana is a symlink to deploy/grafana: Helm follows it when it packages, so the archive
    carries the same bytes and the chart works from a registry too. ci/ stays out (.helmignore)."""
    archive = Path(chart.save(tmp_path))
    with tarfile.open(archive) as packaged:
        names = packaged.getnames()
        for name in ("alerts.yaml", "hookgate.json"):
            member = packaged.extractfile(f"hookgate/files/grafana/{name}")
            assert member is not None and member.read() == (GRAFANA / name).read_bytes()
    assert not [name for name in names if name.startswith("hookgate/ci/")]
    assert "hookgate/values.schema.json" in names


def test_the_values_in_docs_deploy_install_as_written(chart: Any) -> None:
    """Every YAML values block of docs/DEPLOY.md passes the schema and renders (each laid over the
    first, the full values-prod.yaml), so the install guide cannot drift from the chart."""
    blocks = [yaml.safe_load(block.split("```")[0]) for block in (ROOT / "docs" / "DEPLOY.md").read_text().split("```yaml\n")[1:]]
    assert len(blocks) >= 2 and blocks[0]["secrets"]["existingSecret"]
    for block in blocks:
        assert block.keys() <= chart.values.keys(), block
        documents = render(chart, block, base=blocks[0])
        assert one(documents, "Deployment", "hg-hookgate-worker")
    assert one(render(chart, {}, base=blocks[0]), "Ingress")["spec"]["tls"][0]["hosts"] == ["hooks.example.com"]



def test_the_ingress_publishes_what_providers_and_tenants_use_and_not_the_metrics(chart: Any) -> None:
    """/metrics names every tenant and its traffic: for Prometheus inside the cluster only."""
    ingress = one(render(chart, {"ingress": {"enabled": True}}), "Ingress")
    prefixes = [path["path"] for path in ingress["spec"]["rules"][0]["http"]["paths"] if path["pathType"] == "Prefix"]

    def routed(url: str) -> bool:  # Kubernetes' Prefix: whole path elements
        return any(url == prefix or url.startswith(prefix.rstrip("/") + "/") for prefix in prefixes)

    assert all(routed(url) for url in ("/ingest/tok", "/api/v1/events", "/dashboard", "/dashboard/login", "/schema/openapi.json", "/readyz"))
    assert not any(routed(url) for url in ("/metrics", "/metricsx", "/"))


def test_a_drain_may_evict_pods_that_are_not_ready(chart: Any) -> None:
    """Every pod is unready while Postgres is down; a PodDisruptionBudget would then block every drain."""
    budgets = [document for document in render(chart) if document["kind"] == "PodDisruptionBudget"]
    assert len(budgets) == 2 and all(budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow" for budget in budgets)


def test_extra_volumes_reach_every_hookgate_pod_and_the_job_has_its_own_placement(chart: Any) -> None:
    """A CA bundle for verified TLS to a managed database must reach the migration Job too, which
    must also be able to run on tainted nodes and get the environment the URL needs."""
    values = {
        "extraVolumes": [{"name": "db-ca", "secret": {"secretName": "db-ca"}}],
        "extraVolumeMounts": [{"name": "db-ca", "mountPath": "/etc/hookgate/ca", "readOnly": True}],
        "migrations": {"tolerations": [{"key": "dedicated", "operator": "Exists"}], "nodeSelector": {"pool": "db"},
                       "extraEnv": [{"name": "PGSSLROOTCERT", "value": "/etc/hookgate/ca/ca.crt"}]},
    }
    documents = render(chart, values)
    assert _validate_builtin(documents) == []  # every manifest passes the pinned API schemas, strictly
    pods = [one(documents, kind, name)["spec"]["template"]["spec"] for kind, name in
            [("Deployment", "hg-hookgate-gateway"), ("Deployment", "hg-hookgate-worker"), ("Job", "hg-hookgate-migrate")]]
    for pod in pods:
        assert {"name": "db-ca", "secret": {"secretName": "db-ca"}} in pod["volumes"]
        assert {"name": "db-ca", "mountPath": "/etc/hookgate/ca", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    job = pods[2]
    assert job["tolerations"] == [{"key": "dedicated", "operator": "Exists"}] and job["nodeSelector"] == {"pool": "db"}
    assert {"name": "PGSSLROOTCERT", "value": "/etc/hookgate/ca/ca.crt"} in job["containers"][0]["env"]
