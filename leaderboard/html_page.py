"""The static leaderboard page: one self-contained HTML file, usable offline.

No CDN, no external fonts or scripts; plots are inline base64 PNGs and sorting is a few lines of
inline JavaScript. Every string that came from a result file goes through `html.escape`.
"""

from __future__ import annotations

import base64
from html import escape

from dpbench.leaderboard import compute, plots, unlearning
from dpbench.leaderboard.aggregate import Row
from dpbench.leaderboard.benchmarks import Benchmark, device_types
from dpbench.leaderboard.columns import Column, legend
from dpbench.leaderboard.render import (
    NOTE,
    SYSTEMS_NOTE,
    TITLE,
    details_summary,
    header,
    main_columns,
    sources_line,
    table_columns,
    task_note,
    tasks,
    violation_lines,
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: left; }
th { background: #f3f3f3; cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " ▲"; }
th[aria-sort="descending"]::after { content: " ▼"; }
tbody tr:nth-child(even) { background: #fafafa; }
td[data-sort] { white-space: nowrap; }
.wide { overflow-x: auto; max-width: 100%; }
details { margin: 0 0 1.5em; }
summary { cursor: pointer; color: #1f4e8c; max-width: 60em; }
img { max-width: 100%; display: block; margin: 1em 0; }
.note { color: #555; max-width: 60em; }
.badge { background: #eef3fb; border: 1px solid #c9d7ee; border-radius: 0.3em; padding: 0.1em 0.4em; }
td .badge { display: inline-block; margin-top: 0.2em; font-size: 0.85em; color: #34507a; }
p.violation { background: #b00020; color: #fff; font-weight: bold; padding: 0.6em; max-width: 60em; }
tr.violation td { background: #fde7ea; color: #8a0015; font-weight: bold; }
"""

# Click a header to sort by it; a second click reverses. Numeric cells sort by data-sort.
SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var asc = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var key = function (tr) {
      var td = tr.cells[th.cellIndex], v = td.getAttribute("data-sort");
      return v === null ? td.textContent : (v === "" ? NaN : parseFloat(v));
    };
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (typeof x === "number" || typeof y === "number") {
        if (isNaN(x)) return 1; if (isNaN(y)) return -1;  // missing values last either way
        return asc ? x - y : y - x;
      }
      return asc ? String(x).localeCompare(y) : String(y).localeCompare(x);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


NUMERIC_FORMATS = {"stat1", "stat2", "stat3", "bound", "delta", "target", "int"}


def cell(col: Column, row: Row) -> str:
    sort = ""
    if col.fmt in NUMERIC_FORMATS:
        key = col.sort_key(row)
        if col.fmt == "target" and row.target_epsilon is None:
            key = float("inf")  # non-private: no privacy guarantee at all
        # data-sort="" (a missing value) becomes NaN in the script and sorts last.
        value = "Infinity" if key == float("inf") else (repr(key) if isinstance(key, float) else "")
        sort = f' data-sort="{value}"'
    badge = col.badge(row) if col.badge else ""
    label = f' <span class="badge">{escape(badge)}</span>' if badge else ""
    return f"<td{sort}>{escape(col.text(row))}{label}</td>"


def sortable(head: str, body: str, box: str = "") -> str:
    """A sortable table in a box that scrolls sideways itself when the table is wider than the page."""
    table = f'<table class="sortable">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'
    return f'<div class="{f"wide {box}" if box else "wide"}">{table}</div>'


def table(columns: tuple[Column, ...], rows: list[Row], kind: str) -> str:
    """A sortable table of rows in a container of class `kind` (main or full) that scrolls, not the page."""
    head = "".join(f'<th scope="col">{escape(header(c, rows))}</th>' for c in columns)
    body = "\n".join(
        ('<tr class="violation">' if r.violations else "<tr>") + "".join(cell(c, r) for c in columns) + "</tr>"
        for r in rows
    )
    return sortable(head, body, f"{kind}-table")


def task_tables(rows: list[Row]) -> list[str]:
    """The compact main table, then every column in a details view."""
    return [
        table(main_columns(rows), rows, "main"),
        f"<details><summary>{escape(details_summary(rows))}</summary>",
        table(table_columns(rows), rows, "full"),
        "</details>",
    ]


def plain_table(head: list[str], rows: list[list[str]]) -> str:
    """A sortable table of text cells; numeric-looking cells (`1.23×`, `64`) sort as numbers."""

    def td(text: str) -> str:
        number = text.rstrip("×").split(" ")[0].split("/")[0]
        try:
            return f'<td data-sort="{float(number)!r}">{escape(text)}</td>'
        except ValueError:
            return f"<td>{escape(text)}</td>"

    th = "".join(f'<th scope="col">{escape(h)}</th>' for h in head)
    body = "\n".join("<tr>" + "".join(td(c) for c in row) + "</tr>" for row in rows)
    return sortable(th, body)


def systems_section(benchmarks: list[Benchmark]) -> list[str]:
    parts = []
    for device in device_types(benchmarks):
        parts += [f"<h2>Systems benchmark: {escape(device)}</h2>", f'<p class="note">{escape(SYSTEMS_NOTE)}</p>']
        for b in (b for b in benchmarks if b.device_type == device):
            parts += [
                f"<h3>{escape(b.title)} <small>({escape(b.name)})</small></h3>",
                plain_table(*b.table()),
                "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in b.notes()) + "</ul>",
            ]
    return parts


def figure(plot: plots.Plot) -> str:
    """The plot as an inline PNG, or a line saying why there is none (a plot with nothing to show is not drawn)."""
    try:
        image = plots.draw(plot)
    except plots.EmptyPlot as empty:
        return f'<p class="note no-plot">No plot “{escape(plot["title"])}”: {escape(empty.reason)}.</p>'
    data = base64.b64encode(image).decode("ascii")
    return (
        f'<img alt="{escape(plot["title"])}" data-plot-hash="{plots.data_hash(plot)}" '
        f'data-points="{plots.n_points(plot)}" src="data:image/png;base64,{data}">'
    )


def unlearning_section(forgetting: list[unlearning.UnlearnRow]) -> list[str]:
    parts = []
    for task in sorted({r.task for r in forgetting}):
        task_rows = [r for r in forgetting if r.task == task]
        parts += [f"<h2>{escape(task)}: unlearning</h2>", f'<p class="note">{escape(unlearning.NOTE)}</p>']
        parts.append(plain_table(unlearning.HEAD, [r.texts() for r in task_rows]))
        parts.append(figure(unlearning.plot_data(task_rows, task)))
    return parts


def render_html(rows: list[Row], n_results: int, benchmarks: list[Benchmark] = (), audits=(), forgetting=()) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{escape(TITLE)}</title>",
        f"<style>{STYLE}</style></head>",
        "<body>",
        f"<h1>{escape(TITLE)}</h1>",
        f'<p class="note">{escape(NOTE)}</p>',
        f"<p>{n_results} result file(s), {len(rows)} configuration(s).</p>",
    ]
    if not rows:
        parts.append("<p>No results yet.</p>")
    for task in tasks(rows):
        task_rows = [r for r in rows if r.task == task]
        parts += [
            f"<h2>{escape(task)}</h2>",
            f'<p class="note">{escape(task_note(task_rows))} <span class="badge">{escape(sources_line(task_rows))}'
            "</span></p>",
            *(f'<p class="violation" role="alert">{escape(line)}</p>' for line in violation_lines(task_rows)),
            *task_tables(task_rows),
            figure(plots.frontier_data(rows, task)),
            figure(plots.audit_data(rows, task)),
        ]
        matched = compute.table(task_rows)
        if matched:
            parts += [
                f"<h3>{escape(task)}: compute-matched</h3>",
                f'<p class="note">{escape(compute.NOTE)}</p>',
                plain_table(*matched),
            ]
    device_types = sorted({r.device_type for r in rows})
    if device_types:
        parts.append("<h2>Memory and throughput per device type</h2>")
        parts += [figure(plots.systems_data(rows, d)) for d in device_types]
    parts += unlearning_section(list(forgetting))
    for a in audits:  # the audit's own benchmarks: the bug zoo, soundness, power
        parts += [f"<h2>Audit: {escape(a.title)}</h2>", f'<p class="note">{escape(a.description)}</p>']
        parts.append(plain_table(a.head, a.rows))
    parts += systems_section(list(benchmarks))
    parts.append("<h2>Columns</h2>\n<ul>")
    parts += [f"<li><b>{escape(c.header)}</b>: {escape(c.description)}</li>" for c in legend()]
    parts += ["</ul>", f"<script>{SCRIPT}</script>", "</body>", "</html>", ""]
    return "\n".join(parts)
