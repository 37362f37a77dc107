"""Check a stack file the way `pulumi up` would, without the Pulumi CLI.

    python -m components.cli.check --stack dev       # Pulumi.dev.yaml: the plan, or every problem
    python -m components.cli.check --stack dev --hf-token-status   # set | missing | not-needed

Reads the file as the CLI does, runs the same loader, prints the plan (exit 0) or every
problem (exit 1); a rule comparing an encrypted value is reported as unverified.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from components import PROJECT_DIR
from components.cli.check_kubernetes import describe_kubernetes, kubernetes_plan
from components.config.loading import deployment_problems
from components.config.problems import ConfigError
from components.config.sections import Backend
from components.config.settings import Settings
from components.config.stack_file import (
    CheckedStack,
    StackFile,
    StackFileError,
    check_stack_file,
    settings_from_stack_file,
)
from components.config.vllm_release import old_release_warning
from components.plan.build import build_plan, is_local_model
from components.plan.model import Plan, ReplicaPlan
from components.plan.monitoring import GRAFANA_ADMIN_USER


def _api_key_lines(settings: Settings) -> list[str]:
    """One line per named key: its name and limits, never the key (docs/api-keys.md)."""
    lines = []
    for index, (name, entry) in enumerate((settings.api_keys or {}).items()):
        rules = [
            f"models {', '.join(entry.models)}" if entry.models is not None else "every model",
            *([f"{entry.requests_per_minute}/min"] if entry.requests_per_minute else []),
            *([f"{entry.concurrent_requests} at once"] if entry.concurrent_requests else []),
            *([f"max_tokens <= {entry.max_tokens}"] if entry.max_tokens else []),
        ]
        head = "  apiKeys        " if index == 0 else "                 "
        lines.append(f"{head}{name}: {'; '.join(rules)}")
    return lines


def needs_hf_token(settings: Settings) -> bool:
    """A model id (not a local path) is downloaded from Hugging Face; gated ones need a token."""
    return any(
        not is_local_model(m)
        for pool in settings.pools()
        for m in (pool.model, *(a.model for a in pool.adapters))
    )


def hf_token_status(settings: Settings) -> str:
    if settings.hf_token is not None:
        return "set"
    return "missing" if needs_hf_token(settings) else "not-needed"


def _image_line(plan: Plan) -> str:
    image = plan.vllm_image
    if image.build is None:
        return f"{image.name} (pulled)"
    build = image.build
    target = f", target {build.target}" if build.target else ""
    return f"{image.name}, built from {build.context} ({build.dockerfile}{target})"


def _cache_line(plan: Plan) -> str:
    cache = plan.cache
    where = f"host directory {cache.host_path}" if cache.host_path else f"volume {cache.volume}"
    kept = "kept" if cache.keep_on_destroy else "removed"
    shared = (
        "one per host, shared by its replicas" if len(plan.hosts) > 1 else "shared by all replicas"
    )
    return f"{where}, {shared}, {kept} on `pulumi destroy`"


def _standby_lines(plan: Plan) -> list[str]:
    """The two balancers behind the floating address, when there is a standby."""
    if plan.standby is None:
        return []
    first, second = plan.standby.balancers
    return [
        f"  standby        {plan.standby.virtual_address} floats (VRRP, keepalived) between "
        f"nginx on {first.host} ({first.url}, holds it first) and {second.host} ({second.url})"
    ]


def _monitoring_lines(plan: Plan) -> list[str]:
    """Where the UIs will be, and what outlives `pulumi destroy`: what a user opens next."""
    monitoring = plan.monitoring
    if monitoring is None:
        return ["  monitoring     off ('monitoring.enabled' is false)"]
    prom, graf, exporter = monitoring.prometheus, monitoring.grafana, monitoring.lb_exporter
    kept = "kept" if monitoring.keep_data_on_destroy else "removed"
    lines = [
        "  monitoring     Prometheus, Grafana and the load balancer's exporter; "
        f"their data volumes are {kept} on `pulumi destroy`",
        f"    Prometheus   {prom.url} ({prom.name}, published on "
        f"{prom.bind_address}:{prom.host_port}, volume {prom.volume})",
        f"    Grafana      {graf.url} ({graf.name}, user {GRAFANA_ADMIN_USER}, published on "
        f"{graf.bind_address}:{graf.host_port}, volume {graf.volume})",
        f"    exporter     {exporter.name}, not published (nginx sends it a line per request, "
        f"Prometheus scrapes it on network {plan.network})",
    ]
    # Grafana asks for 'grafanaPassword'; Prometheus has no login of its own.
    if prom.bind_address is not None and not ipaddress.ip_address(prom.bind_address).is_loopback:
        lines.append(
            f"    Prometheus has no login: anyone who can reach port {prom.host_port} "
            "on this host can query it"
        )
    return lines


def _replica_lines(replicas: Sequence[ReplicaPlan], indent: str) -> list[str]:
    """A replica a line: its name, its GPUs or CPUs, where it is published."""
    width = max(len(r.name) for r in replicas)
    lines = []
    for replica in replicas:
        if replica.gpu_ids:
            devices = "GPU " + ",".join(replica.gpu_ids)
        elif replica.cpu_set:
            devices = f"CPUs {replica.cpu_set}"
        else:
            devices = "no GPU"
        lines.append(f"{indent}{replica.name:<{width}}  {devices:<10}  {replica.url}")
    return lines


def _fit_line(settings: Settings, plan: Plan, pool: str) -> str:
    """Whether the fit check runs for a pool, and where (named when on 'hosts')."""
    if not settings.fit_check.enabled:
        return "off (fitCheck.enabled false)"
    engines = [h for h in plan.hosts for fit in h.fits if fit.pool == pool]
    if not engines:
        return "none (no replica)"
    named = [h.name for h in engines if h.own_provider]
    where = f" on {', '.join(named)}" if named else ""
    return f"runs{where} before the download and the replicas"


def _pool_lines(settings: Settings, plan: Plan) -> list[str]:
    """Each pool: its model and served name, adapters, policy, and its replicas."""
    lines = []
    for pool, own in zip(plan.pools, settings.pools(), strict=True):
        alias = f" as {pool.served_name}" if pool.served_name != pool.model else ""
        kind = ", embeddings" if pool.embedding else ""
        lines.append(
            f"  pool {pool.name:<9} {pool.model}{alias}{kind}, tensor parallel size "
            f"{own.tensor_parallel_size}, policy {own.policy}"
        )
        if pool.image != plan.vllm_image:
            lines.append(f"    image        {pool.image.name}")
        for name, model in pool.adapters:
            lines.append(f"    adapter      {name} ({model})")
        lines.append(f"    fit check    {_fit_line(settings, plan, pool.name)}")
        mine = [r for r in plan.replicas if r.pool == pool.name]
        lines += _replica_lines(mine, "    ")
    return lines


def describe(settings: Settings, plan: Plan, stack: StackFile) -> list[str]:
    """The plan in a few readable lines."""
    lb = settings.load_balancer
    backend = "CPU backend" if settings.backend is Backend.CPU else "GPU backend"
    served = plan.served_model_name
    alias = f" (clients ask for {served})" if served != settings.model else ""
    lines = [f"{stack.path.name}: valid; `pulumi up` would deploy:"]
    if plan.pools:
        lines += [
            f"  pools          {len(plan.pools)}, {len(plan.replicas)} replicas, {backend}, "
            f"on network {plan.network}",
            *_pool_lines(settings, plan),
        ]
    else:
        lines += [
            f"  model          {settings.model}{alias}, {backend}",
            f"  replicas       {len(plan.replicas)}, tensor parallel size "
            f"{settings.tensor_parallel_size}, on network {plan.network}",
        ]
    for host in (h for h in plan.hosts if h.own_provider):
        where = ", load balancer" if host.runs_load_balancer else ""
        lines.append(
            f"  host           {host.name}: {host.docker_host}, "
            f"{len(host.replicas)} replica(s){where}"
        )
    if not plan.pools:
        lines += _replica_lines(plan.replicas, "    ")
    if not plan.pools or any(p.image == plan.vllm_image for p in plan.pools):
        lines.append(f"  image          {_image_line(plan)}")
    if not plan.pools:
        lines.append(f"  fit check      {_fit_line(settings, plan, plan.pool_keys[0][0])}")
    lines += [
        f"  cache          {_cache_line(plan)}",
        f"  load balancer  {plan.load_balancer.url} ({plan.load_balancer.name}, "
        f"{'by model to its pool' if plan.pools else lb.policy.value}, "
        f"published on {lb.bind_address}:{lb.port})",
        *_standby_lines(plan),
        *_monitoring_lines(plan),
    ]
    exposed = not lb.bind_address.startswith("127.")
    if settings.api_key is not None:
        lines.append("  apiKey         set: clients must send it (Authorization: Bearer ...)")
    elif exposed:
        lines.append(
            f"  apiKey         not set: anyone who can reach port {lb.port} on this host "
            "can use the model"
        )
    else:
        lines.append("  apiKey         not set (the load balancer listens on loopback only)")
    lines += _api_key_lines(settings)
    status = hf_token_status(settings)
    if status == "set":
        lines.append("  hfToken        set")
    elif status == "missing":
        lines.append(
            "  hfToken        not set: a gated model needs one "
            "(`pulumi config set --secret hfToken`)"
        )
    else:
        lines.append("  hfToken        not set (the model is a local path)")
    return lines


def notes(checked: CheckedStack) -> list[str]:
    stack = checked.stack
    lines = list(stack.notes)
    if stack.secret:
        keys = ", ".join(sorted(stack.written.get(k, k) for k in stack.secret))
        lines.append(
            f"secret values were not checked ({keys}): they are encrypted in the stack file, "
            "so a placeholder that passes the value rules stood in for them"
        )
    lines += [f"'{rule.key}' {rule.rule}" for rule in checked.unverified]
    return [f"note: {line}" for line in lines]


def _plan_problem(err: ValueError) -> str:
    if isinstance(err, ValidationError):
        detail = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in err.errors(include_input=False, include_url=False)
        )
    else:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"the settings pass their rules but the plan cannot be built: {detail}"


def run(stack_name: str, project_dir: Path, out: TextIO, err: TextIO) -> int:
    path = project_dir / f"Pulumi.{stack_name}.yaml"
    try:
        checked = check_stack_file(path)
    except StackFileError as error:
        for problem in error.problems:
            print(problem, file=err)
        return 1
    problems = [str(p) for p in checked.problems]
    plan = None
    if checked.settings is not None:
        # What `pulumi up` checks next: the engine it targets, the files it builds.
        problems += [
            str(p)
            for p in deployment_problems(
                checked.settings,
                docker_host=checked.stack.config.get("docker:host"),
                project_dir=project_dir,
            )
        ]
    if checked.settings is not None and not problems and checked.settings.engine == "kubernetes":
        cluster = kubernetes_plan(checked.settings, project_dir)
        for line in describe_kubernetes(checked.settings, cluster, path.name):
            print(line, file=out)
        for line in notes(checked):
            print(line, file=out)
        return 0
    if checked.settings is not None and not problems:
        try:
            plan = build_plan(checked.settings, project_dir=project_dir)
        except ValueError as error:
            problems.append(_plan_problem(error))
    if checked.settings is None or plan is None:
        count = len(problems)
        print(
            f"{path.name}: {count} problem{'s' if count != 1 else ''}; "
            "`pulumi up` would stop before creating anything:",
            file=err,
        )
        for line in [*(f"  {p}" for p in problems), *notes(checked)]:
            print(line, file=err)
        return 1
    for line in [*describe(checked.settings, plan, checked.stack), *notes(checked)]:
        print(line, file=out)
    # What `pulumi up` warns about, too; it does not stop it (the stack's image, a pool's own).
    for key, image in checked.settings.images():
        if (warning := old_release_warning(image.prebuilt, f"{key}.prebuilt")) is not None:
            print(f"warning: {warning}", file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.cli.check",
        description="check Pulumi.<stack>.yaml as `pulumi up` would (no Pulumi CLI needed)",
    )
    parser.add_argument("--stack", default="dev", help="checks Pulumi.<stack>.yaml (default dev)")
    parser.add_argument(
        "--project-dir",
        type=Path,
        default=PROJECT_DIR,
        help="directory with Pulumi.yaml and the stack files (default: this project)",
    )
    parser.add_argument(
        "--hf-token-status",
        action="store_true",
        help="after checking, print only: set, missing (model from Hugging Face, no token) "
        "or not-needed (local model path)",
    )
    args = parser.parse_args(argv)
    if not args.hf_token_status:
        return run(args.stack, args.project_dir, sys.stdout, sys.stderr)
    try:
        settings = settings_from_stack_file(args.project_dir / f"Pulumi.{args.stack}.yaml")
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    print(hf_token_status(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
