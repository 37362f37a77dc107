"""Draw the dashboard's panels from Prometheus query results (docs/dashboard.png).

Grafana cannot run offline here, so the picture in docs/monitoring.md is made from
the same queries Grafana would run, over the end-to-end test's traffic, laid
out in the dashboard's own order with each panel's title, legend format and
unit. It shows the data, not Grafana's look.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

_UNITS = {"s": "seconds", "reqps": "requests/s", "percentunit": "share", "short": ""}


def _legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def _query_range(prometheus: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{prometheus}/api/v1/query_range",
        params={"query": expr, "start": str(start), "end": str(end), "step": "1"},
        timeout=30,
    )
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def draw_dashboard(
    prometheus: str, dashboard_file: Path, rate_interval: str, end: float, out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(dashboard_file.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    columns = 3
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.2 * rows), squeeze=False)
    start = end - 40
    for axis, panel in zip(axes.flat, panels, strict=False):
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", rate_interval)
            for series in _query_range(prometheus, expr, start, end):
                times = [float(t) - end for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                axis.plot(times, values, label=_legend(target["legendFormat"], series["metric"]))
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        axis.set_title(panel["title"], fontsize=10)
        axis.set_ylabel(_UNITS.get(unit, unit), fontsize=8)
        axis.set_xlabel("seconds before the last scrape", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=6, loc="upper left")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    figure.suptitle(
        f"{dashboard['title']}: every panel's queries over the end-to-end test's traffic "
        "(3 stand-in replicas, Prometheus)",
        fontsize=12,
    )
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)
