"""The standby balancer as plain data: per balancer host its keepalived and its URLs.

Both balancers run the one rendered nginx.conf; keepalived (VRRP) moves the
floating address between them. Why each option is what it is, with the
keepalived manual's words: docs/multi-host.md#a-standby-balancer.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from components.config.settings import Settings
from components.plan.model import BalancerPlan, CheckPlan, ImagePlan, StandbyPlan
from components.plan.specs import VerifySpec

FIRST_PRIORITY, SECOND_PRIORITY = 150, 100
ALIVE_PATH = "/_vrrp/alive"
"""A path nginx answers itself (its JSON 404 of an unknown path), touching no replica."""


def render_keepalived_conf(
    *,
    host: str,
    priority: int,
    interface: str,
    router_id: int,
    advert_seconds: int,
    virtual_address: str,
    check_url: str,
) -> str:
    """keepalived.conf for one balancer; the two differ only in `router_id` and priority.

    The check takes any HTTP answer from nginx as alive, on a path nginx answers
    itself: not /health, whose 503 (a pool down) the standby would give too and which
    probes the replicas (as slow as a connect timeout to a vanished one).
    """
    insecure = " --insecure" if check_url.startswith("https:") else ""
    return f"""! Rendered by vllm-nginx (components/plan/standby.py) for host {host}.
global_defs {{
    router_id vllm-nginx-{host}
    script_user root
    enable_script_security
}}

vrrp_script nginx_answers {{
    script "/usr/bin/curl --silent --output /dev/null --max-time 2{insecure} {check_url}"
    interval 1
    timeout 3
    fall 2
    rise 2
}}

vrrp_instance vllm_nginx {{
    state BACKUP
    nopreempt
    interface {interface}
    virtual_router_id {router_id}
    priority {priority}
    advert_int {advert_seconds}
    virtual_ipaddress {{
        {virtual_address} dev {interface}
    }}
    track_script {{
        nginx_answers
    }}
}}
"""


def build_standby_plan(
    settings: Settings, lb_name: str, scheme: str, verify: CheckPlan
) -> StandbyPlan | None:
    """Each listed host's balancer (the first the higher priority), from validated settings."""
    standby = settings.load_balancer.standby
    if standby is None:
        return None
    lb = settings.load_balancer
    vip = ipaddress.IPv4Interface(standby.virtual_address)
    address = {e.name: e.address for e in settings.engines()}
    balancers = []
    for j, name in enumerate(standby.hosts):
        url = f"{scheme}://{address[name]}:{lb.port}"
        balancers.append(
            BalancerPlan(
                host=name,
                url=url,
                verify=replace(
                    verify,
                    name=f"verify-{name}",
                    spec=_with_url(verify.spec, url),
                ),
                keepalived_name=f"{lb_name}-vrrp",
                priority=FIRST_PRIORITY if j == 0 else SECOND_PRIORITY,
                keepalived_config=render_keepalived_conf(
                    host=name,
                    priority=FIRST_PRIORITY if j == 0 else SECOND_PRIORITY,
                    interface=standby.interface,
                    router_id=standby.router_id,
                    advert_seconds=standby.advert_seconds,
                    virtual_address=standby.virtual_address,
                    check_url=f"{scheme}://127.0.0.1:{lb.port}{ALIVE_PATH}",
                ),
            )
        )
    first, second = balancers
    return StandbyPlan(
        virtual_address=standby.virtual_address,
        url=f"{scheme}://{vip.ip}:{lb.port}",
        image=ImagePlan(name=standby.image, pull_timeout_minutes=5),
        balancers=(first, second),
    )


def _with_url(spec: object, url: str) -> VerifySpec:
    """The verify step's spec aimed at one balancer."""
    assert isinstance(spec, VerifySpec)
    return replace(spec, url=url)
