"""Files that run inside containers, never in the `pulumi up` process.

Each subfolder is named for the container its files run in: `vllm` (the
download job, in the vLLM image's Python), `nginx` (njs), `exporter` (the load
balancer's exporter, on the base image's python3), `grafana` (the dashboard).
The program reads them as text and uploads them; Python files here import the
standard library only (and `huggingface_hub` in the vLLM image), never
`components`.
"""

from pathlib import Path

CONTAINERS_DIR = Path(__file__).resolve().parent
