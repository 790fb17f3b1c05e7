"""spec.Dashboard -> Grafana dashboard JSON, through grafana-foundation-sdk (Grafana 11)."""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from deploy.dashboards.spec import Dashboard, Panel

# Every query goes to the data source picked in the dashboard's `datasource` variable.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
REF_IDS = "ABCDEFGH"


def _description(panel: Panel) -> str:
    if panel.not_here:
        return f"{panel.description}\n\nNot checked by the live test: {panel.not_here}."
    return panel.description


def _panel(panel: Panel) -> stat.Panel | timeseries.Panel:
    built: stat.Panel | timeseries.Panel = (
        stat.Panel() if panel.kind == "stat" else timeseries.Panel()
    )
    built.title(panel.title).description(_description(panel)).unit(panel.unit)
    built.datasource(DATASOURCE).span(panel.width).height(8)
    for ref_id, query in zip(REF_IDS, panel.queries, strict=False):
        target = prometheus.Dataquery().expr(query.expr).ref_id(ref_id).datasource(DATASOURCE)
        if query.legend:
            target.legend_format(query.legend)
        built.with_target(target)
    return built


def build(spec: Dashboard) -> dict[str, Any]:
    variable = gdash.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
    board = (
        gdash.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(["vlm-serve"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .with_variable(variable)
    )
    for panel in spec.panels:
        board.with_panel(_panel(panel))
    encoded: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return encoded


def to_json(spec: Dashboard) -> str:
    return json.dumps(build(spec), indent=2, sort_keys=True) + "\n"
