"""Draws each Grafana dashboard of dashboards/ as a PNG, from the answers its
queries got in tests/tests/dashboards.rs (scripts/preview-dashboards.sh runs
both): panels where the dashboard's gridPos puts them, with their titles,
units, legends and the model-version annotations, in Grafana's dark colours.
A preview for people without a Grafana, not a Grafana: time series are
lines, state timelines coloured bands, tables text.

    python3 render_dashboards.py ANSWERS.json DASHBOARDS_DIR OUT_DIR
"""

import json
import math
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
MUTED = "#8e8e8e"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2",
           "#b877d9", "#fade2a", "#96d98d", "#ff9830"]
ANNOTATION = "#ff780a"

# Grafana's unit ids used by the dashboards, as people read them.
UNITS = {"rotrpm": "rpm", "amp": "A", "celsius": "°C", "pressurebar": "bar",
         "percent": "%", "reqps": "/s", "s": "s", "bytes": "bytes",
         "short": "", "none": ""}

COL_IN = 0.72   # one of Grafana's 24 grid columns, in inches
ROW_IN = 0.40   # one grid row (30 px plus its margin)
HEADER_IN = 0.9


def unit_label(unit):
    if not unit:
        return ""
    if unit.startswith("suffix:"):
        return unit.split(":", 1)[1].strip()
    return UNITS.get(unit, unit)


def legend_name(template, series, column):
    """InfluxDB aliases ($tag_x, $col) and Prometheus legends ({{x}})."""
    tags = series.get("tags", {})
    if not template:
        parts = [f"{k}={v}" for k, v in tags.items() if k != "__name__"]
        return " ".join(parts + ([column] if column != "value" else []))
    name = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: tags.get(m.group(1), ""), template)
    name = re.sub(r"\$tag_(\w+)", lambda m: tags.get(m.group(1), ""), name)
    return name.replace("$col", column).strip()


def numeric(value):
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def when(ms):
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)


def style_axes(ax):
    ax.set_facecolor(PANEL)
    for spine in ax.spines.values():
        spine.set_color(BORDER)
    ax.tick_params(colors=MUTED, labelsize=7)
    ax.grid(color=BORDER, linewidth=0.5)


def lines(panel_queries):
    """(label, xs, ys) for every numeric column of every series."""
    out = []
    for target, answer in panel_queries:
        template = target.get("alias") or target.get("legendFormat") or ""
        for series in answer["series"]:
            columns = series["columns"]
            for c, column in enumerate(columns):
                if column == "time":
                    continue
                xs, ys = [], []
                for row in series["rows"]:
                    y = numeric(row[c]) if c < len(row) else None
                    if y is not None and row[0] is not None:
                        xs.append(when(row[0]))
                        ys.append(y)
                if xs:
                    out.append((legend_name(template, series, column), xs, ys))
    return out


def draw_timeseries(ax, panel, panel_queries, marks, time_range):
    style_axes(ax)
    for i, (label, xs, ys) in enumerate(lines(panel_queries)):
        ax.plot(xs, ys, color=PALETTE[i % len(PALETTE)], linewidth=1.3, label=label)
    for mark in marks:
        ax.axvline(mark, color=ANNOTATION, linestyle="--", linewidth=0.9)
    for step in panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", []):
        if step.get("value") is not None:
            ax.axhline(step["value"], color="#f2495c", linewidth=0.8, alpha=0.8)
    ax.set_xlim(when(time_range["from_ms"]), when(time_range["to_ms"]))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=5))
    unit = unit_label(panel.get("fieldConfig", {}).get("defaults", {}).get("unit"))
    if unit:
        ax.set_ylabel(unit, color=MUTED, fontsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=6, frameon=False, labelcolor=TEXT,
                  ncol=2 if len(ax.get_legend_handles_labels()[0]) > 3 else 1)


NAMED = {"red": "#f2495c", "green": "#73bf69", "orange": "#ff780a", "yellow": "#fade2a"}


def state_colours(panel):
    """Value -> colour from the panel's value mappings; else on/off."""
    colours = {1.0: "#73bf69", 0.0: "#5a5f66"}
    for mapping in panel.get("fieldConfig", {}).get("defaults", {}).get("mappings", []):
        for value, result in mapping.get("options", {}).items():
            colour = result.get("color")
            if colour:
                colours[float(value)] = NAMED.get(colour, colour)
    return colours


