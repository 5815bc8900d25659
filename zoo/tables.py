"""Render a manifest table in the exact layout of mmpose's README.

The README tables are mdformat output: every column centred, cells padded to the column's widest
entry (odd padding goes right), separator `:---:` as wide as the column. Rendering the expected
values must reproduce the published text byte for byte (that is how the manifests are checked
against the source); the report renders the same layout with measured values instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urljoin

from zoo.manifest import Column, Row, Table

Values = Mapping[str, Mapping[str, float | None]]  # row id -> metric key ("whole.ap") -> value


def expected_values(table: Table) -> dict[str, dict[str, float | None]]:
    """The published numbers of every row, in the shape `render_table` takes."""
    return {row.id: row.published_metrics.flat() for row in table.rows}


def _cell(
    row: Row,
    column: Column,
    values: Mapping[str, float | None],
    decimals: int,
    missing: str,
    base: str | None,
) -> str:
    if column.value == "name":
        return row.name
    if column.value == "input_size":
        return row.input_size_text
    if column.value == "details":
        return f"[{row.details.text}]({urljoin(base, row.details.target) if base else row.details.target})"
    value = values.get(column.value)
    return missing if value is None else f"{value:.{decimals}f}"


def render_table(table: Table, values: Values, missing: str = "n/a", absolute_links: bool = False) -> str:
    """The markdown table, one line per row in table order; a row or metric absent from `values`
    (e.g. a run that failed) shows `missing` rather than disappearing. `absolute_links` resolves the
    published relative 'Details and Download' targets against the table's `source_url`, so the links
    work outside mmpose's docs (in a report)."""
    base = table.source_url if absolute_links else None
    header = [c.header for c in table.columns]
    body = [
        [_cell(row, c, values.get(row.id, {}), table.decimals, missing, base) for c in table.columns]
        for row in table.rows
    ]
    widths = [max(3, *(len(line[i]) for line in [header, *body])) for i in range(len(header))]
    separator = [":" + "-" * (w - 2) + ":" for w in widths]

    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(f"{cell:^{w}}" for cell, w in zip(cells, widths, strict=True)) + " |\n"

    return "".join(line(cells) for cells in [header, separator, *body])


def render_section(table: Table, values: Values, missing: str = "n/a", absolute_links: bool = False) -> str:
    """`### title`, the caption and the table, as they appear in the README."""
    return f"### {table.title}\n\n{table.caption}\n\n{render_table(table, values, missing, absolute_links)}"


def render_expected(tables: Iterable[Table]) -> str:
    """All tables with their published values, sections separated by a blank line."""
    return "\n".join(render_section(t, expected_values(t)) for t in tables)
