"""The metric names mlwp's dashboards and alert rules use, and the names the StatsD mapping
gives Airflow's packets: shared by the dashboard, rule and StatsD tests.

PromQL is parsed with ``promql-parser`` (Prometheus's grammar, via the Rust promql-parser
crate); Grafana's interval variables are replaced by durations first. The mapping is applied
the way statsd_exporter applies a glob mapping: the first mapping whose pattern matches
(``*`` is one dot-separated part) and whose metric type fits names the metric, ``${n}`` and
``$n`` in the name and labels are the parts ``*`` matched. (The exporter itself is a Go
binary no package registry reachable here ships; the mapping file is the same.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
OBSERVABILITY = REPO_ROOT / "observability"
DASHBOARDS = sorted((OBSERVABILITY / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((OBSERVABILITY / "prometheus" / "rules").glob("*.yaml"))
MAPPING = OBSERVABILITY / "statsd" / "mapping.yaml"

GRAFANA_DURATIONS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def dashboard_exprs() -> Iterator[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) of every query of every dashboard."""
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                yield path.name, panel["title"], target["expr"]


def rule_exprs() -> Iterator[tuple[str, str, str]]:
    """(rule file, alert or record name, PromQL) of every rule."""
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield path.name, rule.get("alert") or rule["record"], rule["expr"]


def promql(expr: str) -> str:
    """``expr`` with Grafana's interval variables replaced, ready for a PromQL parser."""
    for variable, duration in GRAFANA_DURATIONS.items():
        expr = expr.replace(variable, duration)
    return expr


def metric_names(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects (parsed, not matched by pattern)."""
    import promql_parser

    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name is None:
                raise AssertionError(f"selector without a metric name in {expr!r}")
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(promql(expr)), visit)
    return names


# statsd type letters -> the mapping's match_metric_type.
STATSD_TYPES = {"c": "counter", "g": "gauge", "ms": "observer", "h": "observer", "d": "observer"}


@dataclass
class Packet:
    """One StatsD line: ``name[,tag=value...]:value|type[|@rate]`` (InfluxDB-style tags)."""

    name: str
    value: float
    kind: str
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, line: str) -> Packet:
        head, _, rest = line.partition(":")
        value, kind = rest.split("|")[:2]
        name, *tags = head.split(",")
        pairs = dict(tag.split("=", 1) for tag in tags)
        return cls(name, float(value), STATSD_TYPES[kind], pairs)


@dataclass
class Mapped:
    name: str
    kind: str
    labels: dict[str, str]

    def series_names(self) -> set[str]:
        """The Prometheus series names the exporter shows for it."""
        if self.kind == "observer":
            return {f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count"}
        return {self.name}


def mappings() -> list[dict[str, Any]]:
    mapping: list[dict[str, Any]] = yaml.safe_load(MAPPING.read_text())["mappings"]
    return mapping


def _glob(pattern: str) -> re.Pattern[str]:
    parts = [r"([^.]+)" if part == "*" else re.escape(part) for part in pattern.split(".")]
    return re.compile(r"\.".join(parts) + r"\Z")


def _expand(template: str, groups: tuple[str, ...]) -> str:
    def group(match: re.Match[str]) -> str:
        return groups[int(match.group(1) or match.group(2)) - 1]

    return re.sub(r"\$\{(\d+)\}|\$(\d+)", group, template)


def map_packet(packet: Packet) -> Mapped | None:
    """The metric the mapping makes of ``packet``; None when no mapping names it."""
    for mapping in mappings():
        if mapping.get("match_metric_type", packet.kind) != packet.kind:
            continue
        found = _glob(mapping["match"]).match(packet.name)
        if found is None:
            continue
        labels = {k: _expand(v, found.groups()) for k, v in (mapping.get("labels") or {}).items()}
        return Mapped(_expand(mapping["name"], found.groups()), packet.kind, packet.tags | labels)
    return None


def mapped_name_patterns() -> list[re.Pattern[str]]:
    """Each mapping's name as a pattern of the Prometheus series names it can produce."""
    patterns = []
    for mapping in mappings():
        name = re.sub(r"\\\$\\\{\d+\\\}|\\\$\d+", r"[a-zA-Z0-9_]+", re.escape(mapping["name"]))
        suffix = "(_bucket|_sum|_count)?" if mapping.get("observer_type") else ""
        patterns.append(re.compile(name + suffix + r"\Z"))
    return patterns
