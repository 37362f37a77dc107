"""The Pulumi program and its components: the cluster, an engine, the load balancer, monitoring.

Runs in the `pulumi up` process only. Maps the plan onto pulumi-docker and
pulumi-command resources and decides nothing of its own.
"""
