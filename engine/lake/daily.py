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

from ..schema import MINOR_DIGITS

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


def funnel(con, day: str) -> dict:
    """Users reaching each step, overall / by device / by country: one pass over the day's clicks
    down to one row per (user, device, country), then small aggregations."""
    flags = ", ".join(f"bool_or({cond}) AS s{i}" for i, (_, cond) in enumerate(STEPS))
    con.execute(f"CREATE OR REPLACE TEMP TABLE _steps AS SELECT user_id, COALESCE(device, '(none)') AS device, "
                f"COALESCE(country, '(none)') AS country, {flags} FROM bronze_clicks WHERE dt = ? GROUP BY ALL", [day])
    counts = ", ".join(f"count(DISTINCT user_id) FILTER (WHERE s{i})" for i in range(len(STEPS)))
    by = {key: _rows(con, f"SELECT {key}, {counts} FROM _steps GROUP BY 1 ORDER BY 2 DESC, 1")
          for key in ("device", "country")}
    return {"steps": [name for name, _ in STEPS], "overall": _one(con, f"SELECT {counts} FROM _steps"),
            "by_device": by["device"], "by_country": by["country"]}


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


def _money(minor: int, currency: str) -> str:
    return str(Decimal(minor).scaleb(-MINOR_DIGITS.get(currency, 2)))


def sales(con, day: str) -> dict:
    """Orders and revenue from the exact minor units, per currency; the headline figures are those
    of the currency with the most orders (``currency``)."""
    failed, payments = _one(con, "SELECT count(*) FILTER (WHERE status = 'failed'), count(*) FROM bronze_tx "
                                 "WHERE dt = ?", day)
    by_currency = [[currency, orders, _money(minor, currency),
                    _money(round(Decimal(minor) / orders), currency) if orders else "0"]
                   for currency, orders, minor in _rows(
                       con, "SELECT currency, count(*), COALESCE(sum(amount_minor), 0)::BIGINT FROM bronze_tx "
                            "WHERE dt = ? AND status = 'completed' GROUP BY 1 ORDER BY 2 DESC, 1", day)]
    main = by_currency[0] if by_currency else ["USD", 0, "0.00", "0.00"]
    return {"currency": main[0], "orders": main[1], "revenue": main[2], "average_order_value": main[3],
            "payments": payments, "failed_payments": failed,
            "failed_payment_rate": round(failed / payments, 4) if payments else 0.0, "by_currency": by_currency}


def products(con, day: str, top: int = 10) -> dict:
    con.execute("CREATE OR REPLACE TEMP TABLE _products AS SELECT e.product_id, COALESCE(c.name, '') AS name, "
                "COALESCE(c.category, '(unknown)') AS category, "
                "count(*) FILTER (WHERE e.event_type = 'product_view') AS views, "
                "count(*) FILTER (WHERE e.event_type = 'purchase') AS purchases "
                "FROM bronze_clicks e ASOF LEFT JOIN (SELECT * FROM bronze_catalog WHERE event_ts IS NOT NULL) c "
                "ON e.product_id = c.product_id AND e.event_ts >= c.event_ts "
                "WHERE e.dt = ? AND e.product_id IS NOT NULL GROUP BY ALL", [day])
    return {"top_products": _rows(con, "SELECT product_id, name, category, sum(views)::BIGINT, sum(purchases)::BIGINT "
                                       f"FROM _products GROUP BY ALL ORDER BY 4 DESC, 5 DESC, 1 LIMIT {top}"),
            "top_categories": _rows(con, "SELECT category, sum(views)::BIGINT, sum(purchases)::BIGINT FROM _products "
                                         f"GROUP BY 1 ORDER BY 2 DESC, 3 DESC, 1 LIMIT {top}")}


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
    return {"date": day, "traffic": traffic(con, day), "funnel": funnel(con, day),
            "sales": sales(con, day), **products(con, day), "support": support(con, day), "fraud": fraud(con, day),
            "quality": quality(con, day)}


# names of a table's value columns (after its leading text columns), for readable change paths
VALUE_COLUMNS = {"funnel.by_device": [n for n, _ in STEPS], "funnel.by_country": [n for n, _ in STEPS],
                 "sales.by_currency": ["orders", "revenue", "average_order_value"],
                 "top_products": ["views", "purchases"], "top_categories": ["views", "purchases"],
                 "support.by_category": ["tickets", "open", "user_paid"], "fraud.by_rule": ["alerts", "subjects"]}


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf values by path (``traffic.events``, ``fraud.by_rule[burst/medium].alerts``…), for a
    run-to-run diff."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
    elif isinstance(data, list) and data and all(isinstance(r, list) for r in data):
        for row in data:          # a table: rows keyed by their leading text columns (or the first column)
            n = next((i for i, c in enumerate(row) if not isinstance(c, str)), len(row)) or 1
            key, values = "/".join(str(c) for c in row[:n]), row[n:]
            names = VALUE_COLUMNS.get(prefix, [str(i) for i in range(len(values))])
            if len(values) == 1:
                out[f"{prefix}[{key}]"] = values[0]
            else:
                out.update({f"{prefix}[{key}].{name}": v for name, v in zip(names, values)})
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out[f"{prefix}[{i}]"] = v
    else:
        out[prefix] = data
    return out


def changes(previous: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(path, before, after) of every value that differs between two runs of the same date."""
    before, after = flatten(previous), flatten(current)
    return [(k, before.get(k), after.get(k)) for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
