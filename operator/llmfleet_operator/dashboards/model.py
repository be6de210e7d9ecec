"""Pure: a small typed model of the Grafana dashboard JSON we ship, and its rendering.

Plain frozen dataclasses: a dashboard is rows of panels, a panel has PromQL targets. Layout
(``gridPos``) and ids are computed when rendering, so definitions only say what to show.
Every panel queries the ``${datasource}`` Prometheus variable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

DATASOURCE: Final = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION: Final = 39
GRID_WIDTH: Final = 24


@dataclass(frozen=True)
class Target:
    """One PromQL query of a panel and how its series are named."""

    expr: str
    legend: str = ""
    #: An instant query (tables, stats of "now"); otherwise a range query.
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    """One panel. ``kind``: timeseries, stat, table, state-timeline or bargauge."""

    title: str
    description: str
    targets: Sequence[Target]
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 12
    height: int = 8
    stacked: bool = False
    bars: bool = False
    minimum: float | None = None
    maximum: float | None = None
    decimals: int | None = None
    #: Value -> text for stat and state-timeline panels.
    mappings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    title: str
    panels: Sequence[Panel]


@dataclass(frozen=True)
class Variable:
    """A query variable from ``label_values(selector, label)``."""

    name: str
    label: str
    selector: str
    label_name: str
    multi: bool = False
    include_all: bool = False
    all_value: str | None = None

    @property
    def query(self) -> str:
        return f"label_values({self.selector}, {self.label_name})"


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: Sequence[Row]
    variables: Sequence[Variable] = ()
    tags: Sequence[str] = ("llmfleet",)
    refresh: str = "30s"
    time_from: str = "now-1h"

    def panels(self) -> list[Panel]:
        return [p for row in self.rows for p in row.panels]

    def targets(self) -> list[tuple[Panel, Target]]:
        """Every (panel, query) pair: what the e2e test runs against Prometheus."""
        return [(p, t) for p in self.panels() for t in p.targets]


def expand(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with Grafana variables (``$name``, ``${name}``, ``$__rate_interval``) set to
    ``values``, as Grafana sends it to Prometheus (longest names first)."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr


# --- rendering -----------------------------------------------------------------------------------


def _field_config(p: Panel) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p.unit, "color": {"mode": "palette-classic"}}
    if p.minimum is not None:
        defaults["min"] = p.minimum
    if p.maximum is not None:
        defaults["max"] = p.maximum
    if p.decimals is not None:
        defaults["decimals"] = p.decimals
    if p.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "bars" if p.bars else "line",
            "lineWidth": 1,
            "fillOpacity": 60 if p.bars else 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if p.stacked else "none", "group": "A"},
        }
    if p.mappings:
        defaults["mappings"] = [
            {
                "type": "value",
                "options": {
                    value: {"text": text, "index": i}
                    for i, (value, text) in enumerate(p.mappings.items())
                },
            }
        ]
    return {"defaults": defaults, "overrides": []}


def _options(p: Panel) -> dict[str, Any]:
    if p.kind == "stat":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
            "orientation": "auto",
        }
    if p.kind == "table":
        return {"showHeader": True, "cellHeight": "sm"}
    if p.kind == "state-timeline":
        return {
            "showValue": "never",
            "mergeValues": True,
            "rowHeight": 0.9,
            "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"},
        }
    if p.kind == "bargauge":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
        }
    return {
        "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }


def _targets(p: Panel) -> list[dict[str, Any]]:
    out = []
    for i, t in enumerate(p.targets):
        out.append(
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": t.expr,
                "legendFormat": t.legend or "__auto",
                "range": not t.instant,
                "instant": t.instant,
                **({"format": "table"} if p.kind == "table" else {}),
            }
        )
    return out


def _panel(p: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": panel_id,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "fieldConfig": _field_config(p),
        "options": _options(p),
        "targets": _targets(p),
    }
    if p.kind == "table":
        out["transformations"] = [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True}}},
        ]
    return out


def _variable(v: Variable) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "query",
        "name": v.name,
        "label": v.label,
        "datasource": DATASOURCE,
        "definition": v.query,
        "query": {"query": v.query, "refId": f"{v.name}-variable", "qryType": 1},
        "refresh": 2,
        "sort": 1,
        "multi": v.multi,
        "includeAll": v.include_all,
        "current": {},
        "options": [],
        "hide": 0,
        "regex": "",
    }
    if v.all_value is not None:
        out["allValue"] = v.all_value
    return out


DATASOURCE_VARIABLE: Final = {
    "type": "datasource",
    "name": "datasource",
    "label": "Prometheus",
    "query": "prometheus",
    "current": {},
    "options": [],
    "hide": 0,
    "refresh": 1,
    "regex": "",
}


def render(d: Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (what the sidecar provisions)."""
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for row in d.rows:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id, y = next_id + 1, y + 1
        x, line_height = 0, 0
        for p in row.panels:
            if x + p.width > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel(p, next_id, x, y))
            next_id += 1
            x += p.width
            line_height = max(line_height, p.height)
        y += line_height
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": list(d.tags),
        "editable": True,
        "graphTooltip": 1,
        "refresh": d.refresh,
        "schemaVersion": SCHEMA_VERSION,
        "time": {"from": d.time_from, "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "version": 1,
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "type": "dashboards",
                "tags": ["llmfleet"],
                "asDropdown": True,
                "title": "llmfleet",
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": [DATASOURCE_VARIABLE, *(_variable(v) for v in d.variables)]},
        "panels": panels,
    }
