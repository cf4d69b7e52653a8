"""The daily BI report's numbers, computed by DuckDB over the lake for one date (UTC).

``compute(con, day)`` returns plain data (numbers, strings, lists of rows) that render.py turns
into Markdown and HTML, and that is saved as JSON next to them so a re-run can say what changed.
Products are named and categorized **as of the event's time** (an as-of join on the catalog
changelog: a product renamed or moved later does not rewrite history).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import duckdb

STEPS = (("viewed", "event_type IN ('page_view', 'product_view')"), ("carted", "event_type = 'add_to_cart'"),
         ("checked_out", "event_type = 'checkout'"), ("purchased", "event_type = 'purchase'"))
LENGTH_BUCKETS = (("< 1 min", 0, 1), ("1-5 min", 1, 5), ("5-15 min", 5, 15), ("15-30 min", 15, 30),
                  ("30-60 min", 30, 60), ("1 h +", 60, 10**9))


def _rows(con: duckdb.DuckDBPyConnection, sql: str, *params: Any) -> list[list]:
    return [[_plain(v) for v in row] for row in con.execute(sql, list(params)).fetchall()]


def _one(con: duckdb.DuckDBPyConnection, sql: str, *params: Any) -> list:
    return _rows(con, sql, *params)[0]


def _plain(value: Any) -> Any:
    """JSON-friendly: exact decimals as text, floats rounded."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float):
        return round(value, 4)
    return value


def _funnel(con, day: str, by: str | None) -> list[list]:
    steps = ", ".join(f"COUNT(DISTINCT user_id) FILTER (WHERE {cond})" for _, cond in STEPS)
    key = f"COALESCE({by}, '(none)')" if by else "'all'"
    return _rows(con, f"SELECT {key} AS k, {steps} FROM bronze_clicks WHERE dt = ? GROUP BY k "
                      f"ORDER BY 2 DESC, k", day)


def traffic(con, day: str) -> dict:
    events, users = _one(con, "SELECT count(*), count(DISTINCT user_id) FROM bronze_clicks WHERE dt = ?", day)
    sessions, avg_min = _one(con, "SELECT count(*), avg(epoch(\"end\" - start)) / 60 FROM sessions WHERE dt = ?", day)
    per_hour = dict(_rows(con, "SELECT hour(event_ts), count(*) FROM bronze_clicks WHERE dt = ? "
                               "AND event_ts IS NOT NULL GROUP BY 1", day))
    cases = " ".join(f"WHEN m < {hi} THEN {i}" for i, (_, lo, hi) in enumerate(LENGTH_BUCKETS))
    lengths = dict(_rows(con, f"SELECT CASE {cases} END AS b, count(*) FROM (SELECT epoch(\"end\" - start) / 60 AS m "
                              "FROM sessions WHERE dt = ?) GROUP BY b", day))
    return {"events": events, "users": users, "sessions": sessions, "avg_session_minutes": _plain(avg_min or 0.0),
            "events_per_hour": [[h, per_hour.get(h, 0)] for h in range(24)],
            "session_lengths": [[name, lengths.get(i, 0)] for i, (name, _, _) in enumerate(LENGTH_BUCKETS)]}


def sales(con, day: str) -> dict:
    orders, revenue, failed, payments = _one(
        con, "SELECT count(*) FILTER (WHERE status = 'completed'), "
             "COALESCE(sum(TRY_CAST(amount AS DECIMAL(18, 2))) FILTER (WHERE status = 'completed'), 0), "
             "count(*) FILTER (WHERE status = 'failed'), count(*) FROM bronze_tx WHERE dt = ?", day)
    aov = (Decimal(revenue) / orders).quantize(Decimal("0.01")) if orders else Decimal(0)
    by_currency = _rows(con, "SELECT currency, count(*), sum(TRY_CAST(amount AS DECIMAL(18, 2))) FROM bronze_tx "
                             "WHERE dt = ? AND status = 'completed' GROUP BY 1 ORDER BY 1", day)
    return {"orders": orders, "revenue": revenue, "average_order_value": str(aov), "payments": payments,
            "failed_payments": failed, "failed_payment_rate": round(failed / payments, 4) if payments else 0.0,
            "by_currency": by_currency}


