"""The cluster component: wires one `Plan` into the guide's components.

Nothing here decides anything: one Engine per Docker engine, one Pool per
pool (in the loader's order, for the downloads they share), the LoadBalancer
after every pool's readiness, Monitoring; secrets as Pulumi secrets.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_command as command
import pulumi_docker as docker

from components import PROJECT_DIR
from components.config.settings import Settings
from components.deployment.balancer import LoadBalancer, LoadBalancerArgs
from components.deployment.engine import Engine, EngineArgs
from components.deployment.monitoring import Monitoring, MonitoringArgs
from components.deployment.pool import DownloadKey, EngineParts, Pool, PoolArgs
from components.deployment.standby import Standby, standby_component
from components.lb.keys import render_key_file
from components.lb.nginx_conf import render_api_key_map
from components.plan.build import build_plan
from components.plan.model import (
    API_KEY_ENV,
    API_KEY_MAP_SECRET,
    HF_TOKEN_ENV,
    LB_CERTIFICATE_ENV,
    TLS_CERTIFICATE_SECRET,
    TLS_KEY_SECRET,
    HostPlan,
    Plan,
    host_tls_secret,
)
from components.plan.monitoring import GRAFANA_PASSWORD_SECRET, PROMETHEUS_API_KEY_SECRET

TYPE_TOKEN = "vllm-nginx:index:VllmCluster"


@dataclass(frozen=True)
class VllmClusterArgs:
    """Validated settings plus where the deploying machine runs its checks."""

    settings: Settings
    docker_host: str | None = None
    """The engine the checks talk to; the same one the docker provider targets."""
    project_dir: Path = PROJECT_DIR
    python: str = sys.executable
    rolling: bool = True
    """Declare the update waves (components.deployment.serving decides: only when replicas run)."""


def _secret_values(settings: Settings) -> dict[str, pulumi.Output[str]]:
    """Every secret the plan refers to by name, as a Pulumi secret."""
    values: dict[str, str] = {}
    if settings.hf_token is not None:
        values[HF_TOKEN_ENV] = settings.hf_token.get_secret_value()
    if settings.api_key is not None:
        key = settings.api_key.get_secret_value()
        values[API_KEY_ENV] = key
        named = {
            name: entry.key.get_secret_value() for name, entry in (settings.api_keys or {}).items()
        }
        # With named keys the file holds their digests (components/lb/keys.py).
        values[API_KEY_MAP_SECRET] = (
            render_key_file(key, named) if named else render_api_key_map(key)
        )
        values[PROMETHEUS_API_KEY_SECRET] = key
    if settings.grafana_password is not None:
        values[GRAFANA_PASSWORD_SECRET] = settings.grafana_password.get_secret_value()
    if settings.tls_certificate is not None:
        values[TLS_CERTIFICATE_SECRET] = settings.tls_certificate.get_secret_value()
        values[LB_CERTIFICATE_ENV] = settings.tls_certificate.get_secret_value()
    if settings.tls_key is not None:
        values[TLS_KEY_SECRET] = settings.tls_key.get_secret_value()
    for host in settings.hosts or ():
        tls = host.tls
        if tls is None or tls.key_material is None:
            continue
        for part, pem in (
            ("ca", tls.ca_material),
            ("cert", tls.cert_material),
            ("key", tls.key_material),
        ):
            if pem is not None:
                values[host_tls_secret(host.name, part)] = pem.get_secret_value()
    return {name: pulumi.Output.secret(value) for name, value in values.items()}


class VllmCluster(pulumi.ComponentResource):
    """N vLLM replicas behind one nginx, as in vLLM's "Using Nginx" guide."""

    lb_url: pulumi.Output[str]
    replica_urls: pulumi.Output[list[str]]
    replica_names: pulumi.Output[list[str]]
    served_model_name: pulumi.Output[str]
    verified_models: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        args: VllmClusterArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        settings = args.settings
        # The plan first: if it cannot be made, nothing (not even this component)
        # has been registered with Pulumi.
        self.plan: Plan = build_plan(settings, project_dir=args.project_dir, python=args.python)
        super().__init__(TYPE_TOKEN, name, None, opts)
        self._args = args
        plan = self.plan
        self._secrets = _secret_values(settings)

        child = pulumi.ResourceOptions(parent=self)
        # Per engine: its provider, network, caches and images.
        engines = [self._engine(name, host) for host in plan.hosts]
        lb_host = next(e for e in engines if e.plan.runs_load_balancer)
        self.network = lb_host.engine.network
        lb_environment = self._engine_environment(lb_host.plan)
        # Per pool, in the loader's order: a pool waits for the downloads of an
        # earlier one that fetched its repositories. Pools share nothing else, so
        # one pool's update never waits on another's.
        canary_of = {c.pool: c for c in plan.canaries}
        steps = list(zip(plan.replicas, plan.rollouts, strict=True))
        downloads: dict[DownloadKey, list[command.local.Command]] = {}
        self.pools: list[Pool] = []
        for pool, prefix in plan.pool_keys:
            component = Pool(
                f"{name}-{prefix}pool",
                PoolArgs(
                    pool=pool,
                    replicas=[(r, rollout) for r, rollout in steps if rollout.pool == pool],
                    canary=canary_of.get(pool),
                    engines=engines,
                    balancer_environment=lb_environment,
                    earlier_downloads=dict(downloads),
                    cache=plan.cache,
                    compile_cache=plan.compile_cache,
                    restart_policy=plan.restart_policy,
                    secrets=self._secrets,
                    rolling=args.rolling,
                    project_dir=args.project_dir,
                    moved_from=self,
                    names=name,
                ),
                opts=child,
            )
            for key, jobs in component.downloads.items():
                downloads.setdefault(key, []).extend(jobs)
            self.pools.append(component)
        containers = {n: c for p in self.pools for n, c in p.containers.items()}
        # In wave order: the verify step's triggers keep their order.
        waves = sorted(steps, key=lambda step: step[1].wave)
        self.replicas = [containers[replica.name] for replica, _ in waves]
        checks = [check for p in self.pools for check in p.checks]
        canaries = [p.canary for p in self.pools if p.canary is not None]
        # nginx waits for every pool's replicas and readiness; on a first deploy
        # the canaries then find no nginx and return at once.
        lb_after: list[pulumi.Resource] = [*self.replicas, *checks, *canaries]

        self.monitoring: Monitoring | None = None
        if plan.monitoring is not None:
            self.monitoring = Monitoring(
                f"{name}-monitoring",
                MonitoringArgs(plan.monitoring, self.network, self._secrets, lb_host.provider),
                opts=child,
            )
            lb_after.append(self.monitoring.lb_exporter)

        lb = plan.load_balancer
        lb_args = LoadBalancerArgs(
            plan=lb,
            # With a standby, each balancer is verified at its own address.
            verify=plan.verify if plan.standby is None else plan.standby.balancers[0].verify,
            restart_policy=plan.restart_policy,
            network=self.network,
            provider=lb_host.provider,
            engine_environment=lb_environment,
            verify_environment={
                **{key: self._secrets[key] for key in plan.verify.secret_env},
                **self._default_environment(),
            },
            secrets=self._secrets,
            starts_after=lb_after,
            reloads_after=[*(r for p in self.pools for r in p.rotations), *checks],
            replica_ids=[c.id for c in self.replicas],
            exporter=self.monitoring.lb_exporter if self.monitoring is not None else None,
            project_dir=self._args.project_dir,
            moved_from=self,
            names=name,
        )
        self.balancer = LoadBalancer(f"{name}-balancer", lb_args, opts=child)
        self.standby: Standby | None = None
        if plan.standby is not None:
            self.standby = standby_component(name, plan, self.balancer, lb_args, engines, child)
        self.load_balancer = self.balancer.container
        self.lb_config = self.balancer.config
        self.verify = self.balancer.verify

        self.lb_url = pulumi.Output.from_input(lb.url)
        self.replica_urls = pulumi.Output.from_input([r.url for r in plan.replicas])
        self.replica_names = pulumi.Output.all(*[c.name for c in self.replicas]).apply(list)
        self.served_model_name = pulumi.Output.from_input(plan.served_model_name)
        self.host_outputs: pulumi.Output[dict[str, dict[str, object]]] | None = None
        named = [host for host in plan.hosts if host.own_provider]
        if named:
            self.host_outputs = pulumi.Output.from_input(
                {
                    host.name: {
                        "docker_host": host.docker_host,
                        "replica_names": [r.name for r in host.replicas],
                        "replica_urls": [r.url for r in host.replicas],
                        "load_balancer": host.runs_load_balancer,
                    }
                    for host in named
                }
            )
        # The verify step prints no secret. pulumi-command 1.2.1 keeps stdout
        # plain even with a secret environment; 0.8 marked every output secret
        # (pulumi/pulumi-command#256), so a pin change must not hide the models.
        self.verified_models = pulumi.Output.unsecret(self.verify.stdout)
        self.register_outputs(
            {
                "lb_url": self.lb_url,
                "replica_urls": self.replica_urls,
                "replica_names": self.replica_names,
                "served_model_name": self.served_model_name,
                "verified_models": self.verified_models,
                **self.monitoring_outputs(),
                **self.hosts_outputs(),
                **self.pools_outputs(),
            }
        )

    def pools_outputs(self) -> dict[str, pulumi.Output[Any]]:
        """With 'models': per pool, its served name, adapters and replicas."""
        if not self.plan.pools:
            return {}
        return {
            "pools": pulumi.Output.from_input(
                {
                    pool.name: {
                        "model": pool.model,
                        "served_model_name": pool.served_name,
                        "adapters": [name for name, _ in pool.adapters],
                        "replica_names": list(pool.replicas),
                    }
                    for pool in self.plan.pools
                }
            )
        }

    def hosts_outputs(self) -> dict[str, pulumi.Output[Any]]:
        """Per host, its replicas (names, URLs) and engine; only with 'hosts'."""
        if self.host_outputs is None:
            return {}
        return {"hosts": self.host_outputs}

    def _engine(self, name: str, host: HostPlan) -> EngineParts:
        """One engine's component, with the provider and environment that reach it."""
        provider = self._engine_provider(name, host)
        prefix = f"{name}-{host.resource_prefix}"
        engine = Engine(
            f"{prefix}engine",
            EngineArgs(
                plan=host,
                network=self.plan.network,
                cache=self.plan.cache,
                compile_cache=self.plan.compile_cache,
                provider=provider,
                names=prefix,
                moved_from=self,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        return EngineParts(host, engine, provider, self._engine_environment(host))

    def _engine_provider(self, name: str, host: HostPlan) -> docker.Provider | None:
        """An explicit provider per host; `local` uses the default one (`docker:host`)."""
        if not host.own_provider:
            return None

        def material(part: str) -> pulumi.Output[str] | None:
            # The material only when the stack holds it as secrets (not a cert directory).
            if not host.engine_secret_env:
                return None
            return self._secrets[host_tls_secret(host.name, part)]

        return docker.Provider(
            f"{name}-{host.name}-docker",
            host=host.docker_host,
            cert_path=host.engine_env.get("DOCKER_CERT_PATH"),
            ca_material=material("ca"),
            cert_material=material("cert"),
            # A Pulumi secret, so the key stays encrypted in the provider's state.
            key_material=material("key"),
            opts=pulumi.ResourceOptions(parent=self),
        )

    def monitoring_outputs(self) -> dict[str, pulumi.Output[str]]:
        """The monitoring URLs, only when monitoring is on."""
        if self.monitoring is None:
            return {}
        return {
            "prometheus_url": self.monitoring.prometheus_url,
            "grafana_url": self.monitoring.grafana_url,
        }

    def _default_environment(self) -> dict[str, pulumi.Input[str]]:
        """`docker:host`, the default provider's engine (`local`'s; the verify step's)."""
        return {"DOCKER_HOST": self._args.docker_host} if self._args.docker_host else {}

    def _engine_environment(self, host: HostPlan) -> dict[str, pulumi.Input[str]]:
        """How a step reaches an engine: `local` by `docker:host`, a host by its
        endpoint, its TLS variables and (as secrets) its TLS material."""
        if not host.own_provider:
            return self._default_environment()
        environment: dict[str, pulumi.Input[str]] = dict(host.engine_env)
        for variable, secret in host.engine_secret_env.items():
            environment[variable] = self._secrets[secret]
        return environment
