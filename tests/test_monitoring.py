"""Monitoring without an engine: settings rules, what is declared under mocks,
the dashboard file for the pinned Grafana, the exporter's parsing, and the
stand-in's vLLM metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config.loading import settings_from_config
from components.config.problems import NAMESPACE, ConfigError
from components.config.settings import Settings
from components.containers.exporter.lb_exporter import LbMetrics, ReplicaNames
from components.plan.build import build_plan
from components.plan.monitoring import DASHBOARD_FILE, DATASOURCE_UID, prometheus_config
from standin.vllm_metrics import BLOCK_SIZE, PrefixCache, VllmMetrics
from tests.support.nginx import check_config, make_sandbox, require_nginx
from tests.support.pulumi_capture import run_program

GRAFANA_SCHEMA_VERSIONS = {"12.0": 41, "12.1": 41}
"""Dashboard schemaVersion written by each Grafana minor release: v41 (time picker
`time_options` dropped) landed in Feb 2025 (grafana/grafana#100554) before 12.0,
v42 in Sep 2025 (grafana/grafana#110517) for 12.2. A dashboard newer than its
Grafana is not migrated back; an older one is migrated on every load."""

BASE = {"model": "org/model", "backend": "cpu", "replicas": "2"}
ON = {"monitoring": json.dumps({"enabled": True}), "grafanaPassword": "pw-123"}
SECRET = {"grafanaPassword", "apiKey"}


def _config(**values: str) -> dict[str, str]:
    return {f"{NAMESPACE}:{k}": v for k, v in {**BASE, **values}.items()}


def _settings(**values: str) -> Settings:
    return settings_from_config({**BASE, **values}, SECRET)


def _problems(**values: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        _settings(**values)
    return [str(p) for p in err.value.problems]


# -- settings -------------------------------------------------------------------


def test_off_by_default_and_password_only_with_it() -> None:
    assert _settings().monitoring.enabled is False
    assert _problems(grafanaPassword="pw-123") == [
        "config key 'vllm-nginx:grafanaPassword': is set but 'monitoring.enabled' is false"
    ]
    (problem,) = _problems(monitoring=ON["monitoring"])
    assert problem.startswith("config key 'vllm-nginx:grafanaPassword': is required")


def test_password_must_be_secret() -> None:
    with pytest.raises(ConfigError, match=r"grafanaPassword.*--secret"):
        settings_from_config({**BASE, **ON}, set())


def test_ports_names_and_volumes_must_not_collide() -> None:
    monitoring = {
        "enabled": True,
        "prometheus": {"port": 8082, "name": "vllm1", "volume": "vllm-hf-cache"},
        "grafana": {"port": 8000, "name": "nginx-lb", "volume": "vllm-hf-cache"},
        "lbExporter": {"name": "vllm-grafana"},
    }
    problems = _problems(monitoring=json.dumps(monitoring), grafanaPassword="pw")
    assert [p.split("'")[1] for p in problems] == [
        "vllm-nginx:monitoring.prometheus.port",
        "vllm-nginx:monitoring.grafana.port",
        "vllm-nginx:monitoring.prometheus.name",
        "vllm-nginx:monitoring.grafana.name",
        "vllm-nginx:monitoring.prometheus.volume",
        "vllm-nginx:monitoring.grafana.volume",
    ]


def test_bad_values_name_the_key() -> None:
    monitoring = {"enabled": True, "prometheus": {"image": "Prom:x y", "scrapeIntervalSeconds": 0}}
    problems = _problems(monitoring=json.dumps(monitoring), grafanaPassword="pw")
    assert {p.split("'")[1] for p in problems} == {
        "vllm-nginx:monitoring.prometheus.image",
        "vllm-nginx:monitoring.prometheus.scrapeIntervalSeconds",
    }


# -- what is declared -------------------------------------------------------------


MONITORING_TYPES = {"vllm-nginx:index:Monitoring"}


def test_monitoring_off_declares_none_of_it() -> None:
    run = run_program(_config(), [])
    types = {d.type for d in run.declared}
    assert not types & MONITORING_TYPES
    names = {d.inputs.get("name") for d in run.declared}
    assert not {"vllm-prometheus", "vllm-grafana", "vllm-lb-exporter"} & names
    assert not {"prometheus_url", "grafana_url"} & set(run.outputs)
    lb = run.named("vllm-lb")
    assert "syslog" not in lb.inputs["uploads"][0]["content"]
    assert "labels" not in lb.inputs


def test_monitoring_on_declares_three_containers_on_the_network() -> None:
    run = run_program(_config(**ON), [f"{NAMESPACE}:grafanaPassword"])
    component = run.named("vllm-monitoring")
    assert component.type == "vllm-nginx:index:Monitoring"
    containers = {
        d.inputs["name"]: d
        for d in run.of_type("docker:index/container:Container")
        if d.parent == component.urn
    }
    assert set(containers) == {"vllm-prometheus", "vllm-grafana", "vllm-lb-exporter"}
    for declared in containers.values():
        assert declared.inputs["networksAdvanced"] == [{"name": "vllm-nginx"}]
        assert declared.inputs["destroyGraceSeconds"] == 90
        assert declared.delete_before_replace
    assert containers["vllm-prometheus"].inputs["ports"] == [
        {"internal": 9090, "external": 9090, "ip": "127.0.0.1"}
    ]
    assert containers["vllm-grafana"].inputs["ports"][0]["external"] == 3000
    assert "ports" not in containers["vllm-lb-exporter"].inputs
    images = {d.inputs["name"] for d in run.of_type("docker:index/remoteImage:RemoteImage")}
    assert {"prom/prometheus:v3.5.0", "grafana/grafana:12.1.1"} <= images
    volumes = {
        d.inputs["name"]: d.retain_on_delete for d in run.of_type("docker:index/volume:Volume")
    }
    assert volumes["vllm-prometheus-data"] and volumes["vllm-grafana-data"]
    assert run.outputs["prometheus_url"] == "http://127.0.0.1:9090"
    assert run.outputs["grafana_url"] == "http://127.0.0.1:3000"


def test_lb_sends_its_lines_to_the_exporter_and_follows_it() -> None:
    run = run_program(_config(**ON), [f"{NAMESPACE}:grafanaPassword"])
    lb = run.named("vllm-lb")
    exporter = run.named("vllm-monitoring-lb-exporter")
    assert exporter.urn in lb.dependencies
    # A replaced exporter (replicas added or removed) reloads nginx, never replaces it.
    assert "labels" not in lb.inputs
    assert run.named("vllm-lb-config").inputs["triggers"] == [
        "@@vllm-lb.id@@",
        "@@vllm-monitoring-lb-exporter.id@@",
    ]
    config = lb.inputs["uploads"][0]["content"]
    assert "access_log syslog:server=vllm-lb-exporter:5514,tag=vllm_lb,nohostname" in config
    assert exporter.inputs["command"][-2:] == ["--replica=vllm0:8000", "--replica=vllm1:8000"]


def test_grafana_password_and_api_key_are_secret_uploads() -> None:
    config = _config(**ON, apiKey="key-123")
    run = run_program(config, [f"{NAMESPACE}:grafanaPassword", f"{NAMESPACE}:apiKey"])
    for name in ("vllm-monitoring-grafana", "vllm-monitoring-prometheus"):
        declared = run.named(name)
        assert "uploads" in declared.secret_inputs
        assert declared.additional_secret_outputs == ["uploads"]
        assert "envs" not in declared.secret_inputs
    grafana = run.named("vllm-monitoring-grafana")
    assert "pw-123" not in json.dumps(grafana.inputs["envs"])
    assert {"file": "/etc/grafana/secrets/admin-password", "content": "pw-123"} in grafana.inputs[
        "uploads"
    ]
    exporter = run.named("vllm-monitoring-lb-exporter")
    assert "uploads" not in exporter.secret_inputs


def test_prometheus_config_labels_replicas_and_sends_the_key_from_a_file() -> None:
    settings = _settings(**ON, apiKey="key-123")
    # Where nginx reaches each replica, as the plan says.
    plan = build_plan(settings, project_dir=Path(__file__).resolve().parent.parent)
    replicas = {r.name: str(r.upstream) for r in plan.replicas}
    config = yaml.safe_load(prometheus_config(settings, api_key_file="/run/key", replicas=replicas))
    vllm, lb = config["scrape_configs"]
    assert vllm["static_configs"] == [
        {"targets": ["vllm0:8000"], "labels": {"replica": "vllm0"}},
        {"targets": ["vllm1:8000"], "labels": {"replica": "vllm1"}},
    ]
    assert vllm["authorization"] == {"type": "Bearer", "credentials_file": "/run/key"}
    assert lb["static_configs"] == [{"targets": ["vllm-lb-exporter:9113"]}]
    assert config["global"]["scrape_timeout"] == "10s"
    assert "key-123" not in prometheus_config(settings, api_key_file="/run/key", replicas=replicas)


def test_lb_config_with_the_metrics_log_passes_nginx_t() -> None:
    from components.config.sections import LoadBalancerSettings, Upstream
    from components.lb.nginx_conf import NginxRuntime, render_nginx_config
    from tests.support.nginx import require_njs, write_extra_files

    binary = require_nginx()
    require_njs()
    sandbox = make_sandbox()
    lb = LoadBalancerSettings(dynamic_resolve=False)
    runtime = NginxRuntime(
        listen_address="127.0.0.1",
        listen_port=18799,
        pid_path=str(sandbox / "nginx.pid"),
        temp_dir=str(sandbox / "tmp"),
        error_log=str(sandbox / "error.log"),
        access_log=str(sandbox / "access.log"),
        metrics_syslog="127.0.0.1:18798",
        prefix_script=str(sandbox / "lb" / "prefix.js"),
    )
    config = render_nginx_config(lb, [Upstream(host="127.0.0.1", port=9)], runtime)
    write_extra_files(lb, runtime)
    result = check_config(binary, config, sandbox)
    assert result.returncode == 0, result.stderr


# -- the dashboard file -----------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return data


def test_dashboard_schema_matches_the_pinned_grafana() -> None:
    image = Settings.model_fields["monitoring"].default.grafana.image
    minor = re.fullmatch(r"grafana/grafana:(\d+\.\d+)\.\d+", image)
    assert minor is not None, image
    assert _dashboard()["schemaVersion"] == GRAFANA_SCHEMA_VERSIONS[minor.group(1)]


def test_every_panel_names_the_provisioned_datasource() -> None:
    panels = _dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "gauge", "bargauge"}, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_panels_fit_the_grid_without_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in _dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells


def test_dashboard_uses_vllm_v0_33_metric_names() -> None:
    exprs = " ".join(
        t["expr"] for p in _dashboard()["panels"] if p["type"] != "row" for t in p["targets"]
    )
    for name in (
        "vllm:request_success_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_hits_total",
        "vllm:prefix_cache_queries_total",
    ):
        assert name in exprs
    # Names older releases used, gone in v0.33.
    for old in ("gpu_cache_usage_perc", "time_per_output_token", "gpu_prefix_cache"):
        assert old not in exprs


def test_request_rate_counts_every_end_and_shows_the_unfinished_apart() -> None:
    """`vllm:request_success` counts every finished_reason (v0.33: stop, length,
    abort, error, repetition): the rate is load; aborts and errors get their own line."""
    (panel,) = [p for p in _dashboard()["panels"] if p["title"] == "Request rate per replica"]
    exprs = {t["refId"]: t["expr"] for t in panel["targets"]}
    assert "finished_reason" not in exprs["A"] + exprs["B"]
    assert 'finished_reason=~"abort|error"' in exprs["C"]
    assert "repetition" in panel["description"]


# -- the exporter -------------------------------------------------------------------


def _line(**fields: str) -> str:
    record = {
        "status": "200",
        "request_time": "0.300",
        "upstream_addr": "10.0.0.2:8000",
        "upstream_status": "200",
        "upstream_header_time": "0.050",
        "upstream_response_time": "0.290",
        **fields,
    }
    return "<190>Nov 25 10:00:00 vllm_lb: " + json.dumps(record)


def _exporter() -> LbMetrics:
    table = {"vllm0": ["10.0.0.2"], "vllm1": ["10.0.0.3"]}
    return LbMetrics(ReplicaNames(["vllm0:8000", "vllm1:8000"], lambda h, p: table.get(h, [])))


def test_exporter_counts_status_replica_and_retries() -> None:
    metrics = _exporter()
    metrics.record_line(_line())
    metrics.record_line(
        _line(
            upstream_addr="10.0.0.3:8000, 10.0.0.2:8000",
            upstream_status="502, 200",
            upstream_header_time="0.001, 0.040",
            upstream_response_time="0.001, 0.200",
        )
    )
    metrics.record_line(_line(status="401", upstream_addr="-", upstream_status="-"))
    metrics.record_line("<190>garbage")
    text = metrics.render()
    assert 'vllm_lb_requests_total{status="200"} 2' in text
    assert 'vllm_lb_requests_total{status="401"} 1' in text
    assert 'vllm_lb_upstream_attempts_total{replica="vllm0",status="200"} 2' in text
    assert 'vllm_lb_upstream_attempts_total{replica="vllm1",status="502"} 1' in text
    assert "vllm_lb_retries_total 1" in text
    assert "vllm_lb_unparsed_lines_total 1" in text
    assert 'vllm_lb_upstream_header_seconds_count{replica="vllm0"} 2' in text
    assert 'vllm_lb_upstream_response_seconds_bucket{replica="vllm0",le="0.25"} 1' in text


def test_exporter_labels_each_series_with_the_pool_when_routing_by_model() -> None:
    metrics = _exporter()
    metrics.record_line(_line(pool="chat"))
    metrics.record_line(_line(pool="embed", upstream_addr="10.0.0.3:8000"))
    metrics.record_line(_line(pool="", status="404", upstream_addr="-", upstream_status="-"))
    text = metrics.render()
    assert 'vllm_lb_requests_total{status="200",pool="chat"} 1' in text
    assert 'vllm_lb_requests_total{status="200",pool="embed"} 1' in text
    # A 404 the balancer answered itself belongs to no pool: no label, as before.
    assert 'vllm_lb_requests_total{status="404"} 1' in text
    assert 'vllm_lb_upstream_attempts_total{replica="vllm0",status="200",pool="chat"} 1' in text
    assert 'vllm_lb_upstream_attempts_total{replica="vllm1",status="200",pool="embed"} 1' in text
    assert 'vllm_lb_upstream_header_seconds_count{replica="vllm0",pool="chat"} 1' in text
    assert 'vllm_lb_request_duration_seconds_count{status="200",pool="embed"} 1' in text


def test_exporter_keeps_an_unknown_address_visible() -> None:
    metrics = _exporter()
    metrics.record_line(_line(upstream_addr="10.9.9.9:8000"))
    assert 'replica="10.9.9.9:8000"' in metrics.render()


# -- the stand-in's vLLM metrics ------------------------------------------------------


def test_prefix_cache_hits_whole_blocks_of_earlier_prompts() -> None:
    cache = PrefixCache()
    prompt = [f"w{i}" for i in range(3 * BLOCK_SIZE + 5)]
    assert cache.lookup_and_insert(prompt) == 0
    assert cache.lookup_and_insert(prompt) == 3 * BLOCK_SIZE
    # A different first block breaks the chain: nothing after it hits.
    assert cache.lookup_and_insert(["x", *prompt[1:]]) == 0
    # Never the whole prompt: the last token is always computed.
    exact = prompt[: 2 * BLOCK_SIZE]
    assert cache.lookup_and_insert(exact) == BLOCK_SIZE


def test_stand_in_metrics_skip_families_already_exposed() -> None:
    metrics = VllmMetrics("tiny")
    track = metrics.start(0.0, "a b c")
    track.tokens_at([0.03, 0.04, 0.05])
    track.finish(0.06, True, "length")
    existing = "# TYPE vllm:request_success_total counter\nvllm:request_success_total 1\n"
    text = metrics.render(skip=existing)
    assert "vllm:request_success_total" not in text
    assert 'vllm:time_to_first_token_seconds_count{model_name="tiny",engine="0"} 1' in text
    assert 'vllm:inter_token_latency_seconds_count{model_name="tiny",engine="0"} 2' in text
    assert "# TYPE vllm:prefix_cache_queries counter" in text
    full = metrics.render()
    assert (
        'vllm:request_success_total{model_name="tiny",engine="0",finished_reason="length"} 1'
        in full
    )


def test_exporter_labels_a_replica_on_another_host_by_its_name() -> None:
    """With 'hosts', nginx reaches other hosts' replicas by address and port; the
    exporter is told `NAME=ADDRESS:PORT` and labels by the name, like the rest."""
    names = ReplicaNames(
        ["vllm-a-0=vllm-a-0:8000", "vllm-b-0=10.0.0.12:8081", "vllm-b-1=10.0.0.12:8082"],
        lambda host, port: {"vllm-a-0": ["172.18.0.5"]}.get(host, [host]),
    )
    assert names.name("172.18.0.5:8000") == "vllm-a-0"
    assert names.name("10.0.0.12:8081") == "vllm-b-0"
    assert names.name("10.0.0.12:8082") == "vllm-b-1"
    assert names.name("10.0.0.13:8081") == "10.0.0.13:8081"
