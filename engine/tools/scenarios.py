"""Author the scenario library: ``python -m shopstream.engine.tools.scenarios [--out data/scenarios]``.

Writes one JSON Lines file per scenario (docs/rules.md, "Scenario library and evaluation"), the
same bytes for the same seed: records ``{"source": "click" | "transaction" | "ticket", ...}`` in
event time, then one ``{"label": {user_id, pattern, fraud, named, fraud_at}}`` per user.  Each
scenario is one function (fraud: scenario_fraud.py, ordinary customers: scenario_customers.py)
written from how that behaviour looks in the real world, never from the rules' thresholds.
A developer tool: the engine does not import it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import scenario_customers as customers, scenario_fraud as fraud
from .scenario_kit import Book

SEED = 16
OUT = Path(__file__).resolve().parents[2] / "data" / "scenarios"


def scenarios() -> list[tuple[str, object, bool]]:
    """(name, function, named) of every scenario, in library order."""
    return ([(f.__name__, f, True) for f in fraud.NAMED] + [(f.__name__, f, False) for f in fraud.UNNAMED]
            + [(f.__name__, f, True) for f in customers.NAMED] + [(f.__name__, f, False) for f in customers.OTHERS]
            + [("background", customers.background, False)])


def build(seed: int = SEED) -> dict[str, list[str]]:
    """File name -> its lines, for every scenario.  Checks that ids are unique across the library
    and that every user with a record is labelled."""
    out: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for name, fn, named in scenarios():
        book = Book(name, seed)
        fn(book, named=named)
        lines = book.lines()
        users = set()
        for line in lines:
            rec = json.loads(line)
            if "label" in rec:
                continue
            users.add(rec["user_id"])
            key = rec.get("event_id") or rec.get("transaction_id") or (rec.get("ticket_id"), rec.get("updated_at"))
            if isinstance(key, str) and seen.setdefault(key, name) != name:
                raise ValueError(f"{name}: id {key} is also used by {seen[key]}")
        for uid in users | set(book.labels):
            if seen.setdefault("user:" + uid, name) != name:
                raise ValueError(f"{name}: user {uid} is also in {seen['user:' + uid]}")
        if missing := users - set(book.labels):
            raise ValueError(f"{name}: users without a label: {sorted(missing)[:5]}")
        out[f"{name}.jsonl"] = lines
    return out


def write(out: Path = OUT, seed: int = SEED) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, lines in build(seed).items():
        (out / name).write_text("\n".join(lines) + "\n")
        written[name] = len(lines)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    for name, n in write(Path(args.out), args.seed).items():
        print(f"{n:>7,} lines  {Path(args.out) / name}")


if __name__ == "__main__":
    main()
