"""A vLLM stand-in Deployment on the test cluster, through the real pulumi-kubernetes provider.

Used by tests/test_k8s_cluster.py only. `replicas` replicas of `image`, each
requesting `gpus` nvidia.com/gpu, behind a NodePort Service; with `big_gpus`
set, also one Pod asking for that many GPUs (more than the node has), whose
creation the provider waits for until its short timeout and then reports with
the scheduler's reason.
"""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

config = pulumi.Config()
kubeconfig = Path(config.require("kubeconfig")).read_text()
image = config.require("image")
model = config.get("model") or "facebook/opt-125m"
replicas = config.get_int("replicas") or 2
gpus = config.get_int("gpus") or 1
big_gpus = config.get_int("big_gpus")

provider = k8s.Provider("cluster", kubeconfig=pulumi.Output.secret(kubeconfig))
opts = pulumi.ResourceOptions(provider=provider)
namespace = k8s.core.v1.Namespace("ns", metadata={"name": "vllm-nginx-test"}, opts=opts).metadata[
    "name"
]
labels = {"app": "vllm-standin"}
deployment = k8s.apps.v1.Deployment(
    "vllm",
    metadata={"namespace": namespace, "name": "vllm"},
    spec={
        "replicas": replicas,
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "containers": [
                    {
                        "name": "vllm",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "args": [model, "--port", "8000"],
                        "ports": [{"containerPort": 8000, "name": "http"}],
                        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        "readinessProbe": {
                            "httpGet": {"path": "/health", "port": "http"},
                            "periodSeconds": 1,
                        },
                    }
                ]
            },
        },
    },
    opts=opts,
)
service = k8s.core.v1.Service(
    "vllm",
    metadata={"namespace": namespace, "name": "vllm"},
    spec={
        "type": "NodePort",
        "selector": labels,
        "ports": [{"port": 8000, "targetPort": "http", "name": "http"}],
    },
    opts=pulumi.ResourceOptions(provider=provider, depends_on=[deployment]),
)
pulumi.export("node_port", service.spec["ports"][0]["node_port"])
pulumi.export("cluster_ip", service.spec["cluster_ip"])

if big_gpus:
    k8s.core.v1.Pod(
        "too-big",
        metadata={"namespace": namespace, "name": "too-big"},
        spec={
            "containers": [
                {
                    "name": "vllm",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "args": [model],
                    "resources": {"limits": {"nvidia.com/gpu": str(big_gpus)}},
                }
            ]
        },
        opts=pulumi.ResourceOptions(
            provider=provider, custom_timeouts=pulumi.CustomTimeouts(create="20s")
        ),
    )
