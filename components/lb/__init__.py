"""The load balancer's nginx config, rendered from settings with crossplane.

Runs in the `pulumi up` process and in the command-line tools. Pure. What runs
inside the nginx container (the njs script) is in `components.containers.nginx`;
the step that reloads a running nginx is `components.steps.lb_reload`.
"""
