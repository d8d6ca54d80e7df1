"""The pieces coe's Grafana dashboards are built from: PromQL helpers, panels, rows laid
out on Grafana's 24-column grid, template variables and the dashboard envelope. What each
dashboard shows is in `tools/build_dashboards.py`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
QUANTILES = (0.5, 0.95, 0.99)
GRID_WIDTH = 24
SCHEMA_VERSION = 39

Json = dict[str, Any]


# -- queries ------------------------------------------------------------------------------
def selector(metric: str, matchers: str = "") -> str:
    return f"{metric}{{{matchers}}}" if matchers else metric


def rate(metric: str, matchers: str = "", by: str = "") -> str:
    grouped = f" by ({by}) " if by else ""
    return f"sum{grouped}(rate({selector(metric, matchers)}[{RATE}]))"


def increase(metric: str, matchers: str = "", by: str = "") -> str:
    grouped = f" by ({by}) " if by else ""
    return f"sum{grouped}(increase({selector(metric, matchers)}[{RATE}]))"


def quantile(q: float, histogram: str, matchers: str = "", by: str = "") -> str:
    """`histogram`'s q-quantile over the rate window; `histogram` is the base name."""
    labels = ", ".join(["le", *(label.strip() for label in by.split(",") if label.strip())])
    bucket = selector(f"{histogram}_bucket", matchers)
    return f"histogram_quantile({q}, sum by ({labels}) (rate({bucket}[{RATE}])))"


# -- panels -------------------------------------------------------------------------------
def target(expr: str, legend: str = "", ref: str = "A") -> Json:
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": True,
        "refId": ref,
    }


def targets(*pairs: tuple[str, str]) -> list[Json]:
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def quantile_targets(histogram: str, matchers: str = "", by: str = "") -> list[Json]:
    """p50, p95 and p99 of `histogram`, one series per `by` group each."""
    prefix = " ".join(f"{{{{{label.strip()}}}}}" for label in by.split(",") if label.strip())
    return targets(
        *(
            (quantile(q, histogram, matchers, by), f"{prefix} p{round(q * 100)}".strip())
            for q in QUANTILES
        )
    )


@dataclass
class Panel:
    title: str
    description: str
    targets: list[Json]
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 12
    height: int = 8
    stack: bool = False
    options: Json = field(default_factory=dict)

    def render(self, panel_id: int, x: int, y: int) -> Json:
        defaults: Json = {"unit": self.unit}
        if self.kind == "timeseries":
            defaults["custom"] = {
                "drawStyle": "line",
                "fillOpacity": 10 if self.stack else 0,
                "lineWidth": 1,
                "showPoints": "never",
                "spanNulls": False,
                "stacking": {"group": "A", "mode": "normal" if self.stack else "none"},
            }
            options: Json = {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
        elif self.kind == "stat":
            options = {
                "colorMode": "value",
                "graphMode": "area",
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "textMode": "auto",
            }
        else:
            options = {}
        return {
            "datasource": DATASOURCE,
            "description": self.description,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "id": panel_id,
            "options": {**options, **self.options},
            "targets": self.targets,
            "title": self.title,
            "type": self.kind,
        }


@dataclass
class Row:
    title: str
    panels: list[Panel]


def layout(rows: Sequence[Row]) -> list[Json]:
    """Rows one under the other, their panels left to right, wrapping at the grid's width."""
    out: list[Json] = []
    panel_id = 0
    y = 0
    for row in rows:
        panel_id += 1
        out.append(
            {
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                "id": panel_id,
                "panels": [],
                "title": row.title,
                "type": "row",
            }
        )
        y += 1
        x = 0
        line_height = 0
        for panel in row.panels:
            if x + panel.width > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panel_id += 1
            out.append(panel.render(panel_id, x, y))
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return out


# -- variables ----------------------------------------------------------------------------
def datasource_variable() -> Json:
    return {
        "current": {},
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "type": "datasource",
    }


def label_variable(name: str, metric: str, label: str) -> Json:
    """A multi-value filter on `label`, offered from the values `metric` carries."""
    query = f"label_values({metric}, {label})"
    return {
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "datasource": DATASOURCE,
        "definition": query,
        "hide": 0,
        "includeAll": True,
        "label": name.capitalize(),
        "multi": True,
        "name": name,
        "options": [],
        "query": {"qryType": 1, "query": query, "refId": f"{name}-values"},
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "type": "query",
    }


def dashboard(
    uid: str, title: str, description: str, rows: Sequence[Row], variables: Iterable[Json] = ()
) -> Json:
    return {
        "annotations": {"list": []},
        "description": description,
        "editable": True,
        "graphTooltip": 1,
        "links": [
            {
                "asDropdown": False,
                "includeVars": False,
                "keepTime": True,
                "tags": ["coe"],
                "title": "coe dashboards",
                "type": "dashboards",
            }
        ],
        "panels": layout(rows),
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["coe"],
        "templating": {"list": [datasource_variable(), *variables]},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
    }