def products(con, day: str, top: int = 10) -> dict:
    asof = ("FROM bronze_clicks e ASOF LEFT JOIN (SELECT * FROM bronze_catalog WHERE event_ts IS NOT NULL) c "
            "ON e.product_id = c.product_id AND e.event_ts >= c.event_ts "
            "WHERE e.dt = ? AND e.product_id IS NOT NULL")
    counts = ("count(*) FILTER (WHERE e.event_type = 'product_view') AS views, "
              "count(*) FILTER (WHERE e.event_type = 'purchase') AS purchases")
    return {"top_products": _rows(con, f"SELECT e.product_id, COALESCE(c.name, ''), COALESCE(c.category, '(unknown)'), "
                                       f"{counts} {asof} GROUP BY ALL ORDER BY views DESC, purchases DESC, 1 LIMIT {top}",
                                  day),
            "top_categories": _rows(con, f"SELECT COALESCE(c.category, '(unknown)'), {counts} {asof} GROUP BY ALL "
                                         f"ORDER BY views DESC, purchases DESC, 1 LIMIT {top}", day)}


def support(con, day: str) -> dict:
    """Tickets of the day (latest snapshot of each) by category; linked = the user paid that day."""
    latest = ("(SELECT * FROM bronze_support WHERE dt = ? "
              "QUALIFY row_number() OVER (PARTITION BY ticket_id ORDER BY event_ts DESC, entry_id DESC) = 1) t")
    paid = "(SELECT DISTINCT user_id FROM bronze_tx WHERE dt = ? AND status = 'completed') p"
    rows = _rows(con, f"SELECT COALESCE(t.category, '(none)'), count(*), count(*) FILTER (WHERE t.status = 'open'), "
                      f"count(p.user_id) FROM {latest} LEFT JOIN {paid} ON t.user_id = p.user_id "
                      "GROUP BY 1 ORDER BY 2 DESC, 1", day, day)
    return {"tickets": sum(r[1] for r in rows), "linked_to_orders": sum(r[3] for r in rows), "by_category": rows}


def fraud(con, day: str) -> dict:
    rows = _rows(con, "SELECT rule, severity, count(*), count(DISTINCT subject) FROM alerts WHERE dt = ? "
                      "GROUP BY ALL ORDER BY 3 DESC, 1", day)
    return {"alerts": sum(r[2] for r in rows), "by_rule": rows}


def quality(con, day: str) -> dict:
    dead = _rows(con, "SELECT reason, count(*) FROM dead_letters WHERE dt = ? GROUP BY 1 ORDER BY 2 DESC, 1", day)
    late = _rows(con, "SELECT reason, count(*) FROM late WHERE dt = ? GROUP BY 1 ORDER BY 2 DESC, 1", day)
    return {"dead_letters": dead, "late": late}


def compute(con: duckdb.DuckDBPyConnection, day: str) -> dict:
    return {"date": day, "traffic": traffic(con, day),
            "funnel": {"steps": [name for name, _ in STEPS], "overall": _funnel(con, day, None)[0][1:],
                       "by_device": _funnel(con, day, "device"), "by_country": _funnel(con, day, "country")},
            "sales": sales(con, day), **products(con, day), "support": support(con, day), "fraud": fraud(con, day),
            "quality": quality(con, day)}


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf values by path (``traffic.events``, ``fraud.by_rule[burst]``…), for a run-to-run diff."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
    elif isinstance(data, list) and data and all(isinstance(r, list) for r in data):
        for row in data:          # a table: rows keyed by their leading text columns (or the first column)
            n = next((i for i, c in enumerate(row) if not isinstance(c, str)), len(row)) or 1
            key, values = "/".join(str(c) for c in row[:n]), row[n:]
            if len(values) == 1:
                out[f"{prefix}[{key}]"] = values[0]
            else:
                out.update({f"{prefix}[{key}].{i}": v for i, v in enumerate(values)})
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out[f"{prefix}[{i}]"] = v
    else:
        out[prefix] = data
    return out


def changes(previous: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(path, before, after) of every number that differs between two runs of the same date."""
    before, after = flatten(previous), flatten(current)
    return [(k, before.get(k), after.get(k)) for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k) and k not in ("generated_at",)]
