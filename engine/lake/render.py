"""The daily report as Markdown (for the terminal) and as one self-contained HTML page: inline
CSS and SVG charts, no script, no font, nothing fetched — it opens offline."""

from __future__ import annotations

from html import escape
from typing import Any

CHANGES_SHOWN = 40


def _n(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "–"


def _sections(r: dict) -> list[tuple[str, list[str], list[list], dict | None]]:
    """(title, header, rows, chart) of every table of the report, shared by both renderings."""
    t, f, s = r["traffic"], r["funnel"], r["sales"]
    steps = f["steps"]
    out = [
        ("Traffic", ["measure", "value"],
         [["events", t["events"]], ["users", t["users"]], ["sessions", t["sessions"]],
          ["average session (min)", t["avg_session_minutes"]]], None),
        ("Events per hour (UTC)", ["hour", "events"], [[f"{h:02d}:00", n] for h, n in t["events_per_hour"] if n],
         {"bars": [(f"{h:02d}", n) for h, n in t["events_per_hour"]], "vertical": True}),
        ("Session length", ["length", "sessions"], t["session_lengths"], {"bars": t["session_lengths"]}),
        ("Conversion funnel", ["step", "users", "of viewers"],
         [[name, n, _pct(n, f["overall"][0])] for name, n in zip(steps, f["overall"])],
         {"bars": list(zip(steps, f["overall"]))}),
        ("Funnel by device", ["device", *steps, "conversion"],
         [[*row, _pct(row[-1], row[1])] for row in f["by_device"]], None),
        ("Funnel by country", ["country", *steps, "conversion"],
         [[*row, _pct(row[-1], row[1])] for row in f["by_country"]], None),
        ("Sales", ["measure", "value"],
         [["orders", s["orders"]], [f"revenue ({s['currency']})", s["revenue"]],
          [f"average order value ({s['currency']})", s["average_order_value"]],
          ["payments", s["payments"]], ["failed payments", s["failed_payments"]],
          ["failed payment rate", f"{100 * s['failed_payment_rate']:.1f} %"]], None),
        ("Sales by currency", ["currency", "orders", "revenue", "average order value"], s["by_currency"], None),
        ("Top products (named as of the event time)", ["product", "name", "category", "views", "purchases"],
         r["top_products"], None),
        ("Top categories", ["category", "views", "purchases"], r["top_categories"],
         {"bars": [(row[0], row[1]) for row in r["top_categories"]]}),
        ("Support tickets", ["category", "tickets", "open", "user paid that day"], r["support"]["by_category"], None),
        ("Fraud alerts", ["rule", "severity", "alerts", "subjects"], r["fraud"]["by_rule"],
         {"bars": [(f"{row[0]} ({row[1]})", row[2]) for row in r["fraud"]["by_rule"]]}),
        ("Dead letters", ["reason", "records"], r["quality"]["dead_letters"], None),
        ("Late events", ["reason", "events"], r["quality"]["late"], None),
    ]
    return out


def _summary(r: dict) -> str:
    t, s = r["traffic"], r["sales"]
    return (f"{_n(t['events'])} events from {_n(t['users'])} users in {_n(t['sessions'])} sessions; "
            f"{_n(s['orders'])} orders, revenue {s['currency']} {s['revenue']}, {_n(r['fraud']['alerts'])} fraud alerts.")


def _changes_lines(changes: list | None) -> list[str]:
    if changes is None:
        return ["First run for this date."]
    if not changes:
        return ["No change since the previous run for this date."]
    lines = [f"{len(changes)} value(s) changed since the previous run for this date (late data):"]
    lines += [f"{path}: {_n(before)} -> {_n(after)}" for path, before, after in changes[:CHANGES_SHOWN]]
    if len(changes) > CHANGES_SHOWN:
        lines.append(f"… and {len(changes) - CHANGES_SHOWN} more")
    return lines


def markdown(r: dict, changes: list | None) -> str:
    out = [f"# ShopStream daily report — {r['date']}", "", _summary(r), ""]
    out += [f"> {line}" for line in _changes_lines(changes)] + [""]
    for title, header, rows, _ in _sections(r):
        out += [f"## {title}", ""]
        if not rows:
            out += ["(none)", ""]
            continue
        out += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        out += ["| " + " | ".join(_n(c).replace("|", "\\|") for c in row) + " |" for row in rows] + [""]
    return "\n".join(out)


def _svg(chart: dict) -> str:
    bars = [(str(label), value or 0) for label, value in chart["bars"]]
    top = max((v for _, v in bars), default=0) or 1
    if chart.get("vertical"):
        w, h, gap = 24, 160, 4
        width = len(bars) * (w + gap)
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h + 40}" role="img">']
        for i, (label, value) in enumerate(bars):
            bh = round(h * value / top)
            x = i * (w + gap)
            parts.append(f'<rect x="{x}" y="{h - bh + 14}" width="{w}" height="{bh}" class="bar"><title>{escape(label)}: '
                         f'{_n(value)}</title></rect><text x="{x + w / 2}" y="{h + 30}" class="axis">{escape(label)}</text>')
        return "".join(parts) + "</svg>"
    row_h, label_w, bar_w = 22, 220, 420
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 90}" height="{len(bars) * row_h + 8}" '
             'role="img">']
    for i, (label, value) in enumerate(bars):
        y = i * row_h + 4
        bw = max(1, round(bar_w * value / top)) if value else 0
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" class="label">{escape(label)}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{bw}" height="{row_h - 6}" class="bar"/>'
                     f'<text x="{label_w + bw + 6}" y="{y + 15}" class="value">{_n(value)}</text>')
    return "".join(parts) + "</svg>"


STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:980px;color:#1d2433;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde3ec;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.2rem .7rem;border-bottom:1px solid #eef1f5;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f5f7fa}.summary{font-size:1.05rem}
.changes{background:#fff8e1;border-left:4px solid #f5b301;padding:.5rem 1rem}.bar{fill:#3b6fd8}
.label{text-anchor:end;font-size:12px}.value{font-size:12px}.axis{text-anchor:middle;font-size:11px}"""


def html(r: dict, changes: list | None) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>ShopStream daily report {escape(r['date'])}</title><style>{STYLE}</style></head><body>",
           f"<h1>ShopStream daily report — {escape(r['date'])}</h1>", f'<p class="summary">{escape(_summary(r))}</p>',
           '<div class="changes">' + "<br>".join(escape(line) for line in _changes_lines(changes)) + "</div>"]
    for title, header, rows, chart in _sections(r):
        slug = "".join(c if c.isalnum() else "-" for c in title.lower())
        out.append(f'<section id="{slug}"><h2>{escape(title)}</h2>')
        if chart and any(v for _, v in chart["bars"]):
            out.append(f'<figure class="chart">{_svg(chart)}</figure>')
        if rows:
            out.append("<table><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{escape(_n(c))}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</tbody></table>")
        else:
            out.append("<p>(none)</p>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)
