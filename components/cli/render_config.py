"""Print the nginx config a stack will run, so it can be reviewed before `pulumi up`.

    python -m components.cli.render_config --stack dev
    python -m components.cli.render_config --stack dev --upstream 10.0.0.5:8000 --upstream gpu2:8000

With `--upstream`, explicit `host:port` replicas stand in for the stack's own. Reads the
stack file as `components.cli.check` does: no Pulumi CLI, no secret values needed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from components import PROJECT_DIR
from components.config.problems import ConfigError
from components.config.sections import Upstream
from components.config.stack_file import settings_from_stack_file
from components.lb.nginx_conf import NginxRuntime, render_nginx_config
from components.plan.build import build_plan


def _upstream(text: str) -> Upstream:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected host:port")
    try:
        return Upstream(host=host, port=int(port))
    except ValidationError as err:
        rules = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in err.errors())
        raise argparse.ArgumentTypeError(f"{text!r}: {rules}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print the rendered nginx.conf of a stack")
    parser.add_argument("--stack", default="dev", help="reads Pulumi.<stack>.yaml (default dev)")
    parser.add_argument(
        "--upstream", action="append", type=_upstream, default=[], help="host:port, repeatable"
    )
    parser.add_argument("--listen-port", type=int, default=80, help="nginx listen port")
    args = parser.parse_args(argv)
    try:
        settings = settings_from_stack_file(PROJECT_DIR / f"Pulumi.{args.stack}.yaml")
    except ConfigError as err:
        # The same reading and rules as `pulumi up` and `python -m components.cli.check`.
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.upstream:
        text = render_nginx_config(
            settings.load_balancer, args.upstream, NginxRuntime(listen_port=args.listen_port)
        )
    else:
        text = build_plan(settings, project_dir=PROJECT_DIR).load_balancer.config
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
