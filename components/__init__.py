"""vLLM replicas behind one nginx, as a Pulumi program.

Each subpackage is named for where its code runs (docs/architecture.md has the
whole map and what each may import):

- `config`, `plan`, `lb`: pure code, run in the `pulumi up` process and by the
  command-line tools; they import no Pulumi and touch no engine.
- `shell`: the Pulumi program and its components, in the `pulumi up` process.
- `steps`: processes that `pulumi up` starts through pulumi-command (download,
  readiness, rollout, reload, verify), each `python -m components.steps.NAME`.
- `containers`: files that run inside containers (the download job in the vLLM
  image, njs in nginx, the exporter, Grafana's dashboard); shipped as text.
- `cli`: what a user runs by hand before `pulumi up`.
"""

from pathlib import Path

# Stack files, docker/ and the stand-in live at the project's top level.
PROJECT_DIR = Path(__file__).absolute().parent.parent