def draw_state_timeline(ax, panel, panel_queries, time_range):
    style_axes(ax)
    ax.grid(False)
    colours = state_colours(panel)
    rows = lines(panel_queries)
    for i, (label, xs, ys) in enumerate(rows):
        for j, (x, y) in enumerate(zip(xs, ys)):
            end = xs[j + 1] if j + 1 < len(xs) else when(time_range["to_ms"])
            colour = colours.get(float(y), "#8ab8ff")
            ax.barh(i, mdates.date2num(end) - mdates.date2num(x), left=mdates.date2num(x),
                    height=0.7, color=colour, edgecolor=colour)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in rows], fontsize=7, color=TEXT)
    ax.set_xlim(when(time_range["from_ms"]), when(time_range["to_ms"]))
    ax.xaxis_date()
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=5))


def cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def draw_table(ax, panel, panel_queries):
    ax.set_facecolor(PANEL)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(BORDER)
    header, body = None, []
    for _, answer in panel_queries:
        for series in answer["series"]:
            tags = {k: v for k, v in series.get("tags", {}).items() if k != "__name__"}
            columns = [c for c in series["columns"] if c != "time"]
            if header is None:
                header = list(tags) + columns
            for row in series["rows"]:
                values = dict(zip(series["columns"], row))
                body.append([tags.get(k, "") for k in tags] + [cell(values.get(c)) for c in columns])
    if not header:
        ax.text(0.5, 0.5, "No data", color=MUTED, ha="center", va="center", transform=ax.transAxes)
        return
    table = ax.table(cellText=body[:12] or [[""] * len(header)], colLabels=header,
                     loc="upper center", cellLoc="left", colLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    for (r, _), c in table.get_celld().items():
        c.set_edgecolor(BORDER)
        c.set_facecolor("#22252b" if r == 0 else PANEL)
        c.get_text().set_color(TEXT)


def render(dashboard, answers, out):
    panels = dashboard["panels"]
    grid_rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    width, height = 24 * COL_IN, grid_rows * ROW_IN + HEADER_IN
    fig = plt.figure(figsize=(width, height), dpi=80, facecolor=BACKGROUND)
    time_range = answers["range"]
    variables = ", ".join(f"{name}: All ({', '.join(values)})" for name, values in answers["variables"])
    span = (time_range["to_ms"] - time_range["from_ms"]) / 1000.0
    fig.text(0.01, 1 - 0.35 / height, dashboard["title"], color=TEXT, fontsize=15, weight="bold", va="center")
    fig.text(0.01, 1 - 0.72 / height,
             f"{variables}    time range: {when(time_range['from_ms']):%Y-%m-%d %H:%M:%S} UTC + {span:.0f} s"
             "    (preview drawn from the test's queries; scripts/preview-dashboards.sh)",
             color=MUTED, fontsize=8, va="center")

    by_panel = {}
    for q in answers["queries"]:
        by_panel.setdefault(q["panel"], {})[q["refId"]] = q
    marks = []
    for title, qs in by_panel.items():
        if title.startswith("annotation: "):
            for q in qs.values():
                for series in q["series"]:
                    marks.extend(when(row[0]) for row in series["rows"] if row and row[0])

    for panel in panels:
        g = panel["gridPos"]
        left = g["x"] * COL_IN / width
        top = (HEADER_IN + g["y"] * ROW_IN) / height
        w = g["w"] * COL_IN / width
        h = g["h"] * ROW_IN / height
        # Room inside the panel for its title and the axes' labels.
        ax = fig.add_axes([left + 0.045 * w + 0.012, 1 - top - h + 0.09 * h + 0.02,
                           w * 0.955 - 0.022, h * 0.91 - 0.06])
        fig.text(left + 0.004, 1 - top - 0.012, panel["title"], color=TEXT, fontsize=9, weight="bold", va="top")
        found = by_panel.get(panel["title"], {})
        panel_queries = [(t, found[t["refId"]]) for t in panel.get("targets", []) if t["refId"] in found]
        kind = panel["type"]
        if kind == "table":
            draw_table(ax, panel, panel_queries)
        elif kind == "state-timeline":
            draw_state_timeline(ax, panel, panel_queries, time_range)
        else:
            draw_timeseries(ax, panel, panel_queries, marks, time_range)
    fig.savefig(out, facecolor=BACKGROUND)
    plt.close(fig)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    answers_path, dashboards_dir, out_dir = map(Path, sys.argv[1:])
    answers = json.loads(answers_path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    for entry in answers["dashboards"]:
        dashboard = json.loads((dashboards_dir / entry["file"]).read_text())
        out = out_dir / (Path(entry["file"]).stem + ".png")
        render(dashboard, entry, out)
        print(out)


if __name__ == "__main__":
    main()
