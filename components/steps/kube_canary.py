"""The canary on Kubernetes: a pool's first wave, a StatefulSet of its own, judged before
the pool's other StatefulSet is updated.

The judgement is Docker's (`canary.judge`, `canary_compare`); only the reach differs:
each replica's `/metrics` through the API server's proxy to its Service (ClusterIPs are
not reachable where `pulumi up` runs), with the stack's kubeconfig, and a worse canary
taken out by its pods' rotation label, so its Services select nothing
(docs/kubernetes.md, "The canary").
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from components.plan.specs import IN_ROTATION, OUT_OF_ROTATION, ROTATION_LABEL, KubeCanarySpec
from components.plan.specs import WatchedReplica as Replica
from components.steps.canary import Scraper, how_of, judge
from components.steps.canary_compare import parse
from components.steps.runner import StepError, run_step

TIMEOUT_SECONDS = 5


def _failure(err: Exception) -> str:
    if isinstance(err, ApiException):
        return f"the API server answered {err.status} {err.reason}"
    return str(err)


@dataclass(frozen=True)
class Services:
    """A replica is in rotation while its pod carries `ROTATION_LABEL: in`, which its
    Service selects; `out` empties the Service, and nginx sends its requests elsewhere."""

    core: Any
    namespace: str

    @property
    def where(self) -> str:
        return f" (labelled {ROTATION_LABEL}={OUT_OF_ROTATION}: its Service selects no pod)"

    def _label(self, replica: Replica, value: str) -> None:
        body = {"metadata": {"labels": {ROTATION_LABEL: value}}}
        self.core.patch_namespaced_pod(replica.upstream, self.namespace, body)

    def put_back(self, replica: Replica) -> bool:
        pod = self.core.read_namespaced_pod(replica.upstream, self.namespace)
        if (pod.metadata.labels or {}).get(ROTATION_LABEL) == IN_ROTATION:
            return False
        self._label(replica, IN_ROTATION)
        return True

    def take_out(self, replica: Replica) -> None:
        self._label(replica, OUT_OF_ROTATION)


def proxy_scraper(api: Any) -> Scraper:
    """`/metrics` by its API server path (`WatchedReplica.metrics_url`)."""

    def fetch(path: str) -> Any:
        method, url, headers, body, post = api.param_serialize(
            method="GET", resource_path=path, auth_settings=["BearerToken"]
        )
        try:
            response = api.call_api(
                method, url, headers, body, post, _request_timeout=TIMEOUT_SECONDS
            )
            response.read()
        except (ApiException, urllib3.exceptions.HTTPError) as err:
            raise OSError(_failure(err)) from None
        if response.status != 200:
            raise OSError(f"the API server answered {response.status} {response.reason}")
        return parse(response.data.decode("utf-8", "replace"))

    return fetch


def _template(apps: Any, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found = apps.read_namespaced_stateful_set(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    spec: dict[str, Any] = found.spec.template.spec.to_dict()
    return spec


def run(spec: KubeCanarySpec, api: Any, fetch: Callable[[str], Any] | None = None) -> str:
    """What to print on success; `CanaryFailed` when the update must stop.

    Not watched when there is nothing to compare: the other StatefulSet does not exist
    yet (a first deploy), or the canary's pods run what the others run (the canary was
    just turned on, only a `rollout.canary*` setting changed, or a revert)."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    rotation = Services(core, spec.namespace)
    names = ", ".join(r.name for r in spec.canary)
    old = ", ".join(r.name for r in spec.baseline)
    rest = _template(apps, spec.namespace, spec.rest_workload)
    if rest is None:
        return f"canary: {old} not deployed yet (first deploy): {names} not watched"
    if _template(apps, spec.namespace, spec.canary_workload) == rest:
        for replica in spec.canary:
            rotation.put_back(replica)
        return f"canary: {names} run what {old} run (nothing to compare): not watched"
    return judge(rotation, spec.canary, spec.baseline, how_of(spec), fetch or proxy_scraper(api))


def watched(spec: KubeCanarySpec) -> str:
    """The step as `pulumi up` runs it, on the stack's cluster."""
    kubeconfig = os.path.expanduser(spec.kubeconfig) if spec.kubeconfig else None
    connect: Any = config.new_client_from_config  # untyped
    try:
        api = connect(config_file=kubeconfig, context=spec.context)
        return run(spec, api)
    except ApiException as err:
        raise StepError(f"canary: {_failure(err)}") from None
    except config.ConfigException as err:
        raise StepError(f"canary: the kubeconfig: {err}") from None


def main() -> int:
    return run_step(KubeCanarySpec, watched)


if __name__ == "__main__":
    sys.exit(main())
