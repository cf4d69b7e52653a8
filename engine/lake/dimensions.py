"""SCD Type 2 dimensions, rebuilt from the lake's bronze tables: ``dim_customer`` and ``dim_product``.

A rebuild reads the whole history and overwrites the table in one commit: the same bronze gives
the same dimension (idempotent, and late data lands in the right version); an erased user, gone
from bronze, is gone from the rebuilt dimension too.

dim_customer: one row per change of the attributes that matter — country (the latest seen on a
click or payment), devices (every device seen so far), lifetime orders (completed payments, a
retried transaction id once, as the engine counts them), spend band (lifetime spend of completed
payments), risk band (the highest severity of an alert about the user so far).  These come from
bronze, not from the profile changelog (``profile_changes``): a changelog record is the profile
after a whole apply call, stamped with the latest event time of that call, so a batch of a user's
events collapses into one version, while bronze dates every change by its own event; and the
profile keeps only the first time of each country, not the latest.  The changelog is the history
of what only the engine computes (closed sessions, category counts, open tickets, the decayed risk
score): see docs/data-model.md.  dim_product: one row per change of name, category or price in the
catalog changelog.  Both: ``valid_from`` (inclusive), ``valid_to`` (exclusive; null while
current), ``is_current``; "as of T" is ``valid_from <= T AND (T < valid_to OR valid_to IS NULL)``.
"""

from __future__ import annotations

from deltalake import CommitProperties, write_deltalake

from .sql import connect
from .store import CONFIG, Lake

SPEND_BANDS = ((0, "none"), (100, "<100"), (500, "100-500"), (2000, "500-2000"))   # upper bounds; else "2000+"

CUSTOMER_SQL = f"""
WITH changes AS (
    SELECT user_id, event_ts AS ts, entry_id, country, device, 0 AS orders, 0::DECIMAL(18, 2) AS spend, 0 AS risk
    FROM bronze_clicks WHERE user_id IS NOT NULL AND event_ts IS NOT NULL
    UNION ALL
    SELECT user_id, event_ts, entry_id, country, NULL,
           CASE WHEN status = 'completed' THEN 1 ELSE 0 END,
           CASE WHEN status = 'completed' THEN COALESCE(TRY_CAST(amount AS DECIMAL(18, 2)), 0) ELSE 0 END, 0
    FROM bronze_tx WHERE user_id IS NOT NULL AND event_ts IS NOT NULL
    QUALIFY transaction_id IS NULL        -- a producer's retry (same transaction id) counts once, as in the engine
         OR row_number() OVER (PARTITION BY user_id, transaction_id ORDER BY entry_time, entry_id) = 1
    UNION ALL
    SELECT user_id, detected_at, entry_id, NULL, NULL, 0, 0,
           CASE severity WHEN 'high' THEN 3 WHEN 'medium' THEN 2 WHEN 'low' THEN 1 ELSE 0 END
    FROM alerts WHERE subject_kind = 'user' AND user_id IS NOT NULL AND detected_at IS NOT NULL
), state AS (
    SELECT user_id, ts, entry_id,
           last_value(country IGNORE NULLS) OVER w AS country,
           list_sort(list_distinct(list(device) OVER w)) AS devices,
           sum(orders) OVER w AS lifetime_orders,
           sum(spend) OVER w AS spend,
           max(risk) OVER w AS risk
    FROM changes
    WINDOW w AS (PARTITION BY user_id ORDER BY ts, entry_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
), banded AS (
    SELECT user_id, ts, entry_id, country, devices, lifetime_orders::BIGINT AS lifetime_orders,
           CASE {" ".join(f"WHEN spend <= {hi} THEN '{name}'" for hi, name in SPEND_BANDS)} ELSE '2000+' END
               AS spend_band,
           CASE risk WHEN 3 THEN 'high' WHEN 2 THEN 'medium' WHEN 1 THEN 'low' ELSE 'none' END AS risk_band
    FROM state
), versions AS (
    SELECT *, lag(struct_pack(country, devices, lifetime_orders, spend_band, risk_band))
                  OVER (PARTITION BY user_id ORDER BY ts, entry_id) AS before
    FROM banded
)
SELECT user_id, country, devices, lifetime_orders, spend_band, risk_band, ts AS valid_from, entry_id
FROM versions
WHERE before IS NULL
   OR before IS DISTINCT FROM struct_pack(country, devices, lifetime_orders, spend_band, risk_band)
"""

PRODUCT_SQL = """
WITH changes AS (
    SELECT product_id, name, category, price, COALESCE(event_ts, entry_time) AS ts, entry_id
    FROM bronze_catalog WHERE product_id IS NOT NULL
), versions AS (
    SELECT *, lag(struct_pack(name, category, price)) OVER (PARTITION BY product_id ORDER BY ts, entry_id) AS before
    FROM changes
)
SELECT product_id, name, category, price, ts AS valid_from, entry_id
FROM versions
WHERE before IS NULL OR before IS DISTINCT FROM struct_pack(name, category, price)
"""

DIMENSIONS = {"dim_customer": CUSTOMER_SQL, "dim_product": PRODUCT_SQL}


def rebuild(lake: Lake | str, names: tuple[str, ...] = tuple(DIMENSIONS), request_id: str | None = None) -> dict[str, int]:
    """Rebuild the dimensions from bronze; returns rows per dimension."""
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    con = connect(lake)
    out = {}
    for name in names:
        key = "user_id" if name == "dim_customer" else "product_id"
        window = f"OVER (PARTITION BY {key} ORDER BY valid_from, entry_id)"
        data = con.sql(f"SELECT * EXCLUDE (entry_id), lead(valid_from) {window} AS valid_to, "
                           f"lead(valid_from) {window} IS NULL AS is_current FROM ({DIMENSIONS[name]}) "
                           f"ORDER BY {key}, valid_from, entry_id").to_arrow_table()
        metadata = {"shopstream.writer": "scd2-rebuild", **({"shopstream.erasure": request_id} if request_id else {})}
        write_deltalake(lake.path(name), data, mode="overwrite", schema_mode="overwrite", configuration=CONFIG,
                        storage_options=lake.storage_options,
                        commit_properties=CommitProperties(custom_metadata=metadata))
        out[name] = data.num_rows
    return out
