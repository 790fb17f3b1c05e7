"""spec.Dashboard -> Grafana dashboard JSON, through grafana-foundation-sdk (Grafana 11)."""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

from deploy.dashboards.spec import Dashboard, Panel, Variable

# Every query goes to the data source picked in the dashboard's `datasource` variable.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
REF_IDS = "ABCDEFGH"


def _description(panel: Panel) -> str:
    text = panel.description
    if panel.exporter:
        text += f"\n\nNeeds {panel.exporter}."
    if panel.not_here:
        text += f"\n\nNot checked by the live test: {panel.not_here}."
    return text


def _panel(panel: Panel, panel_id: int) -> stat.Panel | timeseries.Panel:
    built: stat.Panel | timeseries.Panel = (
        stat.Panel() if panel.kind == "stat" else timeseries.Panel()
    )
    built.id(panel_id).title(panel.title).description(_description(panel)).unit(panel.unit)
    built.datasource(DATASOURCE).span(panel.width).height(8)
    if panel.thresholds:
        steps = [Threshold(value=value, color=color) for value, color in panel.thresholds]
        built.thresholds(gdash.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
    if panel.max is not None:
        built.min(0).max(panel.max)
    for ref_id, query in zip(REF_IDS, panel.queries, strict=False):
        target = prometheus.Dataquery().expr(query.expr).ref_id(ref_id).datasource(DATASOURCE)
        if query.legend:
            target.legend_format(query.legend)
        built.with_target(target)
    return built


def _variable(variable: Variable) -> gdash.QueryVariable:
    return (
        gdash.QueryVariable(variable.name)
        .label(variable.title)
        .datasource(DATASOURCE)
        .query(f"label_values({variable.series}, {variable.label})")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


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
    for scope in spec.variables:
        board.with_variable(_variable(scope))
    for panel_id, panel in enumerate(spec.panels, start=1):
        board.with_panel(_panel(panel, panel_id))
    encoded: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return encoded


def to_json(spec: Dashboard) -> str:
    return json.dumps(build(spec), indent=2, sort_keys=True) + "\n"
