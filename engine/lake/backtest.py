"""``shopstream backtest --lake DIR --rules FILE [--date D] [--labels DIR]``: a rules file over
archived history.

The day(s)' bronze input is re-published exactly as ``replay --from-lake`` does (engine/lake/replay.py:
the catalog as of the day, then each source in its original stream order), days in order into one
fresh namespace (a customer's state carries from one day to the next, as it did live), then the
consumers drain it, ``flush`` ends the input and the alerts are counted per rule.  With ``--labels``
(a scenario folder, or JSON Lines of labels) the evaluation table is printed too.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections import Counter
from pathlib import Path

from .. import aio, control, evaluation
from ..connection import sync_client
from ..evaluate import drain
from ..settings import Settings
from .replay import replay_day
from .sql import connect
from .store import Lake


def days(lake: Lake) -> list[str]:
    con = connect(lake)
    return [str(d) for (d,) in con.execute(
        "SELECT DISTINCT dt FROM (SELECT dt FROM bronze_clicks UNION SELECT dt FROM bronze_tx "
        "UNION SELECT dt FROM bronze_support) ORDER BY dt").fetchall()]


def labels_of(path: str | Path) -> list[evaluation.Label]:
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    out = []
    for f in files:
        for line in f.read_text().splitlines():
            if '"label"' in line:
                rec = json.loads(line)
                if "label" in rec:
                    out.append(evaluation.Label.of(rec["label"]))
    return out


def backtest(lake_uri: str, settings: Settings, rules: str | None, day: str | None = None) -> dict:
    """Alerts per rule (and the decisions or alerts, for scoring) of the lake's day(s) under ``rules``."""
    from ..tools.local import redis_for_run
    lake = Lake(lake_uri)
    if lake.open("bronze_clicks") is None:
        raise ValueError(f"no lake at {lake.uri}")
    todo = [day] if day else days(lake)
    with redis_for_run(settings) as s, tempfile.TemporaryDirectory(prefix="shopstream-backtest-") as tmp:
        s = s.replace(namespace=f"{s.namespace}-backtest-{uuid.uuid4().hex[:8]}",
                      rules_file=str(Path(rules).resolve()) if rules else None)
        try:
            aio.call(s.redis_url, s, control.ensure_groups)
            client = sync_client(s.redis_url)
            published = Counter()
            for d in todo:
                published.update(replay_day(lake, client, s, d))
            client.close()
            decisions, alerts = aio.run(drain(s, Path(tmp)))
        finally:
            aio.call(s.redis_url, s, control.reset)
    per_rule = Counter(a["rule"] for a in alerts if a.get("evidence", {}) != {"role": "member"})
    return {"days": todo, "published": dict(published), "per_rule": dict(per_rule), "decisions": decisions,
            "alerts": alerts}


def command(args, settings: Settings) -> None:
    done = backtest(args.lake or settings.lake_uri, settings, args.rules, args.date)
    print(f"backtest of {args.rules or 'the rules in force'} over {', '.join(done['days'])}: "
          + ", ".join(f"{n:,} {k}" for k, n in sorted(done["published"].items())))
    print(f"\n{'rule':<28} {'alerts':>7}")
    for rule, n in sorted(done["per_rule"].items(), key=lambda x: (-x[1], x[0])):
        print(f"{rule:<28} {n:>7,}")
    if args.labels:
        flags = evaluation.flagged(done["decisions"], done["alerts"])
        print()
        print(evaluation.render(evaluation.score(labels_of(args.labels), flags,
                                                 "decisions" if done["decisions"] is not None else "alerts")))
