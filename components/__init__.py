"""vLLM replicas behind one nginx, as a Pulumi program.

Subpackages are named for where their code runs (docs/architecture.md has the map):
`config`, `plan`, `lb` are pure; `deployment` is the Pulumi program and its components;
`steps` are processes `pulumi up` starts (`python -m components.steps.NAME`);
`containers` are files run inside containers; `cli` is run by hand before `pulumi up`.
"""

from pathlib import Path

# Stack files, docker/ and the stand-in live at the project's top level.
PROJECT_DIR = Path(__file__).absolute().parent.parent
