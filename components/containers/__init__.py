"""Files that run inside containers, never in the `pulumi up` process.

Each subfolder is named for its container: `vllm` (the download job), `nginx` (njs),
`exporter`, `grafana` (the dashboard). The program uploads them as text; Python here
imports the standard library only (and `huggingface_hub` in the vLLM image).
"""

from pathlib import Path

CONTAINERS_DIR = Path(__file__).resolve().parent
