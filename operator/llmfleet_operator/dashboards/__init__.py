"""Grafana dashboards, generated from Python: the fleet overview and one LLMDeployment.

``python -m llmfleet_operator.dashboards --out charts/llmfleet/files/dashboards`` (``make
dashboards``) writes the JSON the chart ships; a unit test fails when the committed files
differ from :func:`render_all`.
"""

from __future__ import annotations

import json

from llmfleet_operator.dashboards.definitions import DASHBOARDS, LLMDEPLOYMENT, OVERVIEW
from llmfleet_operator.dashboards.model import Dashboard, Panel, Target, Variable, expand, render

__all__ = [
    "DASHBOARDS",
    "LLMDEPLOYMENT",
    "OVERVIEW",
    "Dashboard",
    "Panel",
    "Target",
    "Variable",
    "expand",
    "render",
    "render_all",
    "to_json",
]


def to_json(dashboard: Dashboard) -> str:
    """The committed file's exact text."""
    return json.dumps(render(dashboard), indent=2, sort_keys=True) + "\n"


def render_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard the chart ships."""
    return {name: to_json(d) for name, d in DASHBOARDS.items()}
