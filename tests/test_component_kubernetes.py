"""`engine: kubernetes` as the program declares it, under Pulumi's mocks: per pool a claim,
a download Job before the StatefulSet, GPUs, probes, grace and a Service per replica;
the balancer's ConfigMap (the rendered nginx.conf), Secret, Deployment and Service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.config.loading import parse_settings
from components.plan.build import build_plan
from components.plan.kubernetes import cluster_settings
from components.plan.monitoring import DASHBOARD_FILE, PROMETHEUS_CONFIG
from components.plan.specs import SPEC_ENV, KubeCanarySpec, VerifySpec, WatchedReplica, decode
from tests.support.pulumi_capture import Declared, Run, run_program

NS = "vllm-nginx"
STS = "kubernetes:apps/v1:StatefulSet"
JOB = "kubernetes:batch/v1:Job"
SERVICE = "kubernetes:core/v1:Service"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
SECRET = "kubernetes:core/v1:Secret"
PVC = "kubernetes:core/v1:PersistentVolumeClaim"
API_KEY = "k8s-test-api-key-0123456789"
TOKEN = "hf_k8stesttoken0123456789"
GRAFANA_PASSWORD = "k8s-grafana-pw-0123456789"
MONITORING = {"enabled": True}
CONFIG: dict[str, Any] = {
    "engine": "kubernetes",
    "models": [
        {
            "name": "chat",
            "model": "org/chat",
            "replicas": 2,
            "tensorParallelSize": 2,
            "adapters": [{"name": "sql", "model": "org/sql-lora"}],
        },
        {"name": "embed", "model": "org/embed", "extraArgs": ["--runner", "pooling"]},
    ],
    "shutdownTimeoutSeconds": 30,
    "stopGraceSeconds": 45,
    "readyTimeoutSeconds": 600,
    "kubernetes": {
        "namespace": "llm",
        "cache": {"storageClass": "nfs", "size": "20Gi"},
        "nodeSelector": {"gpu": "yes"},
        "pools": [
            {
                "pool": "chat",
                "nodeSelector": {"gpu-type": "a100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            }
        ],
        "service": {"type": "NodePort", "nodePort": 30080},
    },
    "publicHost": "gpu-node.example",
}


def raw(config: dict[str, Any]) -> dict[str, str]:
    return {
        f"{NS}:{k}": json.dumps(v) if isinstance(v, dict | list) else str(v)
        for k, v in config.items()
    }


def deploy(**overrides: Any) -> Run:
    config = {**CONFIG, **overrides}
    values = raw(config)
    values[f"{NS}:apiKey"] = API_KEY
    values[f"{NS}:hfToken"] = TOKEN
    secret_keys = [f"{NS}:apiKey", f"{NS}:hfToken"]
    if config.get("monitoring", {}).get("enabled"):
        values[f"{NS}:grafanaPassword"] = GRAFANA_PASSWORD
        secret_keys.append(f"{NS}:grafanaPassword")
    return run_program(values, secret_keys=secret_keys)


def by_name(run: Run, type_: str, name: str) -> Declared:
    (found,) = [d for d in run.of_type(type_) if d.inputs["metadata"].get("name") == name]
    return found


def deps(run: Run, declared: Declared) -> set[str]:
    return {run.by_urn(urn).name for urn in declared.dependencies}


def test_a_pool_is_a_claim_a_job_and_a_statefulset_after_it() -> None:
    run = deploy()
    claims = {d.inputs["metadata"]["name"]: d for d in run.of_type(PVC)}
    assert set(claims) == {"vllm-hf-cache-chat", "vllm-hf-cache-embed"}
    chat_claim = claims["vllm-hf-cache-chat"]
    assert chat_claim.inputs["spec"]["storageClassName"] == "nfs"
    assert chat_claim.inputs["spec"]["accessModes"] == ["ReadWriteMany"]
    assert chat_claim.retain_on_delete  # hfCache.keepOnDestroy
    job = by_name(run, JOB, "vllm-chat-download")
    container = job.inputs["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == [
        "--model", "org/chat", "--model", "org/sql-lora", "--progress-seconds", "15"
    ]  # fmt: skip
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_TOKEN_PATH"] == "/var/run/secrets/vllm-nginx/hf_token"
    assert "HF_TOKEN" not in env
    assert job.inputs["spec"]["backoffLimit"] == 0
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert job.custom_timeouts.get("create") == "600s"
    sts = by_name(run, STS, "vllm-chat")
    assert job.name in deps(run, sts)
    assert "vllm-embed-download" not in {
        d.inputs["metadata"].get("name") for d in (run.named(n) for n in deps(run, sts))
    }


def test_replicas_request_gpus_and_carry_probes_grace_and_placement() -> None:
    run = deploy()
    sts = by_name(run, STS, "vllm-chat")
    spec = sts.inputs["spec"]
    assert spec["replicas"] == 2 and spec["podManagementPolicy"] == "Parallel"
    wait_for = json.loads(sts.inputs["metadata"]["annotations"]["pulumi.com/waitFor"])
    assert "jsonpath={.status.updatedReplicas}=2" in wait_for
    assert "jsonpath={.status.readyReplicas}=2" in wait_for
    # The next pod is replaced once the new one has been ready as long as the old one's
    # preStop waits for its Service to drop it: kube-proxy adds the new one first.
    assert spec["minReadySeconds"] == 17
    assert sts.custom_timeouts.get("update") == f"{2 * (600 + 17 + 45 + 17) + 60}s"
    pod = spec["template"]["spec"]
    (vllm,) = pod["containers"]
    assert vllm["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert vllm["command"] == ["vllm", "serve"]
    assert vllm["args"][:1] == ["org/chat"]
    assert "--shutdown-timeout" in vllm["args"] and "--enable-lora" in vllm["args"]
    startup = vllm["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert vllm["livenessProbe"]["httpGet"]["path"] == "/health"
    # Readiness: /health, and false at once from the moment preStop marks the pod stopping
    # (kube-proxy would keep a lone terminating pod that still passes it in its Service).
    ready = vllm["readinessProbe"]
    assert ready["failureThreshold"] == 1
    check = ready["exec"]["command"][-1]
    assert check.startswith("test ! -e /tmp/vllm-nginx-stopping && python3 -c ")
    assert "/health" in check
    stop = vllm["lifecycle"]["preStop"]["exec"]["command"]
    # The default wait: one readiness period and timeout (10 + 5) and kube-proxy's sync.
    assert stop == ["sh", "-c", "touch /tmp/vllm-nginx-stopping && sleep 17"]
    # The hook, then vLLM's 30 s drain and its exit, within the grace.
    assert pod["terminationGracePeriodSeconds"] == 17 + 45
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert pod["nodeSelector"] == {"gpu": "yes", "gpu-type": "a100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    api = next(e for e in vllm["env"] if e["name"] == "VLLM_API_KEY")
    assert "secretKeyRef" in api["valueFrom"] and "value" not in api
    embed = by_name(run, STS, "vllm-embed").inputs["spec"]["template"]["spec"]
    assert embed["nodeSelector"] == {"gpu": "yes"}
    assert "tolerations" not in embed


def test_each_replica_has_a_service_named_as_nginx_conf_names_it() -> None:
    run = deploy()
    for service, pod in (("vllm-chat-0", "vllm-chat-0"), ("vllm-chat-1", "vllm-chat-1")):
        found = by_name(run, SERVICE, service)
        selector = found.inputs["spec"]["selector"]
        assert selector["statefulset.kubernetes.io/pod-name"] == pod
    plan = build_plan(cluster_settings(parse_settings(raw_plain())), project_dir=Path("."))
    assert "server vllm-chat-0:8000" in plan.load_balancer.config
    assert " resolve" not in plan.load_balancer.config
    # A connection per request: a kept one would outlive its pod's removal from the Service.
    assert "keepalive " not in plan.load_balancer.config


def raw_plain() -> dict[str, str]:
    plain = {k.split(":", 1)[1]: v for k, v in raw(CONFIG).items()}
    return {**plain, "apiKey": API_KEY, "hfToken": TOKEN}


def test_the_balancer_is_the_rendered_config_in_a_configmap_and_two_pods() -> None:
    run = deploy()
    settings = parse_settings(raw_plain())
    plan = build_plan(cluster_settings(settings), project_dir=Path("."))
    (config_map,) = [
        c for c in run.of_type(CONFIG_MAP) if "etc_nginx_nginx.conf" in c.inputs.get("data", {})
    ]
    assert config_map.inputs["data"]["etc_nginx_nginx.conf"] == plan.load_balancer.config
    # No failure marks: a replica away is refused at once by its Service, and a mark
    # would outlast its return (docs/kubernetes.md).
    servers = [line for line in plan.load_balancer.config.splitlines() if "server vllm-" in line]
    assert servers and all("max_fails=0" in line for line in servers), servers
    deployment = by_name(run, DEPLOYMENT, "nginx-lb")
    spec = deployment.inputs["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = spec["template"]["spec"]
    aliases = {a["hostnames"][0]: a["ip"] for a in pod["hostAliases"]}
    assert set(aliases) == {"vllm-chat-0", "vllm-chat-1", "vllm-embed-0"}
    assert aliases["vllm-chat-0"] == "@@vllm-chat-pool-vllm-chat-0.clusterIP@@"
    stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert "nginx -s quit" in stop
    assert {"vllm-chat-pool-replicas", "vllm-embed-pool-replicas"} <= deps(run, deployment)
    service = by_name(run, SERVICE, "nginx-lb")
    assert service.inputs["spec"]["type"] == "NodePort"
    assert service.inputs["spec"]["ports"][0]["nodePort"] == 30080
    assert run.outputs["lb_url"] == "http://gpu-node.example:30080"
    verify = run.named("vllm-verify")
    assert verify.inputs["create"].endswith("-m components.steps.verify")
    spec = decode(VerifySpec, verify.inputs["environment"][SPEC_ENV])
    assert spec.url == "http://gpu-node.example:30080"


def test_secrets_stay_secret_and_out_of_the_config() -> None:
    run = deploy(monitoring=MONITORING)
    for declared in run.declared:
        if declared.type == SECRET:
            continue
        plain = {k: v for k, v in declared.inputs.items() if k not in declared.secret_inputs}
        text = json.dumps(plain, default=str)
        for secret in (API_KEY, TOKEN, GRAFANA_PASSWORD):
            assert secret not in text, declared.name
    secrets = run.of_type(SECRET)
    assert len(secrets) == 5  # replica env, token, nginx's files, Prometheus', Grafana's
    assert all(s.secret_inputs or s.additional_secret_outputs for s in secrets)


def pod_of(run: Run, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = by_name(run, DEPLOYMENT, name).inputs["spec"]["template"]["spec"]
    return spec


def mounted(run: Run, resource: str, pod: dict[str, Any], path: str) -> str:
    """The content of the file mounted at `path`, from the ConfigMap `<resource>-config`."""
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == path]
    assert mount["name"] == "config" and mount["readOnly"]
    text: str = run.named(f"{resource}-config").inputs["data"][mount["subPath"]]
    return text


def test_monitoring_is_the_docker_plans_pieces_each_a_pod_behind_a_service() -> None:
    run = deploy(monitoring=MONITORING)
    settings = parse_settings(
        {**raw_plain(), "monitoring": json.dumps(MONITORING), "grafanaPassword": GRAFANA_PASSWORD}
    )
    base = build_plan(cluster_settings(settings), project_dir=Path("."))
    assert base.monitoring is not None
    replicas = {"vllm-chat-0", "vllm-chat-1", "vllm-embed-0"}
    # One plan: Prometheus' config and the dashboard are the Docker plan's, as files.
    prometheus = pod_of(run, "vllm-prometheus")
    config = mounted(run, "vllm-monitoring-prometheus", prometheus, PROMETHEUS_CONFIG)
    assert config == base.monitoring.prometheus.uploads[0].content
    for target in ("vllm-chat-0:8000", "vllm-embed-0:8000", "vllm-lb-exporter:9113"):
        assert target in config
    aliases = {a["hostnames"][0]: a["ip"] for a in prometheus["hostAliases"]}
    assert set(aliases) == {*replicas, "vllm-lb-exporter"}
    assert aliases["vllm-lb-exporter"] == "@@vllm-monitoring-lb-exporter-service.clusterIP@@"
    grafana = pod_of(run, "vllm-grafana")
    dashboard = mounted(
        run, "vllm-monitoring-grafana", grafana, "/etc/grafana/dashboards/vllm.json"
    )
    assert dashboard == DASHBOARD_FILE.read_text()
    assert [a["hostnames"] for a in grafana["hostAliases"]] == [["vllm-prometheus"]]
    env = {e["name"]: e.get("value") for e in grafana["containers"][0]["env"]}
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/etc/grafana/secrets/admin-password"
    exporter = pod_of(run, "vllm-lb-exporter")
    assert exporter["containers"][0]["args"][-3:] == [
        "--replica=vllm-chat-0:8000", "--replica=vllm-chat-1:8000", "--replica=vllm-embed-0:8000"
    ]  # fmt: skip
    assert {a["hostnames"][0] for a in exporter["hostAliases"]} == replicas
    ports = by_name(run, SERVICE, "vllm-lb-exporter").inputs["spec"]["ports"]
    assert {(p["port"], p["protocol"]) for p in ports} == {(5514, "UDP"), (9113, "TCP")}
    # nginx sends the exporter its lines by name: in its /etc/hosts, started after it.
    assert "syslog:server=vllm-lb-exporter:5514" in base.load_balancer.config
    nginx = by_name(run, DEPLOYMENT, "nginx-lb")
    hosts = {a["hostnames"][0] for a in nginx.inputs["spec"]["template"]["spec"]["hostAliases"]}
    assert hosts == {*replicas, "vllm-lb-exporter"}
    assert "vllm-monitoring-lb-exporter" in deps(run, nginx)
    for name in ("vllm-prometheus", "vllm-grafana", "vllm-lb-exporter"):
        spec = by_name(run, DEPLOYMENT, name).inputs["spec"]
        assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
        assert by_name(run, SERVICE, name).inputs["spec"]["type"] == "ClusterIP"
    claims = {d.inputs["metadata"]["name"]: d for d in run.of_type(PVC)}
    for claim in ("vllm-prometheus-data", "vllm-grafana-data"):
        assert claims[claim].inputs["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert claims[claim].inputs["spec"]["storageClassName"] == "nfs"  # the cache's
        assert claims[claim].retain_on_delete  # monitoring.keepDataOnDestroy
    assert prometheus["securityContext"] == {"fsGroup": 65534}
    assert run.outputs["prometheus_url"] == "http://vllm-prometheus.llm.svc:9090"
    assert run.outputs["grafana_url"] == "http://vllm-grafana.llm.svc:3000"


def test_monitoring_node_ports_and_no_data_kept() -> None:
    run = deploy(
        monitoring={**MONITORING, "keepDataOnDestroy": False},
        hfCache={"volume": "vllm-hf-cache", "keepOnDestroy": False},
        kubernetes={
            **CONFIG["kubernetes"],
            "monitoring": {"serviceType": "NodePort", "prometheusNodePort": 30090},
        },
    )
    (port,) = by_name(run, SERVICE, "vllm-prometheus").inputs["spec"]["ports"]
    assert port["nodePort"] == 30090
    assert run.outputs["prometheus_url"] == "http://gpu-node.example:30090"
    assert not any(c.retain_on_delete for c in run.of_type(PVC))
    (namespace,) = run.of_type("kubernetes:core/v1:Namespace")
    assert not namespace.retain_on_delete


def test_without_monitoring_nothing_of_it_is_declared() -> None:
    run = deploy()
    assert not [d for d in run.declared if "monitoring" in d.name.lower()]
    assert "prometheus_url" not in run.outputs


def test_a_docker_stack_declares_no_kubernetes_resource() -> None:
    values = raw({"model": "org/m"})
    run = run_program(values)
    assert not [d for d in run.declared if d.type.startswith("kubernetes:")]


COMMAND = "command:local:Command"


def test_the_canary_gives_a_pools_first_wave_a_statefulset_judged_before_the_rest() -> None:
    run = deploy(rollout={"canarySeconds": 30, "canaryMinRequests": 5})
    canary = by_name(run, STS, "vllm-chat-canary")
    rest = by_name(run, STS, "vllm-chat")
    # The first wave (replica 0) in the canary's StatefulSet, numbered from 0; the rest
    # in the pool's, numbered from 1, so its pods keep their names.
    assert canary.inputs["spec"]["replicas"] == 1 and "ordinals" not in canary.inputs["spec"]
    assert rest.inputs["spec"]["replicas"] == 1
    assert rest.inputs["spec"]["ordinals"] == {"start": 1}
    labels = canary.inputs["spec"]["template"]["metadata"]["labels"]
    assert labels["vllm-nginx/rotation"] == "in"
    assert labels["app.kubernetes.io/name"] == "vllm-chat-canary"
    assert "vllm-nginx/rotation" not in canary.inputs["spec"]["selector"]["matchLabels"]
    assert rest.inputs["spec"]["template"]["metadata"]["labels"] == {
        "app.kubernetes.io/part-of": "vllm-nginx",
        "app.kubernetes.io/name": "vllm-chat",
    }
    # The same pods but for their labels.
    assert canary.inputs["spec"]["template"]["spec"] == rest.inputs["spec"]["template"]["spec"]
    wait_for = json.loads(canary.inputs["metadata"]["annotations"]["pulumi.com/waitFor"])
    assert "jsonpath={.status.updatedReplicas}=1" in wait_for
    # The step after the canary's StatefulSet, the rest's after the step.
    step = run.named("vllm-chat-pool-canary")
    assert step.type == COMMAND
    assert deps(run, step) == {"vllm-chat-pool-canary-replicas"}
    assert "vllm-chat-pool-canary" in deps(run, rest)
    assert step.inputs["create"].endswith("-m components.steps.kube_canary")
    spec = decode(KubeCanarySpec, step.inputs["environment"][SPEC_ENV])
    assert (spec.canary_workload, spec.rest_workload, spec.namespace) == (
        "vllm-chat-canary", "vllm-chat", "llm"
    )  # fmt: skip
    assert spec.canary == (
        WatchedReplica(
            "vllm-chat-0",
            "/api/v1/namespaces/llm/services/vllm-chat-0:8000/proxy/metrics",
            "vllm-chat-canary-0",
        ),
    )
    assert [(r.name, r.upstream) for r in spec.baseline] == [("vllm-chat-1", "vllm-chat-1")]
    assert (spec.seconds, spec.min_requests) == (30, 5)
    # Replica 0's Service follows the canary's pod, and only while it is in rotation.
    selector = by_name(run, SERVICE, "vllm-chat-0").inputs["spec"]["selector"]
    assert selector == {
        "app.kubernetes.io/part-of": "vllm-nginx",
        "app.kubernetes.io/name": "vllm-chat-canary",
        "vllm-nginx/rotation": "in",
        "statefulset.kubernetes.io/pod-name": "vllm-chat-canary-0",
    }
    assert "vllm-chat-pool-canary-replicas" in deps(run, by_name(run, SERVICE, "vllm-chat-0"))
    assert "vllm-chat-pool-replicas" not in deps(run, by_name(run, SERVICE, "vllm-chat-0"))
    selector = by_name(run, SERVICE, "vllm-chat-1").inputs["spec"]["selector"]
    assert selector["statefulset.kubernetes.io/pod-name"] == "vllm-chat-1"
    # A pool of one has no second wave: no canary, as on Docker.
    assert [s.inputs["metadata"]["name"] for s in run.of_type(STS)].count("vllm-embed") == 1
    assert "vllm-embed-canary" not in [s.inputs["metadata"]["name"] for s in run.of_type(STS)]
    assert [c.name for c in run.of_type(COMMAND) if "canary" in c.name] == [step.name]


def test_a_canary_of_four_replicas_is_its_first_two() -> None:
    pools = [{**CONFIG["models"][0], "replicas": 4, "tensorParallelSize": 1}, CONFIG["models"][1]]
    run = deploy(models=pools, rollout={"canarySeconds": 30})
    assert by_name(run, STS, "vllm-chat-canary").inputs["spec"]["replicas"] == 2
    rest = by_name(run, STS, "vllm-chat").inputs["spec"]
    assert (rest["replicas"], rest["ordinals"]) == (2, {"start": 2})
    pods = {
        s.inputs["metadata"]["name"]: s.inputs["spec"]["selector"][
            "statefulset.kubernetes.io/pod-name"
        ]
        for s in run.of_type(SERVICE)
        if s.inputs["metadata"]["name"].startswith("vllm-chat-")
    }
    assert pods == {
        "vllm-chat-0": "vllm-chat-canary-0",
        "vllm-chat-1": "vllm-chat-canary-1",
        "vllm-chat-2": "vllm-chat-2",
        "vllm-chat-3": "vllm-chat-3",
    }


def test_without_canary_seconds_written_a_cluster_has_no_canary() -> None:
    # Its default (60) would restructure every pool of a stack deployed before.
    run = deploy()
    assert sorted(s.inputs["metadata"]["name"] for s in run.of_type(STS)) == [
        "vllm-chat", "vllm-embed"
    ]  # fmt: skip
    assert not [c for c in run.of_type(COMMAND) if "canary" in c.name]
