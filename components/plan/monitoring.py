"""Monitoring as plain data: Prometheus, Grafana and the load balancer's exporter.

Computed from validated settings alone, like the rest of the plan, so the configs
can be printed and tested without Pulumi or Docker; None unless `monitoring.enabled`.
Secrets stay out: the Grafana password and API key are named here and uploaded as
secrets by the deployment (docs/monitoring.md says what each piece is for).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import yaml

from components.config.settings import Settings
from components.containers import CONTAINERS_DIR
from components.containers.exporter.lb_exporter import METRICS_PORT, SYSLOG_PORT

DASHBOARD_FILE = CONTAINERS_DIR / "grafana" / "vllm.json"
EXPORTER_SOURCE = CONTAINERS_DIR / "exporter" / "lb_exporter.py"

DATASOURCE_UID = "vllm-prometheus"
"""The uid every panel of the dashboard names; the provisioned data source has it."""
REPLICA_LABEL = "replica"
POOL_LABEL = "pool"
MODEL_LABEL = "model"

PROMETHEUS_PORT = 9090
PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"
PROMETHEUS_DATA = "/prometheus"
PROMETHEUS_API_KEY_FILE = "/etc/prometheus/secrets/vllm-api-key"
# The official image's entry point; Debian's package installs the same path
# (merged /usr), so the offline test image runs the same declaration.
PROMETHEUS_ENTRYPOINT = ("/bin/prometheus",)

GRAFANA_PORT = 3000
GRAFANA_ADMIN_USER = "admin"
GRAFANA_DATA = "/var/lib/grafana"
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
GRAFANA_DASHBOARDS = "/etc/grafana/dashboards"
GRAFANA_PASSWORD_FILE = "/etc/grafana/secrets/admin-password"

EXPORTER_PATH = "/opt/vllm-nginx/lb_exporter.py"

# Names of the secret values the deployment supplies.
GRAFANA_PASSWORD_SECRET = "grafana_password"
PROMETHEUS_API_KEY_SECRET = "prometheus_api_key"


@dataclass(frozen=True)
class FileUpload:
    path: str
    content: str


@dataclass(frozen=True)
class SecretFile:
    """A file whose content is a secret, named here and supplied by the deployment."""

    path: str
    secret: str


@dataclass(frozen=True)
class MonitoringContainer:
    name: str
    image: str
    command: tuple[str, ...]
    entrypoint: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    uploads: tuple[FileUpload, ...] = ()
    secret_uploads: tuple[SecretFile, ...] = ()
    volume: str | None = None
    volume_path: str | None = None
    bind_address: str | None = None
    host_port: int | None = None
    container_port: int | None = None
    url: str | None = None


@dataclass(frozen=True)
class MonitoringPlan:
    prometheus: MonitoringContainer
    grafana: MonitoringContainer
    lb_exporter: MonitoringContainer
    keep_data_on_destroy: bool
    lb_syslog: str
    """Where nginx sends its per-request lines: the exporter, on the network."""
    stop_grace_seconds: int
    restart_policy: str
    pull_timeout_minutes: int
    keep_images: bool


def _url_host(public_host: str, bind_address: str) -> str:
    return bind_address if bind_address.startswith("127.") else public_host


def _pool_labels(settings: Settings, replica: str) -> dict[str, str]:
    """With 'models': the replica's pool and the name its model is served as.

    vLLM labels its own series `model_name` already; these label every series of
    the target, so a panel can split by pool even for series without it."""
    labels = {
        at.name: {POOL_LABEL: pool.name, MODEL_LABEL: pool.served_name}
        for pool in settings.routed_pools()
        for at in pool.placements
    }
    return labels.get(replica, {})


def prometheus_config(
    settings: Settings, *, api_key_file: str | None, replicas: Mapping[str, str]
) -> str:
    """prometheus.yml: the replicas, labelled by container name, and the exporter.

    `replicas` maps each replica's name to where nginx reaches it (the plan's
    upstreams); monitoring runs beside nginx and reaches them there too. Valid for
    Prometheus 2.42 (Debian 12, the offline tests) and 3.x (the pinned image).
    """
    prom = settings.monitoring.prometheus
    interval = f"{prom.scrape_interval_seconds}s"
    # Prometheus refuses a scrape timeout longer than the interval (default 10 s).
    timeout = f"{min(prom.scrape_interval_seconds, 10)}s"
    vllm_job: dict[str, object] = {
        "job_name": "vllm",
        "metrics_path": "/metrics",
        "static_configs": [
            {"targets": [address], "labels": {REPLICA_LABEL: name, **_pool_labels(settings, name)}}
            for name, address in replicas.items()
        ],
    }
    if api_key_file is not None:
        vllm_job["authorization"] = {"type": "Bearer", "credentials_file": api_key_file}
    config = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": timeout,
            "evaluation_interval": interval,
        },
        "scrape_configs": [
            vllm_job,
            {
                "job_name": "vllm-lb",
                "static_configs": [
                    {"targets": [f"{settings.monitoring.lb_exporter.name}:{METRICS_PORT}"]}
                ],
            },
        ],
    }
    return "# Rendered by components/plan/monitoring.py from the stack config.\n" + yaml.safe_dump(
        config, sort_keys=False
    )


def grafana_datasources(prometheus_name: str, scrape_interval_seconds: int) -> str:
    config = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": DATASOURCE_UID,
                "type": "prometheus",
                "access": "proxy",
                "url": f"http://{prometheus_name}:{PROMETHEUS_PORT}",
                "isDefault": True,
                "editable": False,
                # Grafana's $__rate_interval is at least four of these.
                "jsonData": {"timeInterval": f"{scrape_interval_seconds}s"},
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def grafana_dashboard_provider() -> str:
    config = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "vllm-nginx",
                "type": "file",
                "folder": "vLLM",
                # The file in the repository is the source: edits in the UI would
                # be lost on the next `pulumi up`, so they are not allowed.
                "disableDeletion": True,
                "allowUiUpdates": False,
                "options": {"path": GRAFANA_DASHBOARDS},
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def build_monitoring_plan(settings: Settings, replicas: Mapping[str, str]) -> MonitoringPlan | None:
    """The three containers, or None when monitoring is off; `replicas` as for
    `prometheus_config`."""
    mon = settings.monitoring
    if not mon.enabled:
        return None
    api_key_file = PROMETHEUS_API_KEY_FILE if settings.api_key is not None else None
    prom, graf, exporter = mon.prometheus, mon.grafana, mon.lb_exporter
    host = _url_host(settings.public_host, mon.bind_address)
    prometheus = MonitoringContainer(
        name=prom.name,
        image=prom.image,
        entrypoint=PROMETHEUS_ENTRYPOINT,
        command=(
            f"--config.file={PROMETHEUS_CONFIG}",
            f"--storage.tsdb.path={PROMETHEUS_DATA}",
            f"--storage.tsdb.retention.time={prom.retention_days}d",
            f"--web.listen-address=0.0.0.0:{PROMETHEUS_PORT}",
        ),
        uploads=(
            FileUpload(
                PROMETHEUS_CONFIG,
                prometheus_config(settings, api_key_file=api_key_file, replicas=replicas),
            ),
        ),
        secret_uploads=(
            (SecretFile(PROMETHEUS_API_KEY_FILE, PROMETHEUS_API_KEY_SECRET),)
            if api_key_file
            else ()
        ),
        volume=prom.volume,
        volume_path=PROMETHEUS_DATA,
        bind_address=mon.bind_address,
        host_port=prom.port,
        container_port=PROMETHEUS_PORT,
        url=f"http://{host}:{prom.port}",
    )
    grafana = MonitoringContainer(
        name=graf.name,
        image=graf.image,
        # Run as published: the image's own entry point reads the *__FILE variables.
        command=(),
        env=(
            f"GF_SECURITY_ADMIN_USER={GRAFANA_ADMIN_USER}",
            f"GF_SECURITY_ADMIN_PASSWORD__FILE={GRAFANA_PASSWORD_FILE}",
            "GF_USERS_ALLOW_SIGN_UP=false",
            "GF_AUTH_ANONYMOUS_ENABLED=false",
            "GF_ANALYTICS_REPORTING_ENABLED=false",
            "GF_ANALYTICS_CHECK_FOR_UPDATES=false",
            "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES=false",
            f"GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH={GRAFANA_DASHBOARDS}/vllm.json",
        ),
        uploads=(
            FileUpload(
                f"{GRAFANA_PROVISIONING}/datasources/vllm-nginx.yaml",
                grafana_datasources(prom.name, prom.scrape_interval_seconds),
            ),
            FileUpload(
                f"{GRAFANA_PROVISIONING}/dashboards/vllm-nginx.yaml", grafana_dashboard_provider()
            ),
            FileUpload(f"{GRAFANA_DASHBOARDS}/vllm.json", DASHBOARD_FILE.read_text()),
        ),
        secret_uploads=(SecretFile(GRAFANA_PASSWORD_FILE, GRAFANA_PASSWORD_SECRET),),
        volume=graf.volume,
        volume_path=GRAFANA_DATA,
        bind_address=mon.bind_address,
        host_port=graf.port,
        container_port=GRAFANA_PORT,
        url=f"http://{host}:{graf.port}",
    )
    lb_exporter = MonitoringContainer(
        name=exporter.name,
        image=exporter.image,
        entrypoint=("python3",),
        command=(
            EXPORTER_PATH,
            f"--syslog=0.0.0.0:{SYSLOG_PORT}",
            f"--http=0.0.0.0:{METRICS_PORT}",
            # By name where the name is the address, else NAME=ADDRESS:PORT.
            *[
                f"--replica={address}"
                if address.startswith(f"{name}:")
                else f"--replica={name}={address}"
                for name, address in replicas.items()
            ],
        ),
        uploads=(FileUpload(EXPORTER_PATH, EXPORTER_SOURCE.read_text()),),
    )
    return MonitoringPlan(
        prometheus=prometheus,
        grafana=grafana,
        lb_exporter=lb_exporter,
        keep_data_on_destroy=mon.keep_data_on_destroy,
        lb_syslog=f"{exporter.name}:{SYSLOG_PORT}",
        stop_grace_seconds=settings.stop_grace_seconds,
        restart_policy=settings.restart_policy,
        pull_timeout_minutes=settings.vllm_image.pull_timeout_minutes,
        keep_images=settings.vllm_image.keep_on_destroy,
    )
