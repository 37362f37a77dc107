"""A faked GPU inventory, at the driver's level: dockerd's own `nvidia` device driver.

dockerd registers its built-in `nvidia` device driver only when
`nvidia-container-runtime-hook` is on its PATH when it starts; a container's
device request of that driver then gets `NVIDIA_VISIBLE_DEVICES` (its device
ids) and the hook as an OCI prestart hook, run with dockerd's environment
(moby `daemon/nvidia_linux.go`; verified on Debian's dockerd 20.10.24 by
tests/test_e2e_fit.py). The real hook (NVIDIA Container Toolkit) puts the
visible GPUs and the host's `nvidia-smi` into the container's root file
system. Ours does the same with a `nvidia-smi` that prints the inventory of
`FAKE_GPUS` (one `index, uuid, name, MiB` per `;`), only the visible GPUs and
numbered from 0 as in a real container. Without our hook on its PATH, a dockerd
refuses such a request ("could not select device driver"), as on a machine
without the toolkit.
"""

from __future__ import annotations

import stat
from pathlib import Path

HOOK = "nvidia-container-runtime-hook"
INVENTORY_ENV = "FAKE_GPUS"

_HOOK_SOURCE = '''#!/usr/bin/env python3
"""Fake nvidia-container-runtime-hook: prestart, OCI state on stdin."""
import json, os, sys

state = json.load(sys.stdin)
bundle = state["bundle"]
with open(os.path.join(bundle, "config.json")) as f:
    spec = json.load(f)
root = spec["root"]["path"]
root = root if os.path.isabs(root) else os.path.join(bundle, root)
env = dict(e.split("=", 1) for e in spec["process"].get("env", []) if "=" in e)
visible = env.get("NVIDIA_VISIBLE_DEVICES", "")
rows = [r.strip() for r in os.environ.get("FAKE_GPUS", "").split(";") if r.strip()]
def ids(row):
    return [part.strip() for part in row.split(",")[:2]]
if visible not in ("all", ""):
    wanted = visible.split(",")
    rows = [r for r in rows if set(ids(r)) & set(wanted)]
    missing = [w for w in wanted if not any(w in ids(r) for r in rows)]
    if missing:
        sys.stderr.write("nvidia-container-cli: device error: %s: unknown device\\n" % missing[0])
        sys.exit(1)
out = "".join("%d,%s\\n" % (i, r.split(",", 1)[1]) for i, r in enumerate(rows))
smi = os.path.join(root, "usr", "bin", "nvidia-smi")
with open(smi, "w") as f:
    f.write("#!/bin/sh\\ncat <<'EOF'\\n" + out + "EOF\\n")
os.chmod(smi, 0o755)
'''


def install_hook(directory: Path) -> Path:
    """The fake hook in `directory`, to put first on a test dockerd's PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    hook = directory / HOOK
    hook.write_text(_HOOK_SOURCE)
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


def inventory(*gpus: tuple[int, str, int]) -> str:
    """`FAKE_GPUS` for (index, name, MiB) GPUs."""
    return ";".join(f"{i}, GPU-fake-{i:04d}, {name}, {mib}" for i, name, mib in gpus)
